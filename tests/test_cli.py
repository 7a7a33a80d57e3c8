"""The ``mmit`` command's bad-input behaviour: one clear line on stderr and exit code 2."""

import json
import subprocess
import sys

import pytest

from mmit.cli import main as cli


def test_unknown_command_suggests(capsys):
    assert cli(["trian"]) == 2
    assert "did you mean train" in capsys.readouterr().err


def test_train_unknown_config_key(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  max_stepss: 2\n")
    assert cli(["train", "--config_path", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "max_stepss" in err and "c.yaml" in err


def test_train_unknown_registry_name(tmp_path, capsys):
    assert cli(["train", "--model.projector.name=mlp2x-gelo", "--data.path=x.json", "--data.format=llava"]) == 2
    err = capsys.readouterr().err
    assert "mlp2x-gelu" in err and "projector" in err


def test_train_missing_data_file(tmp_path, capsys):
    args = ["train", "--model.vision_tower.name=tiny-clip-vit", "--model.llm.name_or_path=tiny-llama",
            "--data.format=llava", f"--data.path={tmp_path / 'missing.json'}", f"--train.output_dir={tmp_path / 'r'}"]
    assert cli(args) == 2
    assert "missing.json" in capsys.readouterr().err


def test_generate_missing_image_and_checkpoint(tmp_path, capsys):
    assert cli(["generate", "--checkpoint", str(tmp_path), "--image", str(tmp_path / "no.jpg"), "--prompt", "hi"]) == 2
    assert "no.jpg" in capsys.readouterr().err
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    assert cli(["generate", "--checkpoint", str(tmp_path / "nockpt"), "--image", str(img), "--prompt", "hi"]) == 2
    assert "nockpt" in capsys.readouterr().err


def test_generate_undecodable_image(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    assert cli(["generate", "--checkpoint", str(tmp_path), "--image", str(bad), "--prompt", "hi"]) == 2
    assert "bad.jpg" in capsys.readouterr().err


def test_console_script_help_runs_in_a_fresh_process():
    r = subprocess.run([sys.executable, "-m", "mmit.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "convert" in r.stdout


def test_convert_never_imports_torch_and_inspect_never_imports_transformers(tmp_path):
    """``mmit convert`` is data work: importing torch, transformers or a model family cost ~4 s of
    start-up and ~150k objects the garbage collector walks during conversion. ``mmit inspect``
    reads shards through webdataset (which needs torch) but loads no model. Checked in a fresh
    process after a real conversion, then after an inspection."""
    from PIL import Image

    Image.new("RGB", (16, 12), (200, 10, 10)).save(tmp_path / "a.jpg")
    (tmp_path / "ann.json").write_text(json.dumps([{"id": "1", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]}]))
    code = (
        "import sys\nfrom mmit.cli import main\n"
        "def heavy(tops):\n"
        "    return sorted(m for m in sys.modules if m.split('.')[0] in tops "
        "or m.startswith('mmit.families'))[:3]\n"
        f"rc = main(['convert', '--format', 'llava', '--input', {str(tmp_path / 'ann.json')!r}, "
        f"'--output', {str(tmp_path / 'out')!r}, '--no-progress'])\n"
        "print('CONVERT', rc, heavy(('torch', 'transformers', 'webdataset')))\n"
        f"rc = main(['inspect', {str(tmp_path / 'out')!r}])\n"
        "print('INSPECT', rc, heavy(('transformers',)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "CONVERT 0 []" in r.stdout and "INSPECT 0 []" in r.stdout, r.stdout + r.stderr
    assert (tmp_path / "out" / "00000.tar").is_file()

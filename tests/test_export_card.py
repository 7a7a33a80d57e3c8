"""Every export folder: a model card (README.md), normal file modes, no local paths in its configs."""

from __future__ import annotations

import json
import os
import stat

import pytest

from conftest import tiny_run_config
from mmit.export.card import is_local_path, normalize_modes, public_name, scrub_json_paths


@pytest.fixture(scope="module")
def run_with_eval(tmp_path_factory):
    """A 2-step tiny LLaVA run whose folder also holds an `mmit eval` output (2 procedural samples)."""
    from mmit.evaluation.procedural import TASKS
    from mmit.evaluation.procedural.build import build_eval, task_yaml
    from mmit.evaluation.runner import run_suite
    from mmit.training.trainer import train

    root = tmp_path_factory.mktemp("card")
    run = train(tiny_run_config(root, stage="full", max_steps=2))
    build_eval(str(root / "eval_data"), [TASKS["color"]], 2, seed=1)
    (root / "color.yaml").write_text(task_yaml(TASKS["color"], str(root / "eval_data")))
    res = run_suite(str(root / "color.yaml"), str(run), str(run / "eval"), progress=False, plot=False)
    return root, run, res


def test_local_path_rules():
    assert is_local_path("/tmp/x/tiny-llama") and is_local_path("./llm") and is_local_path("~/m")
    assert not is_local_path("lmsys/vicuna-7b-v1.5") and not is_local_path("tiny-llama") and not is_local_path("")
    assert public_name("/cache/tiny/tiny-llama", ["tiny-llama"]) == "tiny-llama"
    assert public_name("/home/me/secret-model", ["tiny-llama"]) == ""
    assert public_name("openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"


def test_scrub_and_modes_on_a_plain_folder(tmp_path):
    cfg = {"text_config": {"_name_or_path": "/x/cache/tiny-llama", "n": 1},
           "vision_config": {"_name_or_path": "openai/clip"}, "name_or_path": "/home/u/private"}
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "w.bin").write_bytes(b"x")
    os.chmod(tmp_path / "w.bin", 0o600)
    assert scrub_json_paths(tmp_path, ["tiny-llama"]) == [tmp_path / "sub" / "config.json"]
    got = json.loads((tmp_path / "sub" / "config.json").read_text())
    assert got == {"text_config": {"_name_or_path": "tiny-llama", "n": 1},
                   "vision_config": {"_name_or_path": "openai/clip"}, "name_or_path": ""}
    normalize_modes(tmp_path, umask=0o027)  # the umask is respected, not a fixed 0644
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o750


def test_hf_llava_export_has_card_modes_and_no_local_paths(run_with_eval, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mmit.cli import main as cli

    root, run, res = run_with_eval
    out = tmp_path / "hf"
    old = os.umask(0o022)
    try:
        assert cli(["export", "--checkpoint", str(run), "--format", "hf-llava", "--output", str(out)]) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}  # model.safetensors was 0600
    for p in files:
        if p.suffix in (".json", ".md", ".jinja"):
            text = p.read_text()
            for local in (str(root), os.environ["MMIT_CACHE"], str(tmp_path)):
                assert local not in text, (p.name, local)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text_config"]["_name_or_path"] == "tiny-llama"
    assert cfg["vision_config"]["_name_or_path"] == "tiny-clip-vit"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    for want in ("- llm: `tiny-llama`", "- vision_tower: `tiny-clip-vit`", "`vicuna-v1`", "stage: `full`",
                 "format `llava`, read from `llava_demo.json`", "step at export: 2"):
        assert want in card, want
    # the eval found in the run folder: its score, interval, chance and majority
    t = res["tasks"]["color"]
    lo, hi = t["ci95"]
    row = (f"| color | held-in | {t['n']} | mc-accuracy | {100 * t['mc-accuracy']:.1f} | "
           f"{100 * lo:.1f}-{100 * hi:.1f} | 25.0 | {100 * t['majority']:.1f} |")
    assert row in card
    LlavaForConditionalGeneration.from_pretrained(out)  # still loads


def test_explicit_eval_folder_and_missing_one(run_with_eval, tmp_path):
    from mmit.export.card import model_card

    _, run, _ = run_with_eval
    card = model_card(run / "final", "hf-llava", [run / "eval"])
    assert "| color | held-in |" in card and "`eval/results.json`" in card
    with pytest.raises(FileNotFoundError, match="no results.json"):
        model_card(run / "final", "hf-llava", [tmp_path])

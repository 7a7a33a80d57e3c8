"""What a newcomer from LLaVA or LLaMA-Factory trips over first (issue 15): ``mmit train --help``, a
missing ``--config_path``, a JSON file given as ``data.path``, other toolkits' flag names, and values
that were only rejected once the model was built. Every check here runs before any model is built:
``mmit.training.trainer.train`` is replaced by a stand-in that records the config it was given."""

from __future__ import annotations

import json

import pytest

from conftest import DEMO_IMAGES, DEMO_JSON, ROOT
from mmit.cli import main as cli

TINY = str(ROOT / "configs" / "llava" / "tiny_demo.yaml")


@pytest.fixture
def trained(monkeypatch, tmp_path):
    """Replace the trainer: the configs it would have trained on are appended to the returned list."""
    import mmit.training.trainer as trainer

    seen = []

    def fake_train(cfg, *a, **k):
        seen.append(cfg)
        return tmp_path / "run"

    monkeypatch.setattr(trainer, "train", fake_train)
    return seen


# -- help ------------------------------------------------------------------------------------------

def test_train_help_lists_every_field_with_type_default_and_comment(capsys, trained):
    from mmit.config.fields import config_fields
    from mmit.config.schema import run_config_class

    assert cli(["train", "--help"]) == 0
    out = capsys.readouterr().out
    fields = [f for f in config_fields(run_config_class("llava")) if f.name != "family"]
    assert len(fields) > 40
    for f in fields:
        assert f"--{f.name}  {f.type}  (default: {f.default!r})" in out, f.name
    assert "cosine|constant" in out and "(default: 'cosine')" in out  # train.lr_scheduler: type and default
    assert "Per-device micro-batch size." in out  # train.batch_size's comment
    assert "llava/tiny_demo" in out  # the shipped configs by name
    assert not trained


@pytest.mark.parametrize("config", ["instructblip/tiny.yaml", "llava/tiny_demo.yaml", "video_llama/tiny.yaml"])
def test_help_with_a_config_shows_its_values_and_survives_percent_signs(config, capsys):
    # the Q-Former's comment holds "layer_idx % cross_attention_frequency": argparse crashed on it
    assert cli(["train", "--config_path", str(ROOT / "configs" / config), "--help"]) == 0
    out = capsys.readouterr().out
    if "llava" not in config:
        assert "layer_idx % cross_attention_frequency" in out
    assert "--train.max_steps  int  (in " in out and "--data.path  str" in out


# -- a missing --config_path -----------------------------------------------------------------------

def test_missing_config_path_is_an_error_naming_the_shipped_configs(capsys, trained):
    assert cli(["train"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--config_path" in err
    for name in ("llava/tiny_demo", "instructblip/tiny", "otter/tiny"):
        assert name in err
    assert "eval/" not in err and "accelerate" not in err  # run configs only
    assert cli(["train", "--train.max_steps=2"]) == 2 and "llava/tiny_demo" in capsys.readouterr().err
    assert not trained


def test_config_by_name(trained, capsys):
    from mmit.config.shipped import resolve_config_path

    for name in ("llava/tiny_demo", "llava/tiny_demo.yaml", "configs/llava/tiny_demo"):
        assert resolve_config_path(name).endswith("llava/tiny_demo.yaml")
    with pytest.raises(FileNotFoundError, match="llava/tiny_demo"):
        resolve_config_path("llava/tiny_dmeo")
    assert cli(["train", "--config_path", "llava/tiny_demo", f"--data.path={DEMO_JSON}",
                f"--data.media_root={DEMO_IMAGES}"]) == 0
    assert trained[0].model.llm.name_or_path == "tiny-llama-4l"


# -- data.path decides data.format -----------------------------------------------------------------

def test_json_data_path_is_read_with_the_reader_it_fits(trained, capsys):
    assert cli(["train", "--config_path", TINY, f"--data.path={DEMO_JSON}", f"--data.media_root={DEMO_IMAGES}"]) == 0
    assert trained[0].data.format == "llava"
    assert "--data.format=llava" in capsys.readouterr().err  # the inference is said


def test_json_without_media_root_says_which_flags_to_set(trained, capsys):
    assert cli(["train", "--config_path", TINY, f"--data.path={DEMO_JSON}"]) == 2
    err = capsys.readouterr().err
    assert "--data.media_root" in err and "--data.format=llava" in err
    assert not trained


def test_json_of_no_known_shape_says_which_flags_to_set(tmp_path, trained, capsys):
    p = tmp_path / "records.json"
    p.write_text(json.dumps([{"question": "q", "answer": "a", "picture": "x.jpg"}]))
    assert cli(["train", "--config_path", TINY, f"--data.path={p}"]) == 2
    err = capsys.readouterr().err
    assert "--data.format=llava --data.media_root=" in err and "records.json" in err and "tarfile" not in err
    assert not trained


def test_other_readers_are_recognised(tmp_path):
    from mmit.config.validate import sniff_format

    cases = {"videochat": [{"video": "a.mp4", "QA": [{"q": "?", "a": "!"}]}],
             "multiinstruct": [{"unique_id": "1", "task_name": "t", "prompt": "p", "target": "x"}],
             "lamm": [{"pcl": "a.npy", "conversations": []}]}
    for fmt, records in cases.items():
        p = tmp_path / f"{fmt}.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        assert sniff_format(str(p))[0] == fmt


def test_data_folders(tmp_path, trained, capsys):
    (tmp_path / "tars").mkdir()
    (tmp_path / "tars" / "00000.tar").write_bytes(b"")
    assert cli(["train", "--config_path", TINY, f"--data.path={tmp_path / 'tars'}"]) == 0
    assert trained[-1].data.format == "shards"
    (tmp_path / "jsons").mkdir()
    (tmp_path / "jsons" / "mine.json").write_text("[]")
    assert cli(["train", "--config_path", TINY, f"--data.path={tmp_path / 'jsons'}"]) == 2
    assert "mine.json" in capsys.readouterr().err
    assert cli(["train", "--config_path", TINY, f"--data.path={tmp_path / 'nothing'}"]) == 2
    assert "nothing" in capsys.readouterr().err
    assert len(trained) == 1


# -- other toolkits' flags -------------------------------------------------------------------------

FLAGS = {  # LLaVA train.py / HF TrainingArguments / LLaMA-Factory -> what mmit suggests
    "data_path": "--data.path", "image_folder": "--data.media_root", "model_name_or_path": "--model.llm.name_or_path",
    "vision_tower": "--model.vision_tower.name", "mm_projector_type": "--model.projector.name",
    "num_train_epochs": "--train.epochs", "per_device_train_batch_size": "--train.batch_size",
    "learning_rate": "--train.lr", "output_dir": "--train.output_dir",
    "gradient_accumulation_steps": "--train.gradient_accumulation_steps", "lora_enable": "--train.lora.enabled=true",
    "lora_r": "--train.lora.r", "model_max_length": "--model.max_length", "bf16": "--train.precision=bf16",
    "report_to": "--train.report_to", "dataset": "--data.path", "template": "--model.template",
    "finetuning_type": "--train.lora.enabled=true", "cutoff_len": "--model.max_length", "lora_rank": "--train.lora.r",
    "max_steps": "--train.max_steps", "train.max_stepss": "--train.max_steps",
}


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_unknown_flags_get_did_you_mean(flag, capsys, trained):
    assert cli(["train", "--config_path", TINY, f"--{flag}=1"]) == 2
    err = capsys.readouterr().err
    assert f"did you mean {FLAGS[flag]}" in err, err
    assert not trained


def test_unknown_keys_in_a_file_get_did_you_mean(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("data_path: x.json\ntrain:\n  learning_rate: 0.1\n")
    assert cli(["train", "--config_path", str(p)]) == 2
    err = capsys.readouterr().err
    assert "c.yaml" in err and "did you mean --data.path" in err and "did you mean --train.lr" in err


def test_every_alias_names_a_real_field():
    from mmit.config.fields import config_fields, section_names
    from mmit.config.schema import run_config_class
    from mmit.config.suggest import ALIASES

    cls = run_config_class("llava")
    known = {f.name for f in config_fields(cls)} | set(section_names(cls))
    for flag, target in ALIASES.items():
        if target.startswith(("(", "--", "accelerate")):
            continue
        assert target.split(" ", 1)[0].split("=", 1)[0] in known, (flag, target)


# -- every value checked before the model is built -------------------------------------------------

BAD = [("--train.report_to=wandbb", "report_to"), ("--train.lr_scheduler=linear", "lr_scheduler"),
       ("--train.batch_size=0", "train.batch_size"), ("--train.warmup_ratio=1.5", "train.warmup_ratio"),
       ("--train.lr=-0.1", "train.lr"), ("--train.max_steps=0", "train.max_steps"),
       ("--train.lora.dropout=1.5", "train.lora.dropout"), ("--data.num_workers=-1", "data.num_workers"),
       ("--data.batches_per_message=0", "data.batches_per_message"),
       ("--model.vision_tower.name=clip-vit-l-14-337", "clip-vit-l-14-336"),
       ("--model.projector.name=mlp2x-gelo", "mlp2x-gelu"), ("--model.template=vicuna", "vicuna-v1"),
       ("--model.llm.name_or_path=tiny-lama", "tiny-llama"), ("--model.llm.name_or_path=./no/such/llm", "./no/such/llm"),
       ("--model.init_from=/no/such/run", "model.init_from"), ("--data.format=llavaa", "llava"),
       ("--data.media_root=/no/such/images", "data.media_root")]


@pytest.mark.parametrize("arg,named", BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_errors_before_the_model_is_built(arg, named, capsys, trained):
    args = ["train", "--config_path", TINY, f"--data.path={DEMO_JSON}", f"--data.media_root={DEMO_IMAGES}", arg]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1, err
    assert not trained


def test_report_to_accepts_the_trackers(trained):
    for value in ("none", "tensorboard", "wandb", "mlflow", "tensorboard,wandb"):
        assert cli(["train", "--config_path", TINY, f"--data.path={DEMO_JSON}", f"--data.media_root={DEMO_IMAGES}",
                    f"--train.report_to={value}"]) == 0
    assert [c.train.report_to for c in trained][-1] == "tensorboard,wandb"


def test_version(capsys):
    import mmit

    assert cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mmit {mmit.__version__}"

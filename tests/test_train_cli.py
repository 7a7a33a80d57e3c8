"""``mmit train`` end to end on shards written by ``mmit convert``, with the shipped tiny_demo.yaml."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import DEMO_IMAGES, DEMO_JSON, ROOT, tiny_run_config
from mmit.cli import main as cli
from mmit.training.metrics import read_metrics
from mmit.training.trainer import resolve_precision, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "s"
    assert cli(["convert", "--format", "llava", "--input", str(DEMO_JSON), "--media-root", str(DEMO_IMAGES),
                "--output", str(out), "--shard-size", "16", "--no-progress"]) == 0
    stats = json.loads((out / "_stats.json").read_text())
    assert stats["records_in"] == 51 and stats["written"] == 50 and stats["skipped"] == {"missing-media": 1}
    return out


def _args(shards, run, *extra):
    return ["train", "--config_path", str(ROOT / "configs" / "llava" / "tiny_demo.yaml"),
            f"--data.path={shards}", f"--train.output_dir={run}", "--model.llm.name_or_path=tiny-llama",
            "--train.report_to=none", "--train.progress_bar=false", "--train.logging_steps=1", *extra]


def test_train_from_shards_then_resume_from_the_cli(shards, tmp_path):
    run = tmp_path / "run"
    assert cli(_args(shards, run, "--train.max_steps=2", "--train.save_steps=2")) == 0
    assert (run / "checkpoints" / "step-0000002" / "optimizer.pt").is_file()
    assert (run / "config.yaml").read_text().count("max_steps: 2") == 1
    # a longer run resumed from step 2 continues the step count and the metrics file
    assert cli(_args(shards, run, "--train.max_steps=4", "--train.save_steps=2", "--resume")) == 0
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    assert json.loads((run / "final" / "trainer_state.json").read_text())["step"] == 4


def test_resampled_shards_and_dataloader_workers(shards, tmp_path):
    run = tmp_path / "run"
    assert cli(_args(shards, run, "--train.max_steps=3", "--data.resampled=true", "--data.num_workers=2")) == 0
    assert len(read_metrics(run / "metrics.jsonl")) == 3


def test_shard_epoch_is_sized_from_stats(shards, tmp_path):
    run = tmp_path / "run"
    # 50 samples, batch 8 -> 7 steps per epoch; 1 epoch when max_steps is -1
    assert cli(_args(shards, run, "--train.max_steps=-1", "--train.epochs=1")) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 7


def test_align_stage_leaves_frozen_weights_bit_identical(tmp_path):
    from mmit.families.llava.model import build_llava
    from mmit.training.checkpoint import load_model_from_checkpoint

    cfg = tiny_run_config(tmp_path, stage="align", max_steps=3, lr=1e-2)
    before, _ = build_llava(cfg.model)
    run = train(cfg)
    after, _, _ = load_model_from_checkpoint(run)
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    for name in b:
        if name.startswith("projector."):
            continue
        assert torch.equal(b[name], a[name]), name
    assert any(not torch.equal(b[n], a[n]) for n in b if n.startswith("projector."))
    assert set(load_file(str(run / "final" / "model.safetensors"))) == {n for n in b if n.startswith("projector.")}


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    a = train(tiny_run_config(tmp_path / "a", max_steps=2))
    b = train(tiny_run_config(tmp_path / "b", max_steps=2, gradient_checkpointing=True))
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


def test_precision_auto_is_fp32_on_cpu():
    if not torch.cuda.is_available():
        assert resolve_precision("auto") == "no"
    assert resolve_precision("fp32") == "no" and resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8")

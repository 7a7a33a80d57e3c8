"""The trainer on tiny models: stages, checkpoints, exact resume, metrics, learning."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_run_config
from mmit.training.checkpoint import latest_checkpoint, list_checkpoints
from mmit.training.metrics import read_metrics
from mmit.training.trainer import train


def _final_weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_resume_matches_uninterrupted_run(tmp_path):
    full = train(tiny_run_config(tmp_path / "a", save_steps=2, max_steps=7))
    cfg = tiny_run_config(tmp_path / "b", save_steps=2, max_steps=7)
    train(cfg, stop_after_steps=5)  # "crashes" after step 5; the latest checkpoint is step 4
    assert not (tmp_path / "b" / "run" / "final").exists()
    assert latest_checkpoint(cfg.train.output_dir).name == "step-0000004"
    state = json.loads((latest_checkpoint(cfg.train.output_dir) / "trainer_state.json").read_text())
    assert state["epoch"] == 0 and 0 < state["position"] < 50, "the checkpoint must be mid-epoch"
    cfg.train.resume = True
    resumed = train(cfg)
    a, b = _final_weights(full), _final_weights(resumed)
    assert a.keys() == b.keys() and len(a) > 10
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed weights differ by {worst}"
    la = [r["loss"] for r in read_metrics(full / "metrics.jsonl")]
    lb = [r["loss"] for r in read_metrics(resumed / "metrics.jsonl")]
    assert [r["step"] for r in read_metrics(resumed / "metrics.jsonl")] == list(range(1, 8))
    assert la == pytest.approx(lb, abs=1e-5)


def test_resume_changes_the_outcome_if_data_position_were_ignored(tmp_path):
    """Guard for the resume test: restarting from a checkpoint's weights but from the beginning of the
    data gives different weights, so matching weights above really come from the data position."""
    full = train(tiny_run_config(tmp_path / "a", save_steps=2, max_steps=4))
    cfg = tiny_run_config(tmp_path / "b", save_steps=2, max_steps=4)
    train(cfg, stop_after_steps=2)
    ck = latest_checkpoint(cfg.train.output_dir)
    st = json.loads((ck / "trainer_state.json").read_text())
    st["position"] = 0
    (ck / "trainer_state.json").write_text(json.dumps(st))
    cfg.train.resume = True
    b = _final_weights(train(cfg))
    a = _final_weights(full)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-6


@pytest.mark.parametrize("stage,trained", [("align", {"projector"}), ("finetune", {"projector", "llm"}),
                                           ("full", {"projector", "llm", "vision_tower"})])
def test_stage_freezes_exactly_the_frozen_modules(tmp_path, stage, trained):
    from mmit.families.llava.model import build_llava

    cfg = tiny_run_config(tmp_path, stage=stage, max_steps=2)
    torch.manual_seed(cfg.train.seed)
    before, _ = build_llava(cfg.model)
    run = train(cfg)
    saved = _final_weights(run)
    assert {k.split(".")[0] for k in saved} == trained
    log = (run / "train.log").read_text()
    assert "trainable" in log and "vision_tower" in log and "projector" in log
    ref = dict(before.named_parameters())
    for k, v in saved.items():
        assert v.shape == ref[k].shape


def test_projector_lr_and_no_decay_groups():
    from mmit.config.schema import TrainConfig
    from mmit.families import get_family
    from mmit.families.llava.model import build_llava
    from mmit.training.optim import param_groups
    from mmit.training.params import apply_trainable
    from conftest import tiny_run_config as _cfg

    cfg = _cfg(__import__("pathlib").Path("/tmp"))
    model, _ = build_llava(cfg.model)
    fam = get_family("llava")
    apply_trainable(model, fam.trainable_modules(cfg))
    cfg.train = TrainConfig(lr=2e-5, projector_lr=1e-3, weight_decay=0.1)
    groups = param_groups(fam.param_groups(model, cfg), cfg.train)
    by = {g["name"]: g for g in groups}
    assert by["projector"]["lr"] == 1e-3 and by["model"]["lr"] == 2e-5
    assert by["model-no-decay"]["weight_decay"] == 0.0 and by["model"]["weight_decay"] == 0.1
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_metrics_plot_and_summary(tmp_path):
    run = train(tiny_run_config(tmp_path, max_steps=4, logging_steps=2, report_to="tensorboard"))
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 and "lr" in r for r in rows)
    assert (run / "loss.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())
    assert (run / "config.yaml").is_file() and (run / "final" / "config.yaml").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4


def test_loss_falls_when_overfitting_a_few_records(tmp_path):
    cfg = tiny_run_config(tmp_path, stage="full", max_steps=30, lr=3e-3, warmup_ratio=0.1)
    run = train(cfg)
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


def test_overflow_skips_are_counted_and_logged(tmp_path):
    cfg = tiny_run_config(tmp_path, max_steps=2)
    # `plain` renders bos + 16 image tokens + caption: at 12 tokens no image fits, text-only records do.
    cfg.model.template, cfg.model.max_length = "plain", 12
    run = train(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped"].get("too-long-for-images", 0) > 0
    assert "skipped" in (run / "train.log").read_text()


def test_skips_in_dataloader_workers_are_counted_too(tmp_path):
    cfg = tiny_run_config(tmp_path, max_steps=2)
    cfg.model.template, cfg.model.max_length = "plain", 12
    cfg.data.num_workers = 2
    summary = json.loads((train(cfg) / "summary.json").read_text())
    assert summary["skipped"].get("too-long-for-images", 0) > 0


def test_overflow_error_policy_raises_with_sample_id(tmp_path):
    from mmit.data.sample import SampleError

    cfg = tiny_run_config(tmp_path, max_steps=2)
    cfg.model.template, cfg.model.max_length = "plain", 12
    cfg.data.overflow = "error"
    with pytest.raises(SampleError, match="media spans are never cut"):
        train(cfg)


def test_checkpoint_pruning_keeps_the_newest(tmp_path):
    cfg = tiny_run_config(tmp_path, max_steps=6, save_steps=2, save_total_limit=2)
    train(cfg)
    assert [s for s, _ in list_checkpoints(cfg.train.output_dir)] == [4, 6]


def test_processes_see_disjoint_samples_that_cover_the_epoch(tmp_path):
    from mmit.training.data import SampleStream

    cfg = tiny_run_config(tmp_path).data
    full = [s.id for s in SampleStream(cfg, seed=3).epoch(0)]
    parts = [[s.id for s in SampleStream(cfg, seed=3, rank=r, world=2).epoch(0)] for r in (0, 1)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(full)
    assert [s.id for s in SampleStream(cfg, seed=3).epoch(1)] != full  # reshuffled each epoch
    assert [s.id for s in SampleStream(cfg, seed=3).epoch(0)] == full  # and deterministic


def test_resume_of_a_finished_run_saves_final_without_training(tmp_path):
    cfg = tiny_run_config(tmp_path, max_steps=2, save_steps=2)
    train(cfg)
    cfg.train.resume = True
    run = train(cfg)
    assert json.loads((run / "final" / "trainer_state.json").read_text())["step"] == 2
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]

"""The model-family contract: the trainer and checkpoint loader go through the family's hooks."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_run_config
from mmit.families import FAMILIES, get_family
from mmit.families.llava import LlavaFamily
from mmit.registry import UnknownNameError
from mmit.training.checkpoint import load_model_from_checkpoint
from mmit.training.trainer import train


def test_unknown_family_names_the_close_match():
    with pytest.raises(UnknownNameError, match="llava"):
        get_family("lava")


class RecordingFamily(LlavaFamily):
    """LLaVA with every hook recorded and a fake 'EMA' file written into each checkpoint."""

    calls = []

    def on_step_end(self, model, step):
        RecordingFamily.calls.append(("step", step))

    def save_extra(self, model, ckpt_dir):
        torch.save({"n": len(RecordingFamily.calls)}, ckpt_dir / "extra.pt")
        RecordingFamily.calls.append(("save", ckpt_dir.name))

    def load_extra(self, model, ckpt_dir):
        RecordingFamily.calls.append(("load", torch.load(ckpt_dir / "extra.pt")["n"]))


def test_trainer_and_loader_call_the_family_hooks(tmp_path, monkeypatch):
    monkeypatch.setitem(FAMILIES, "recording", f"{__name__}:RecordingFamily")
    RecordingFamily.calls = []
    cfg = tiny_run_config(tmp_path, max_steps=3, save_steps=2)
    cfg.family = "recording"
    run = train(cfg)
    calls = RecordingFamily.calls
    assert [c for c in calls if c[0] == "step"] == [("step", 1), ("step", 2), ("step", 3)]
    # the extra file lands in the step checkpoint (before it is marked complete) and in final/
    assert ("save", "step-0000002.tmp") in calls and ("save", "final.tmp") in calls
    assert (run / "checkpoints" / "step-0000002" / "extra.pt").is_file()
    assert (run / "final" / "extra.pt").is_file()
    load_model_from_checkpoint(run)
    assert calls[-1][0] == "load"


def test_llava_family_refuses_a_batch_without_supervised_tokens(tmp_path):
    fam = get_family("llava")
    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.full((1, 3), -100), "pixel_values": None, "ids": ["x"]}
    with pytest.raises(RuntimeError, match="no supervised token"):
        fam.loss(torch.nn.Identity(), batch)
    assert fam.count(batch) == 3

"""The model-family contract, checked over every registered family: the trainer and checkpoint loader
go through the hooks; build is pure (loading a checkpoint writes nothing); processors pickle and are
stateless; batches have the documented shapes; text families fulfil the inference contract."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_run_config
from mmit.data.batch import Batch
from mmit.families import FAMILIES, get_family, get_family_class
from mmit.families.llava.family import LlavaFamily
from mmit.registry import UnknownNameError
from mmit.training.checkpoint import load_model_from_checkpoint
from mmit.training.trainer import train


def test_unknown_family_names_the_close_match():
    with pytest.raises(UnknownNameError, match="llava"):
        get_family("lava")


def family_config(family: str, tmp: Path):
    """A 2-step tiny run config of ``family`` writing under ``tmp``."""
    from mmit.config.schema import load_config

    if family == "llava":
        cfg = tiny_run_config(tmp, max_steps=2, save_steps=2)
    elif family == "instructblip":
        cfg = load_config(str(ROOT / "configs" / "instructblip" / "tiny.yaml"),
                          ["--model.llm.name_or_path=tiny-llama", f"--data.path={ROOT / 'demo_data' / 'llava_demo.json'}",
                           f"--data.media_root={ROOT / 'demo_data' / 'images'}"])
    elif family == "instructpix2pix":
        # a relative data path (as the shipped config has): loading the checkpoint from another working
        # directory must not write procedural triples there
        cfg = load_config(str(ROOT / "configs" / "instructpix2pix" / "tiny.yaml"),
                          ["--data.path=triples", "--model.procedural_triples=16"])
    elif family == "flamingo":
        cfg = load_config(str(ROOT / "configs" / "otter" / "tiny.yaml"),
                          ["--data.format=llava", f"--data.path={ROOT / 'demo_data' / 'llava_demo.json'}",
                           f"--data.media_root={ROOT / 'demo_data' / 'images'}", "--train.stage=align"])
    elif family == "video-llama":
        cfg = load_config(str(ROOT / "configs" / "video_llama" / "tiny.yaml"),
                          [f"--data.path={ROOT / 'demo_data' / 'video_llama_demo.json'}",
                           f"--data.media_root={ROOT / 'demo_data'}", "--train.stage=align"])
    else:  # a family added later must add its tiny config here
        pytest.fail(f"no tiny config for family {family!r} in tests/test_families.py")
    t = cfg.train
    t.output_dir, t.max_steps, t.save_steps, t.batch_size = str(tmp / "run"), 2, 2, 4
    t.report_to, t.progress_bar, t.logging_steps = "none", False, 1
    return cfg


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"family-{request.param}")
    cfg = family_config(request.param, tmp)
    cwd = os.getcwd()
    os.chdir(tmp)  # relative paths of the config resolve here
    try:
        run = train(cfg)
        if cfg.data.path and not os.path.isabs(cfg.data.path):
            cfg.data.path = str(tmp / cfg.data.path)
        return request.param, cfg, run
    finally:
        os.chdir(cwd)


def test_family_declares_its_contract(trained):
    import dataclasses

    family, cfg, _ = trained
    fam = get_family_class(family)
    assert dataclasses.is_dataclass(fam.config_class) and type(cfg.model) is fam.config_class
    assert cfg.train.stage in fam.stages
    trains = fam().trainable_modules(cfg)
    assert trains and any(trains.values())


def test_loading_a_checkpoint_from_another_directory_writes_nothing(trained, tmp_path, monkeypatch):
    family, _, run = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before_run, before_cwd = _tree(run), _tree(elsewhere)
    model, tokenizer, cfg = load_model_from_checkpoint(run)
    assert cfg.family == family and not model.training
    assert set(get_family(family).trainable_modules(cfg)) <= set(dict(model.named_children()))
    assert _tree(run) == before_run, "loading a checkpoint changed its folder"
    assert _tree(elsewhere) == before_cwd == {}, "loading a checkpoint wrote into the working directory"


def test_processor_pickles_is_stateless_and_batches_have_the_documented_shapes(trained):
    from mmit.data.stats import SkipCounter
    from mmit.training.data import SampleStream

    family, cfg, run = trained
    model, tokenizer, _ = load_model_from_checkpoint(run)
    fam = get_family(family)
    pre = fam.processor(cfg, model, tokenizer)
    clone = pickle.loads(pickle.dumps(pre))
    samples = list(SampleStream(cfg.data, 0, stats=SkipCounter()).epoch(0))[:12]
    torch.manual_seed(0)
    items = [it for it in (pre.try_call(s, SkipCounter()) for s in samples) if it is not None][:3]
    torch.manual_seed(0)
    again = [it for it in (clone.try_call(s, SkipCounter()) for s in samples) if it is not None][:3]
    batch = pre.collate(items)
    assert isinstance(batch, Batch) and batch.size == len(items) >= 2
    # the same inputs give the same batch, from the unpickled copy and after other calls
    other = clone.collate(again)
    assert torch.equal(batch.input_ids, other.input_ids) and batch.ids == other.ids
    B, T = batch.input_ids.shape
    assert batch.attention_mask.shape == (B, T)
    assert batch.labels is None or batch.labels.shape[0] == B
    for kind, m in batch.media.items():
        n = len(m)
        assert m.sample_index.shape == (n,) and m.position.shape == (n,)
        assert int(m.sample_index.max()) < B and int(m.position.max()) < T
        assert m.values.dim() == {"image": 4, "video": 5}.get(kind, m.values.dim())
        assert sorted(zip(m.sample_index.tolist(), m.position.tolist())) == list(
            zip(m.sample_index.tolist(), m.position.tolist())), "media out of sample/text order"
    loss = fam.loss(model.train(), batch)
    assert loss.dim() == 0 and torch.isfinite(loss) and fam.count(batch) > 0


def test_text_families_fulfil_the_inference_contract(trained):
    from mmit.inference import generate, load_for_inference
    from mmit.models.interface import MultimodalModel

    family, _, run = trained
    if not get_family_class(family).generates_text:
        with pytest.raises(ValueError, match="does not generate text"):
            load_for_inference(run)
        return
    model, proc, _ = load_for_inference(run)
    assert isinstance(model, MultimodalModel)
    from PIL import Image

    ans = generate(model, proc, "What is it?", Image.new("RGB", (32, 32), (200, 0, 0)), 4)
    assert 1 <= len(ans.token_ids) <= 4


class RecordingFamily(LlavaFamily):
    """LLaVA with every hook recorded and a fake 'EMA' file written into each checkpoint."""

    calls = []

    def prepare_data(self, cfg):
        RecordingFamily.calls.append(("data", cfg.family))

    def prepare_for_training(self, model, cfg):
        RecordingFamily.calls.append(("prepare", cfg.train.stage))

    def on_step_end(self, model, step):
        RecordingFamily.calls.append(("step", step))

    def save_extra(self, model, ckpt_dir):
        torch.save({"n": len(RecordingFamily.calls)}, ckpt_dir / "extra.pt")
        RecordingFamily.calls.append(("save", ckpt_dir.name))

    def load_extra(self, model, ckpt_dir, cfg):
        RecordingFamily.calls.append(("load", torch.load(ckpt_dir / "extra.pt")["n"]))


def test_trainer_and_loader_call_the_family_hooks(tmp_path, monkeypatch):
    from mmit.config.schema import FamilyConfig
    from mmit.families.llava.config import LlavaConfig

    monkeypatch.setitem(FAMILIES, "recording", f"{__name__}:RecordingFamily")
    monkeypatch.setitem(FamilyConfig._choice_registry, "recording", LlavaConfig)
    RecordingFamily.calls = []
    cfg = tiny_run_config(tmp_path, max_steps=3, save_steps=2)
    cfg.family = "recording"
    run = train(cfg)
    calls = RecordingFamily.calls
    assert calls[:2] == [("data", "recording"), ("prepare", "finetune")]
    assert [c for c in calls if c[0] == "step"] == [("step", 1), ("step", 2), ("step", 3)]
    # the extra file lands in the step checkpoint (before it is marked complete) and in final/
    assert ("save", "step-0000002.tmp") in calls and ("save", "final.tmp") in calls
    assert (run / "checkpoints" / "step-0000002" / "extra.pt").is_file()
    assert (run / "final" / "extra.pt").is_file()
    n_prepare = sum(1 for c in calls if c[0] == "prepare")
    load_model_from_checkpoint(run)
    assert calls[-1][0] == "load"
    assert sum(1 for c in calls if c[0] == "prepare") == n_prepare, "loading must not prepare for training"


def test_llava_family_refuses_a_batch_without_supervised_tokens():
    fam = get_family("llava")
    batch = Batch(ids=["x"], input_ids=torch.ones(1, 3, dtype=torch.long),
                  attention_mask=torch.ones(1, 3, dtype=torch.long), labels=torch.full((1, 3), -100))
    with pytest.raises(RuntimeError, match="no supervised token"):
        fam.loss(torch.nn.Identity(), batch)
    assert fam.count(batch) == 3


def test_every_family_registers_its_exports_and_commands_without_clashes():
    from mmit.cli import all_commands
    from mmit.families import family_table

    assert {"hf-llava", "hf-instructblip", "diffusers-instructpix2pix"} <= set(family_table("exporters"))
    assert "edit" in all_commands() and "train" in all_commands()
    assert os.path.isdir(ROOT / "mmit" / "families" / "llava")

"""Training the tiny InstructPix2Pix config through the shared trainer and the ``mmit train`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmit.cli import main as mmit_main
from mmit.config.schema import load_config
from mmit.families.instructpix2pix.config import InstructPix2PixConfig
from mmit.families.instructpix2pix.family import EMA_STATE, EMA_WEIGHTS, InstructPix2PixFamily

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "instructpix2pix" / "tiny.yaml"
SD15 = ROOT / "configs" / "instructpix2pix" / "sd15.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """16 steps (batch 8) of the tiny config, run through ``mmit train`` (procedural shards written on first use)."""
    tmp = tmp_path_factory.mktemp("ip2p")
    rc = mmit_main(["train", "--config_path", str(TINY), f"--train.output_dir={tmp / 'run'}",
                    f"--data.path={tmp / 'data'}", "--train.max_steps=16", "--train.batch_size=8",
                    "--train.logging_steps=2",
                    "--model.procedural_triples=128", "--train.progress_bar=false"])
    assert rc == 0
    return tmp


def test_shipped_configs_parse():
    for path in (TINY, SD15):
        cfg = load_config(str(path))
        assert cfg.family == "instructpix2pix" and cfg.train.stage == "finetune"
        assert isinstance(cfg.model, InstructPix2PixConfig)
    sd = load_config(str(SD15))
    assert sd.model.resolution == 256 and sd.model.conditioning_dropout_prob == 0.05 and sd.model.use_ema
    assert sd.model.pretrained_model_name_or_path.endswith("stable-diffusion-v1-5")
    assert sd.train.gradient_accumulation_steps > 1
    tiny = load_config(str(TINY), ["--model.procedural_triples=7"])
    assert tiny.model.procedural_triples == 7 and tiny.model.pretrained_model_name_or_path == "tiny-sd"


def test_build_is_pure_and_prepare_data_writes_the_triples_once(tmp_path):
    """``build`` writes nothing; ``prepare_data`` (the trainer calls it on the main process) writes the
    procedural shards when ``data.path`` has none, and leaves existing shards alone."""
    data = tmp_path / "data"
    cfg = load_config(str(TINY), [f"--data.path={data}", "--model.procedural_triples=6",
                                  f"--train.output_dir={tmp_path / 'run'}"])
    fam = InstructPix2PixFamily()
    model, _ = fam.build(cfg)
    assert not data.exists() and not (tmp_path / "run").exists()
    assert model.ema is None  # training-only state comes from prepare_for_training
    fam.prepare_data(cfg)
    stats = json.loads((data / "_stats.json").read_text())
    assert stats["written"] == 6 and stats["size"] == 2 * cfg.model.resolution
    before = {f.name: f.stat().st_mtime_ns for f in data.iterdir()}
    cfg.model.procedural_triples = 9
    fam.prepare_data(cfg)  # shards present: nothing rewritten
    assert {f.name: f.stat().st_mtime_ns for f in data.iterdir()} == before
    cfg.model.procedural_triples, cfg.data.path = 0, str(tmp_path / "none")
    fam.prepare_data(cfg)  # 0: never write data
    assert not (tmp_path / "none").exists()
    fam.prepare_for_training(model, cfg)
    assert model.ema is not None and model.ema.decay == cfg.model.ema_decay
    cfg.model.use_ema = False
    plain, _ = fam.build(cfg)
    fam.prepare_for_training(plain, cfg)
    assert plain.ema is None


def test_few_steps_lower_the_loss(run):
    summary = json.loads((run / "run" / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["skipped_total"] == 0
    assert summary["loss_last_10pct"] < summary["loss_first_10pct"], summary
    stats = json.loads((run / "data" / "_stats.json").read_text())
    assert stats["written"] == 128 and stats["records_in"] == 128


def _fixed_loss(model, batch, repeats: int = 4) -> float:
    """Mean loss (``family.loss``, as the trainer computes it) over the same noise, timesteps and
    dropout draws (no dropout) for every model."""
    fam = InstructPix2PixFamily()
    model.eval()
    model.dropout = (0.0, 0.0, 0.0)
    torch.manual_seed(1234)
    with torch.no_grad():
        return sum(float(fam.loss(model, batch)) for _ in range(repeats)) / repeats


def test_training_lowers_the_loss_on_a_fixed_batch(run):
    """Same batch, noise and timesteps: the trained UNet predicts the noise better than the initial one."""
    from mmit.data.shards import iter_shards
    from mmit.data.stats import SkipCounter
    from mmit.families.instructpix2pix.data import EditProcessor
    from mmit.families.instructpix2pix.model import build_model
    from mmit.training.checkpoint import load_model_from_checkpoint

    trained, tok, cfg = load_model_from_checkpoint(run / "run")
    assert isinstance(cfg.model, InstructPix2PixConfig) and cfg.model.procedural_triples == 128
    pre = EditProcessor(tok, cfg.model.resolution, center_crop=True, random_flip=False)
    items = [pre.try_call(s, SkipCounter()) for _, s in zip(range(16), iter_shards(run / "data"))]
    batch = pre.collate(items)
    assert batch.values("image").shape == (16, 3, 32, 32)
    initial, _ = build_model(cfg.model)
    before, after = _fixed_loss(initial, batch), _fixed_loss(trained, batch)
    assert after < 0.85 * before, (before, after)


def test_checkpoint_holds_the_unet_and_its_ema(run):
    final = run / "run" / "final"
    weights = load_file(str(final / "model.safetensors"))
    assert weights and all(k.startswith("unet.") for k in weights)  # VAE and text encoder are frozen
    assert weights["unet.conv_in.weight"].shape[1] == 8
    ema = load_file(str(final / EMA_WEIGHTS))
    assert set(ema) == {k[len("unet."):] for k in weights}
    assert json.loads((final / EMA_STATE).read_text())["optimization_step"] == 16
    diff = (ema["conv_in.weight"] - weights["unet.conv_in.weight"]).abs().max()
    assert diff > 0  # the average lags the trained weights


def test_load_extra_restores_the_ema(run):
    from mmit.families.instructpix2pix.pipeline import load_editor
    from mmit.training.checkpoint import load_model_from_checkpoint

    model, _, cfg = load_model_from_checkpoint(run / "run")
    saved = load_file(str(run / "run" / "final" / EMA_WEIGHTS))
    assert model.ema is not None and model.ema.optimization_step == 16
    for (name, _), shadow in zip(model.unet.named_parameters(), model.ema.shadow_params):
        assert torch.equal(shadow, saved[name])
    ema_model, _, _ = load_editor(run / "run")
    assert torch.equal(ema_model.unet.conv_in.weight, saved["conv_in.weight"])
    plain, _, _ = load_editor(run / "run", use_ema=False)
    trained = load_file(str(run / "run" / "final" / "model.safetensors"))
    assert torch.equal(plain.unet.conv_in.weight, trained["unet.conv_in.weight"])


def test_other_stages_are_refused(tmp_path, capsys):
    """The stage is checked when the config loads: the CLI exits 2 before any folder or data is written."""
    rc = mmit_main(["train", "--config_path", str(TINY), f"--train.output_dir={tmp_path / 'r'}",
                    f"--data.path={tmp_path / 'd'}", "--train.stage=align", "--model.procedural_triples=8"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train.stage 'align'" in err and "finetune" in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()
    for stage in ("align", "full"):
        msg = f"train.stage {stage!r}: family 'instructpix2pix' has the stages finetune"
        with pytest.raises(ValueError, match=msg):
            load_config(str(TINY), [f"--train.stage={stage}"])


def test_resume_restores_weights_and_ema_exactly(run, tmp_path):
    """Interrupted after step 2 (checkpoint at step 2), resumed: same UNet and EMA as an uninterrupted run."""
    from mmit.training.trainer import train

    def cfg(out):
        c = load_config(str(TINY), [f"--train.output_dir={out}", f"--data.path={run / 'data'}", "--train.max_steps=3",
                                    "--train.batch_size=4", "--train.save_steps=2", "--train.progress_bar=false"])
        return c

    full = train(cfg(tmp_path / "a"))
    c = cfg(tmp_path / "b")
    train(c, stop_after_steps=2)
    assert not (tmp_path / "b" / "final").exists()
    assert (tmp_path / "b" / "checkpoints" / "step-0000002" / EMA_WEIGHTS).is_file()
    c.train.resume = True
    resumed = train(c)
    for name in ("model.safetensors", EMA_WEIGHTS):
        a, b = load_file(str(full / "final" / name)), load_file(str(resumed / "final" / name))
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst <= 1e-6, (name, worst)
    assert json.loads((resumed / "final" / EMA_STATE).read_text())["optimization_step"] == 3

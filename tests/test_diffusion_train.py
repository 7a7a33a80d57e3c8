"""Training the tiny InstructPix2Pix config through the shared trainer and the ``mmit train`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmit.cli import main as mmit_main
from mmit.config.schema import load_config
from mmit.families.instructpix2pix.family import EMA_STATE, EMA_WEIGHTS

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
                    "--diffusion.procedural_triples=128", "--train.progress_bar=false"])
    assert rc == 0
    return tmp


def test_shipped_configs_parse():
    for path in (TINY, SD15):
        cfg = load_config(str(path))
        assert cfg.family == "instructpix2pix" and cfg.train.stage == "finetune"
    sd = load_config(str(SD15))
    assert sd.diffusion.resolution == 256 and sd.diffusion.conditioning_dropout_prob == 0.05 and sd.diffusion.use_ema
    assert sd.diffusion.pretrained_model_name_or_path.endswith("stable-diffusion-v1-5")
    assert sd.train.gradient_accumulation_steps > 1


def test_few_steps_lower_the_loss(run):
    summary = json.loads((run / "run" / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["skipped_total"] == 0
    assert summary["loss_last_10pct"] < summary["loss_first_10pct"], summary
    stats = json.loads((run / "data" / "_stats.json").read_text())
    assert stats["written"] == 128 and stats["records_in"] == 128


def _fixed_loss(model, batch, repeats: int = 4) -> float:
    """Mean loss over the same noise, timesteps and dropout draws (no dropout) for every model."""
    model.eval()
    model.dropout = (0.0, 0.0, 0.0)
    torch.manual_seed(1234)
    with torch.no_grad():
        return sum(float(model(**batch)["loss"]) for _ in range(repeats)) / repeats


def test_training_lowers_the_loss_on_a_fixed_batch(run):
    """Same batch, noise and timesteps: the trained UNet predicts the noise better than the initial one."""
    from mmit.data.shards import iter_shards
    from mmit.data.stats import SkipCounter
    from mmit.families.instructpix2pix.data import EditPreprocessor, collate_edits
    from mmit.families.instructpix2pix.model import build_model
    from mmit.training.checkpoint import load_model_from_checkpoint

    trained, tok, cfg = load_model_from_checkpoint(run / "run")
    pre = EditPreprocessor(tok, cfg.diffusion.resolution, center_crop=True, random_flip=False)
    items = [pre.try_call(s, SkipCounter()) for _, s in zip(range(16), iter_shards(run / "data"))]
    b = collate_edits(items)
    batch = {k: b[k] for k in ("input_pixel_values", "edited_pixel_values", "input_ids")}
    initial, _ = build_model(cfg.diffusion)
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


def test_other_stages_are_refused(tmp_path):
    rc = mmit_main(["train", "--config_path", str(TINY), f"--train.output_dir={tmp_path / 'r'}",
                    f"--data.path={tmp_path / 'd'}", "--train.stage=align", "--diffusion.procedural_triples=8"])
    assert rc == 2


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

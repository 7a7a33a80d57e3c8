"""``mmit edit`` and ``mmit export --format diffusers-instructpix2pix``: the exported folder loads in
diffusers and, with the same seed, gives the same image as ``mmit edit``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmit.cli import main as mmit_main
from mmit.config.schema import RunConfig
from mmit.families.instructpix2pix.triples import procedural_samples

PROMPT = "make the square red"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint written by the trainer's save_checkpoint, through the hooks the trainer calls:
    UNet weights moved off their init, and an EMA that differs from them (so the test can tell which
    weights were exported)."""
    from mmit.families import get_family
    from mmit.training.checkpoint import save_checkpoint
    from mmit.training.params import apply_trainable

    tmp = tmp_path_factory.mktemp("ip2p_export")
    cfg = RunConfig.for_family("instructpix2pix")
    cfg.model.pretrained_model_name_or_path = "tiny-sd"
    cfg.model.resolution = 32
    cfg.model.ema_decay = 0.5
    fam = get_family(cfg.family)
    model, tok = fam.build(cfg)
    assert model.ema is None  # build is pure: the EMA is training-only state
    fam.prepare_for_training(model, cfg)
    assert model.ema is not None and model.ema.decay == 0.5
    apply_trainable(model, fam.trainable_modules(cfg))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    fam.on_step_end(model, 1)
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path = save_checkpoint(tmp / "ckpt", model=model, cfg=fam.checkpoint_config(cfg), tokenizer=tok,
                           trainer_state={"step": 1}, extra=fam.save_extra, state_dict=model.state_dict())
    sample = next(iter(procedural_samples(1, size=64, seed=1)))
    (tmp / "in.png").write_bytes(sample.media[0].data)
    return path, tmp


@pytest.fixture(scope="module")
def exported(ckpt):
    path, tmp = ckpt
    assert mmit_main(["export", "--checkpoint", str(path), "--format", "diffusers-instructpix2pix",
                      "--output", str(tmp / "pipe")]) == 0
    return tmp / "pipe"


def _pipeline(folder):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_export_folder_is_a_diffusers_pipeline_with_the_ema_unet(ckpt, exported):
    from safetensors.torch import load_file

    path, _ = ckpt
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    assert index["scheduler"] == ["diffusers", "EulerAncestralDiscreteScheduler"]
    pipe = _pipeline(exported)
    assert pipe.unet.config.in_channels == 8 and pipe.unet.conv_in.weight.shape[1] == 8
    ema = load_file(str(path / "ema_unet.safetensors"))
    trained = load_file(str(path / "model.safetensors"))
    assert torch.equal(pipe.unet.conv_in.weight, ema["conv_in.weight"])
    assert not torch.equal(pipe.unet.conv_in.weight, trained["unet.conv_in.weight"])


def test_mmit_edit_and_exported_pipeline_give_the_same_image(ckpt, exported):
    path, tmp = ckpt
    out = tmp / "edit.png"
    assert mmit_main(["edit", "--checkpoint", str(path), "--image", str(tmp / "in.png"), "--prompt", PROMPT,
                      "--steps", "4", "--seed", "3", "--output", str(out)]) == 0
    ours = np.asarray(Image.open(out).convert("RGB")).astype(int)
    ref = _pipeline(exported)(PROMPT, image=Image.open(tmp / "in.png").convert("RGB"), num_inference_steps=4,
                              guidance_scale=7.5, image_guidance_scale=1.5,
                              generator=torch.Generator("cpu").manual_seed(3)).images[0]
    ref = np.asarray(ref).astype(int)
    assert ours.shape == ref.shape == (64, 64, 3)
    assert ours.std() > 1  # a real image, not a constant
    assert np.abs(ours - ref).max() <= 1  # <= 1/255


@pytest.mark.parametrize("scales", [(1.0, 1.0), (3.0, 2.0)])
def test_parity_without_guidance_and_other_scales(ckpt, exported, scales):
    from mmit.families.instructpix2pix.pipeline import edit_image, load_editor

    path, tmp = ckpt
    model, tok, _ = load_editor(path)
    image = Image.open(tmp / "in.png").convert("RGB")
    ours = edit_image(model, tok, image, PROMPT, 3, scales[0], scales[1], seed=5)
    ref = _pipeline(exported)(PROMPT, image=image, num_inference_steps=3, guidance_scale=scales[0],
                              image_guidance_scale=scales[1], generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert np.abs(np.asarray(ours).astype(int) - np.asarray(ref).astype(int)).max() <= 1
    other = edit_image(model, tok, image, PROMPT, 3, scales[0], scales[1], seed=6)
    assert np.abs(np.asarray(other).astype(int) - np.asarray(ours).astype(int)).max() > 1  # the seed matters


def test_edit_errors_are_reported(ckpt, tmp_path, capsys):
    path, _ = ckpt
    assert mmit_main(["edit", "--checkpoint", str(path), "--image", str(tmp_path / "nope.png"), "--prompt", "x",
                      "--output", str(tmp_path / "o.png")]) == 2
    assert "nope.png" in capsys.readouterr().err

"""InstructPix2Pix model pieces: conv_in surgery, conditioning dropout, the loss inputs, data handling."""

from __future__ import annotations

import copy
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mmit.config.schema import RunConfig
from mmit.data.batch import Batch
from mmit.data.processor import Processor
from mmit.data.sample import Media, Sample, SampleError, Turn
from mmit.data.stats import SkipCounter
from mmit.families.instructpix2pix.config import InstructPix2PixConfig
from mmit.families.instructpix2pix.data import EditProcessor, collate_edits, edit_parts
from mmit.families.instructpix2pix.family import InstructPix2PixFamily
from mmit.families.instructpix2pix.model import (InstructPix2PixModel, build_model, conditioning_dropout_masks,
                                                 dropout_rates, widen_conv_in)
from mmit.families.instructpix2pix.tiny import ensure_tiny_sd
from mmit.families.instructpix2pix.triples import COLOURS, edit_sample, make_triple, procedural_samples


@pytest.fixture(scope="module")
def tiny_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(ensure_tiny_sd()), subfolder="unet").eval()


@pytest.fixture(scope="module")
def tiny_model():
    model, tok = build_model(InstructPix2PixConfig(pretrained_model_name_or_path="tiny-sd", resolution=32))
    return model, tok


def test_widened_unet_matches_original_when_extra_channels_are_zero(tiny_unet):
    wide = widen_conv_in(copy.deepcopy(tiny_unet), 8)
    assert wide.conv_in.in_channels == 8 and wide.config.in_channels == 8
    assert torch.equal(wide.conv_in.weight[:, :4], tiny_unet.conv_in.weight)
    assert torch.count_nonzero(wide.conv_in.weight[:, 4:]) == 0
    assert torch.equal(wide.conv_in.bias, tiny_unet.conv_in.bias)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        ref = tiny_unet(x, t, text).sample
        out = wide(torch.cat([x, torch.zeros_like(x)], 1), t, text).sample
        other = wide(torch.cat([x, torch.ones_like(x)], 1), t, text).sample
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    # the extra channels are wired in: once their weights are non-zero, they change the output
    with torch.no_grad():
        wide.conv_in.weight[:, 4:].normal_(generator=g)
        moved = wide(torch.cat([x, torch.ones_like(x)], 1), t, text).sample
    torch.testing.assert_close(other, ref, rtol=0, atol=1e-6)
    assert (moved - ref).abs().max() > 1e-3


def test_widen_is_idempotent_and_refuses_to_narrow(tiny_unet):
    wide = widen_conv_in(copy.deepcopy(tiny_unet), 8)
    conv = wide.conv_in
    assert widen_conv_in(wide, 8).conv_in is conv
    with pytest.raises(ValueError, match="cannot narrow"):
        widen_conv_in(wide, 4)


def test_widened_unet_survives_save_and_load(tiny_unet, tmp_path):
    from diffusers import UNet2DConditionModel

    wide = widen_conv_in(copy.deepcopy(tiny_unet), 8)
    wide.save_pretrained(tmp_path / "unet")
    back = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert back.config.in_channels == 8
    assert torch.equal(back.conv_in.weight, wide.conv_in.weight)


@pytest.mark.parametrize("rates", [(0.05, 0.05, 0.05), (0.1, 0.0, 0.2)])
def test_dropout_rates_over_many_draws(rates):
    p_text, p_both, p_image = rates
    n = 400_000
    drop_text, drop_image = conditioning_dropout_masks(n, *rates, generator=torch.Generator().manual_seed(1))
    text_only = (drop_text & ~drop_image).float().mean().item()
    both = (drop_text & drop_image).float().mean().item()
    image_only = (~drop_text & drop_image).float().mean().item()
    kept = (~drop_text & ~drop_image).float().mean().item()
    tol = 4 * (0.25 / n) ** 0.5  # 4 standard deviations of a proportion
    assert abs(text_only - p_text) < tol and abs(both - p_both) < tol and abs(image_only - p_image) < tol
    assert abs(kept - (1 - sum(rates))) < tol


def test_dropout_matches_the_diffusers_example_layout():
    """diffusers: text dropped when r < 2p, image dropped when p <= r < 3p (same single draw r)."""
    p = 0.05
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    drop_text, drop_image = conditioning_dropout_masks(50_000, p, p, p, generator=g1)
    r = torch.rand(50_000, generator=g2)
    assert torch.equal(drop_text, r < 2 * p)
    assert torch.equal(drop_image, (r >= p) & (r < 3 * p))


def test_dropout_rates_from_config():
    assert dropout_rates(InstructPix2PixConfig()) == (0.05, 0.05, 0.05)
    rates = dropout_rates(InstructPix2PixConfig(conditioning_dropout_prob=0.1, image_dropout_prob=0.0))
    assert rates == (0.1, 0.1, 0.0)
    with pytest.raises(ValueError, match="sum"):
        dropout_rates(InstructPix2PixConfig(conditioning_dropout_prob=0.5))
    # the run config's model section is this dataclass, and build() takes its rates from it
    cfg = RunConfig.for_family("instructpix2pix")
    assert isinstance(cfg.model, InstructPix2PixConfig)
    cfg.model.pretrained_model_name_or_path, cfg.model.resolution = "tiny-sd", 32
    cfg.model.conditioning_dropout_prob, cfg.model.both_dropout_prob = 0.1, 0.2
    model, _ = InstructPix2PixFamily().build(cfg)
    assert model.dropout == (0.1, 0.2, 0.1)


def _capture_unet_inputs(model):
    seen = {}

    def hook(mod, args, kwargs):
        seen["sample"], seen["text"] = args[0].detach().clone(), args[2].detach().clone()

    return seen, model.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_forward_feeds_image_latent_mode_and_applies_dropout(tiny_model):
    model, tok = tiny_model
    g = torch.Generator().manual_seed(0)
    src, dst = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    ids = tok(["make the square red", "move the circle left"], padding="max_length",
              max_length=tok.model_max_length, return_tensors="pt").input_ids
    seen, h = _capture_unet_inputs(model)
    try:
        model.dropout = (0.0, 0.0, 0.0)
        out = model(src, dst, ids)
        assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and not out["drop_text"].any()
        with torch.no_grad():
            mode = model.vae.encode(src).latent_dist.mode()
            text = model.text_encoder(ids)[0]
            null = model.text_encoder(model.null_input_ids)[0]
        assert seen["sample"].shape == (2, 8, 8, 8)
        torch.testing.assert_close(seen["sample"][:, 4:], mode)  # unscaled latent mode, not a sample
        torch.testing.assert_close(seen["text"], text)
        model.dropout = (0.0, 1.0, 0.0)  # drop both
        model(src, dst, ids)
        assert torch.count_nonzero(seen["sample"][:, 4:]) == 0
        torch.testing.assert_close(seen["text"], null.expand_as(text))
        model.dropout = (1.0, 0.0, 0.0)  # text only: the image latent stays
        model(src, dst, ids)
        torch.testing.assert_close(seen["sample"][:, 4:], mode)
        torch.testing.assert_close(seen["text"], null.expand_as(text))
    finally:
        h.remove()
        model.dropout = (0.05, 0.05, 0.05)


def test_frozen_parts_and_train_mode(tiny_model):
    model, _ = tiny_model
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    model.train()
    assert model.unet.training and not model.vae.training and not model.text_encoder.training
    model.eval()
    with pytest.raises(ValueError, match="input channels"):
        InstructPix2PixModel(_original_unet(), model.vae, model.text_encoder, model.noise_scheduler,
                             model.null_input_ids)


def test_trainable_modules_are_applied_by_the_trainer_helper(tiny_model):
    """The family names what trains; ``apply_trainable`` (what the trainer calls) sets requires_grad."""
    from mmit.training.params import apply_trainable, parameter_table

    model, _ = tiny_model
    fam = InstructPix2PixFamily()
    cfg = RunConfig.for_family("instructpix2pix")
    trains = fam.trainable_modules(cfg)
    assert trains == {"unet": True, "vae": False, "text_encoder": False}
    try:
        model.requires_grad_(True)  # a state apply_trainable must undo for the frozen parts
        model.unet.requires_grad_(False)
        assert apply_trainable(model, trains) == trains
        assert all(p.requires_grad for p in model.unet.parameters())
        assert not any(p.requires_grad for p in model.vae.parameters())
        assert not any(p.requires_grad for p in model.text_encoder.parameters())
        # every parameter belongs to one of the named modules, so the table covers the whole model
        _, rows = parameter_table(model, list(trains))
        assert sum(r["total"] for r in rows) == sum(p.numel() for p in model.parameters())
        assert sum(r["trainable"] for r in rows) == sum(p.numel() for p in model.unet.parameters())
    finally:
        model.unet.requires_grad_(True)
        model.vae.requires_grad_(False)
        model.text_encoder.requires_grad_(False)


def test_family_loss_reads_the_batch_fields(tiny_model):
    """``family.loss(model, batch)``: media["image"] is the input image, extra["edited_pixel_values"] the
    target; the same RNG state gives exactly the model's own loss, and swapping the two images changes it."""
    model, tok = tiny_model
    fam = InstructPix2PixFamily()
    g = torch.Generator().manual_seed(3)
    items = [{"id": f"s{i}", "input_pixel_values": torch.rand(3, 32, 32, generator=g) * 2 - 1,
              "edited_pixel_values": torch.rand(3, 32, 32, generator=g) * 2 - 1,
              "input_ids": tok("make the square red", padding="max_length", max_length=tok.model_max_length,
                               return_tensors="pt").input_ids[0]} for i in range(2)]
    batch = collate_edits(items)
    src, dst, ids = (torch.stack([it[k] for it in items]) for k in ("input_pixel_values", "edited_pixel_values",
                                                                     "input_ids"))
    model.eval()
    try:
        model.dropout = (0.0, 0.0, 0.0)
        with torch.no_grad():
            torch.manual_seed(11)
            got = fam.loss(model, batch)
            torch.manual_seed(11)
            ref = model(src, dst, ids)["loss"]
            torch.manual_seed(11)
            swapped = model(dst, src, ids)["loss"]
        assert got.ndim == 0 and torch.equal(got, ref)
        assert not torch.equal(got, swapped)
        assert fam.count(batch) == 2
    finally:
        model.dropout = (0.05, 0.05, 0.05)


def _original_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(ensure_tiny_sd()), subfolder="unet")  # 4 input channels


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_preprocessor_gives_both_images_the_same_crop_and_flip(tiny_model):
    _, tok = tiny_model
    arr = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)  # not symmetric
    s = edit_sample("s1", _png(arr), "make the square red", _png(arr))
    pre = EditProcessor(tok, 32, center_crop=False, random_flip=True)
    assert isinstance(pre, Processor)
    flipped = set()
    for seed in range(12):
        torch.manual_seed(seed)
        item = pre(s)
        assert item["input_pixel_values"].shape == (3, 32, 32)
        assert torch.equal(item["input_pixel_values"], item["edited_pixel_values"])
        assert -1 <= item["input_pixel_values"].min() and item["input_pixel_values"].max() <= 1
        flipped.add(item["input_pixel_values"][0, 0, 0].item())
    assert len(flipped) > 1  # crops / flips vary between draws
    assert tok.decode(item["input_ids"], skip_special_tokens=True).strip() == "make the square red"
    other = pre(edit_sample("s2", _png(arr[::-1].copy()), "move the circle left", _png(255 - arr)))
    batch = pre.collate([item, other])
    assert isinstance(batch, Batch) and batch.ids == ["s1", "s2"] and batch.size == 2
    L = tok.model_max_length
    assert batch.input_ids.shape == (2, L) and torch.equal(batch.attention_mask, torch.ones(2, L, dtype=torch.long))
    assert torch.equal(batch.input_ids, torch.stack([item["input_ids"], other["input_ids"]]))
    images = batch.media["image"]
    assert set(batch.media) == {"image"} and images.values.shape == (2, 3, 32, 32)
    assert torch.equal(images.values, torch.stack([item["input_pixel_values"], other["input_pixel_values"]]))
    assert images.sample_index.tolist() == [0, 1] and images.position.tolist() == [-1, -1]  # no span in the text
    assert set(batch.extra) == {"edited_pixel_values"}
    assert torch.equal(batch.extra["edited_pixel_values"],
                       torch.stack([item["edited_pixel_values"], other["edited_pixel_values"]]))
    assert not torch.equal(batch.extra["edited_pixel_values"][1], images.values[1])
    assert batch.labels is None and batch.describe() == collate_edits([item, other]).describe()
    with pytest.raises(ValueError, match="no items"):
        pre.collate([])


def test_bad_edit_samples_are_counted_or_raised(tiny_model):
    _, tok = tiny_model
    one = Sample("one", [Turn("user", "<image>\nmake it red"), Turn("assistant", "ok")],
                 [Media("image", data=_png(np.zeros((8, 8, 3), np.uint8)))])
    empty = edit_sample("empty", _png(np.zeros((8, 8, 3), np.uint8)), "  ", _png(np.zeros((8, 8, 3), np.uint8)))
    stats = SkipCounter()
    pre = EditProcessor(tok, 32)
    assert pre.try_call(one, stats) is None and pre.try_call(empty, stats) is None
    assert stats.as_dict() == {"not-an-edit-pair": 1, "no-edit-prompt": 1}
    with pytest.raises(SampleError, match="'one'"):
        EditProcessor(tok, 32, overflow="error").try_call(one, SkipCounter())
    with pytest.raises(ValueError, match="resolution"):
        EditProcessor(tok, 0)


def test_family_processor_takes_its_settings_from_the_config(tiny_model):
    import pickle

    _, tok = tiny_model
    cfg = RunConfig.for_family("instructpix2pix")
    cfg.model.resolution, cfg.model.center_crop, cfg.model.random_flip = 24, True, False
    cfg.data.overflow = "error"
    proc = InstructPix2PixFamily().processor(cfg, None, tok)
    assert isinstance(proc, EditProcessor)
    assert (proc.resolution, proc.center_crop, proc.random_flip, proc.overflow) == (24, True, False, "error")
    arr = (np.arange(40 * 56 * 3) % 251).astype(np.uint8).reshape(40, 56, 3)
    s = edit_sample("p", _png(arr), "make the square red", _png(arr))
    back = pickle.loads(pickle.dumps(proc))  # DataLoader workers get a copy
    a, b = proc(s), back(s)  # centre crop, no flip: deterministic
    assert a["input_pixel_values"].shape == (3, 24, 24)
    assert torch.equal(a["input_pixel_values"], b["input_pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])


def test_procedural_triples_follow_the_convention_and_are_checkable():
    a = list(procedural_samples(30, size=64, seed=3))
    b = list(procedural_samples(30, size=64, seed=3))
    assert [s.media[1].data for s in a] == [s.media[1].data for s in b]
    for s in a:
        s.validate()
        assert [m.meta["role"] for m in s.media] == ["input", "edited"]
        assert s.task == "image-editing" and s.source == "instructpix2pix"
        assert s.turns[1].content == "<image>"
        src, dst, prompt = edit_parts(s)
        assert prompt == s.turns[0].content.split("\n", 1)[1]
    rng = random.Random(0)
    kinds = set()
    for _ in range(60):
        src, prompt, dst, meta = make_triple(rng, 64)
        kinds.add(meta["edit"])
        d = np.asarray(dst).astype(int)
        ink = np.argwhere((d != 255).any(-1))
        l, t, r, btm = meta["box_out"]
        # the edited shape lies in its box and has the output colour at the box centre
        assert ink[:, 1].min() >= l - 1 and ink[:, 1].max() <= r + 1 and ink[:, 0].min() >= t - 1
        cy, cx = (t + btm) // 2, (l + r) // 2
        if meta["shape"] != "triangle":
            assert tuple(d[cy, cx]) == COLOURS[meta["colour_out"]]
        if meta["edit"] == "move" and "left" in prompt:
            assert meta["box_out"][0] < meta["box_in"][0]
        if meta["edit"] == "recolour":
            assert meta["colour_out"] in prompt and meta["colour_out"] != meta["colour_in"]
    assert kinds == {"recolour", "move", "resize"}

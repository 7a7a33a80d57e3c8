"""Vision towers: registry, tiny members (shapes, layer selection, preprocessing parity with the
libraries' own processors, deterministic cached creation, loading back by path)."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmit.config.components import VisionTowerConfig
from mmit.models.cache import MARKER_NAME, build_dir_once, mmit_cache_dir
from mmit.models.encoders import VISION_TOWERS, build_vision_tower, ensure_tiny_tower, expand2square, tiny_tower_names
from mmit.models.encoders.tiny import uniform_bits
from mmit.registry import UnknownNameError

TINY = tiny_tower_names()
FULL = [n for n in VISION_TOWERS.names() if n not in TINY]


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMIT_CACHE", str(tmp_path_factory.mktemp("mmit_cache")))
        yield


_TOWERS = {}


def tower(name, feature="patch", layer=-2, aspect="crop", **kw):
    key = (name, feature, layer, aspect, tuple(sorted(kw.items())))
    if key not in _TOWERS:
        cfg = VisionTowerConfig(name=name, select_feature=feature, select_layer=layer, image_aspect_ratio=aspect, **kw)
        _TOWERS[key] = build_vision_tower(cfg).requires_grad_(False)  # as the trainer does for a frozen tower
    return _TOWERS[key]


@pytest.fixture(scope="module")
def photo():
    """A non-square, photo-like RGB image (smooth gradients, shapes, sensor noise), 120 x 60."""
    w, h = 120, 60
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([40 + 180 * xx / w, 90 + 120 * yy / h, 200 - 150 * (xx + yy) / (w + h)], -1)
    rgb += np.random.default_rng(0).normal(0, 6, rgb.shape)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 10, 60, 50), fill=(230, 200, 40))
    draw.rectangle((75, 5, 110, 35), fill=(30, 60, 140))
    return img


def x_batch(t, b=2, seed=0):
    return torch.randn(b, 3, t.image_size, t.image_size, generator=torch.Generator().manual_seed(seed))


# -- registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VISION_TOWERS.names())
def test_registry_resolves(name):
    assert callable(VISION_TOWERS.get(name))


def test_full_size_members_present():
    assert {"clip-vit-l-14", "clip-vit-l-14-336", "clip-vit-b-16", "hf-clip", "open-clip-vit-b-32", "timm-vit-b-16"} <= set(FULL)


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownNameError) as e:
        build_vision_tower(VisionTowerConfig(name="clip-vit-l-14-33"))
    assert "clip-vit-l-14-336" in str(e.value)


@pytest.mark.parametrize("name", ["hf-clip", "open-clip", "timm-vit"])
def test_generic_members_need_a_path(name):
    with pytest.raises(ValueError, match="name_or_path"):
        build_vision_tower(VisionTowerConfig(name=name))


@pytest.mark.parametrize("field,value", [("select_feature", "cls"), ("image_aspect_ratio", "squash")])
def test_bad_config_values(field, value):
    with pytest.raises(ValueError, match=field):
        build_vision_tower(VisionTowerConfig(name="tiny-clip-vit", **{field: value}))


# -- tiny towers: shapes, grad, layer selection -------------------------------------------------


@pytest.mark.parametrize("feature,n", [("patch", 16), ("cls_patch", 17)])
@pytest.mark.parametrize("name", TINY)
def test_tiny_shapes(name, feature, n, photo):
    t = tower(name, feature)
    assert (t.hidden_size, t.num_tokens, t.image_size) == (64, n, 32)
    px = t.image_processor([photo] * 3)
    assert px.shape == (3, 3, 32, 32) and px.dtype == torch.float32
    y = t(px)
    assert y.shape == (3, n, 64) and y.dtype == torch.float32
    assert not y.requires_grad  # frozen: no_grad


@pytest.mark.parametrize("name", TINY)
def test_grad_follows_requires_grad(name):
    t = build_vision_tower(VisionTowerConfig(name=name))  # the tower never sets requires_grad itself
    assert not t.frozen and all(p.requires_grad for p in t.parameters())
    y = t(x_batch(t))
    assert y.requires_grad
    y.sum().backward()
    stem = [p for n, p in t.named_parameters() if "patch_embed" in n or "conv1" in n]  # the first layer
    assert stem and all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem)
    t.requires_grad_(False)  # what the trainer does for a frozen tower
    assert t.frozen and not t(x_batch(t)).requires_grad


@pytest.mark.parametrize("name", TINY)
def test_wrong_input_size_is_an_error(name):
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        tower(name)(torch.zeros(1, 3, 64, 64))


def _reference_hidden(t, x, layer):
    """Hidden state ``layer`` ([embeddings, block_1, ...] convention) with all tokens, computed by
    calling the underlying library model directly."""
    with torch.no_grad():
        if hasattr(t, "vision_model"):  # transformers
            return t.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[layer]
        if hasattr(t, "visual"):  # open_clip
            v = t.visual
            h, blocks = v._embeds(x), v.transformer.resblocks
        else:  # timm
            m = t.model
            h, blocks = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x)))), m.blocks
        idx = layer % (len(blocks) + 1)
        for blk in blocks[:idx]:
            h = blk(h)
        return h


@pytest.mark.parametrize("layer", [-1, -2, 1])
@pytest.mark.parametrize("name", TINY)
def test_select_layer_matches_library(name, layer):
    x = x_batch(tower(name))
    ref = _reference_hidden(tower(name), x, layer)
    full = tower(name, "cls_patch", layer)(x)
    patch = tower(name, "patch", layer)(x)
    torch.testing.assert_close(full, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(patch, ref[:, 1:], rtol=0, atol=1e-6)
    if layer != -1:  # a different layer gives different features
        assert not torch.allclose(patch, tower(name, "patch", -1)(x))


def test_open_clip_last_layer_relates_to_output_tokens():
    t = tower("tiny-open-clip-vit", "patch", -1)
    x = x_batch(t)
    with torch.no_grad():
        _, tokens = t.visual(x)  # output_tokens=True: OpenFlamingo's features (after ln_post)
        torch.testing.assert_close(t.visual.ln_post(t(x)), tokens, rtol=0, atol=1e-5)


def test_hf_clip_embedding_layer_supported():
    t = tower("tiny-clip-vit", "cls_patch", 0)
    x = x_batch(t)
    torch.testing.assert_close(t(x), _reference_hidden(t, x, 0), rtol=0, atol=0)


@pytest.mark.parametrize("name,layer", [(n, 4) for n in TINY] + [("tiny-open-clip-vit", 0), ("tiny-timm-vit", -4)])
def test_select_layer_out_of_range(name, layer):
    with pytest.raises(ValueError, match="select_layer"):
        tower(name, layer=layer)


# -- preprocessing --------------------------------------------------------------------------------


def _reference_processor(name):
    path = str(ensure_tiny_tower(name))
    if name == "tiny-clip-vit":
        from transformers import CLIPImageProcessor

        proc = CLIPImageProcessor.from_pretrained(path)
        return lambda im: proc(im, return_tensors="pt")["pixel_values"][0], proc.image_mean, proc.image_std
    if name == "tiny-open-clip-vit":
        import open_clip

        model, _, val = open_clip.create_model_and_transforms(f"local-dir:{path}")
        return val, model.visual.image_mean, model.visual.image_std
    import timm
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(model=timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0))
    return create_transform(**cfg), cfg["mean"], cfg["std"]


def _llava_expand2square(pil_img, background_color):  # verbatim from LLaVA's train.py / mm_utils.py
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


@pytest.mark.parametrize("name", TINY)
def test_crop_matches_library_processor(name, photo):
    ref, _, _ = _reference_processor(name)
    ours = tower(name, aspect="crop").image_processor([photo, photo.transpose(Image.ROTATE_90)])
    assert ours.shape == (2, 3, 32, 32)
    assert (ours[0] - ref(photo)).abs().max() < 1e-6
    assert (ours[1] - ref(photo.transpose(Image.ROTATE_90))).abs().max() < 1e-6


@pytest.mark.parametrize("name", TINY)
def test_pad_is_llava_expand2square_then_processor(name, photo):
    ref, mean, std = _reference_processor(name)
    bg = tuple(int(x * 255) for x in mean)
    ours = tower(name, aspect="pad").image_processor([photo])[0]
    assert (ours - ref(_llava_expand2square(photo, bg))).abs().max() < 1e-6
    # corners are the mean colour: undo the normalisation
    raw = ours * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    want = torch.tensor(bg, dtype=torch.float32) / 255
    for r, c in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        torch.testing.assert_close(raw[:, r, c], want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("aspect", ["pad", "crop"])
def test_hf_clip_matches_transformers_llava_image_processor(aspect, photo):
    from transformers import LlavaImageProcessor

    t = tower("tiny-clip-vit", aspect=aspect)
    p = t.processor
    llava = LlavaImageProcessor(size=dict(p.size), crop_size=dict(p.crop_size), resample=p.resample,
                                image_mean=list(p.image_mean), image_std=list(p.image_std), do_pad=aspect == "pad")
    images = [photo, photo.transpose(Image.ROTATE_90)]
    assert (t.image_processor(images) - llava(images, return_tensors="pt")["pixel_values"]).abs().max() < 1e-6


def test_source_parsing(tmp_path):
    from mmit.models.encoders.open_clip_tower import parse_open_clip_source
    from mmit.models.encoders.timm_vit import parse_timm_source

    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"")
    assert parse_open_clip_source("ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert parse_open_clip_source(str(tmp_path)) == (f"local-dir:{tmp_path}", None)
    assert parse_open_clip_source("hf-hub:org/repo") == ("hf-hub:org/repo", None)
    assert parse_open_clip_source(str(ckpt), "ViT-B-32") == ("ViT-B-32", str(ckpt))
    with pytest.raises(ValueError, match="names no weights"):
        parse_open_clip_source("ViT-B-32")
    assert parse_timm_source(str(tmp_path)) == f"local-dir:{tmp_path}"
    assert parse_timm_source("vit_base_patch16_224.augreg_in21k") == "vit_base_patch16_224.augreg_in21k"


def test_expand2square_corners(photo):
    sq = expand2square(photo, (122, 116, 104))
    assert sq.size == (120, 120)
    assert all(sq.getpixel(p) == (122, 116, 104) for p in [(0, 0), (119, 0), (0, 119), (119, 119)])
    assert sq.crop((0, 30, 120, 90)).tobytes() == photo.tobytes()
    tall = photo.transpose(Image.ROTATE_90)
    assert expand2square(tall, (1, 2, 3)).tobytes() == _llava_expand2square(tall, (1, 2, 3)).tobytes()


@pytest.mark.parametrize("name", TINY)
def test_resize_squashes_without_crop(name, photo):
    from torchvision.transforms import functional as TF

    _, mean, std = _reference_processor(name)
    ours = tower(name, aspect="resize").image_processor(photo)  # a single image -> batch of one
    want = TF.normalize(TF.to_tensor(photo.resize((32, 32), Image.BICUBIC)), mean, std)
    assert ours.shape == (1, 3, 32, 32) and (ours[0] - want).abs().max() < 1e-6


@pytest.mark.parametrize("name", TINY)
def test_image_processor_pickles_without_model(name, photo):
    proc = tower(name, aspect="pad").image_processor
    blob = pickle.dumps(proc)
    assert len(blob) < 50_000  # no weights inside
    assert torch.equal(pickle.loads(blob)([photo]), proc([photo]))


def test_image_processor_converts_modes(photo):
    proc = tower("tiny-clip-vit", aspect="pad").image_processor
    assert proc([photo.convert("L"), photo.convert("RGBA")]).shape == (2, 3, 32, 32)
    with pytest.raises(TypeError, match="image 0"):
        proc([np.zeros((4, 4, 3))])


# -- tiny creation: determinism, cache, loading by path ----------------------------------------------


def test_uniform_bits_are_machine_independent():
    v = uniform_bits((4,), torch.Generator().manual_seed(0), 1.0)
    # (k * 2**-23 - 1) for k = 8325804, 12888623, 1484405, 2215104: exact in float32
    assert v.tolist() == [(k * 2.0**-23 - 1.0) for k in (8325804, 12888623, 1484405, 2215104)]


def test_tiny_creation_is_deterministic(tmp_path, monkeypatch):
    state = []
    for sub in ("a", "b"):
        monkeypatch.setenv("MMIT_CACHE", str(tmp_path / sub))
        rng = torch.get_rng_state()
        for n in TINY:
            ensure_tiny_tower(n)
        assert torch.equal(rng, torch.get_rng_state()), "tiny creation touched the global RNG"
        towers = [build_vision_tower(VisionTowerConfig(name=n)) for n in TINY]
        assert all((tmp_path / sub / "tiny" / n / MARKER_NAME).is_file() for n in TINY)
        state.append([t.state_dict() for t in towers])
    for sd_a, sd_b in zip(*state):
        assert sd_a.keys() == sd_b.keys()
        assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MMIT_CACHE", str(tmp_path))
    assert mmit_cache_dir() == tmp_path
    monkeypatch.delenv("MMIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mmit_cache_dir() == tmp_path / "home" / ".cache" / "mmit"


def test_build_dir_once_concurrent_and_stale(tmp_path):
    calls = []

    def build(d):
        calls.append(d)
        time.sleep(0.05)
        (d / "w.txt").write_text("same")

    target = tmp_path / "tiny" / "x"
    threads = [threading.Thread(target=build_dir_once, args=(target, build, {"v": 1})) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert (target / "w.txt").read_text() == "same"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x"]  # no temporary folders left
    n = len(calls)
    build_dir_once(target, build, {"v": 1})
    assert len(calls) == n  # reused
    build_dir_once(target, build, {"v": 2})
    assert len(calls) == n + 1 and '"v": 2' in (target / MARKER_NAME).read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["x"]


@pytest.mark.parametrize(
    "name,generic", [("tiny-clip-vit", "hf-clip"), ("tiny-open-clip-vit", "open-clip"), ("tiny-timm-vit", "timm-vit")]
)
def test_tiny_loads_by_path_through_generic_member(name, generic):
    path = str(ensure_tiny_tower(name))
    a, b = tower(name), tower(generic, name_or_path=path)
    x = x_batch(a)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", ["tiny-clip-vit", "tiny-timm-vit"])
def test_save_pretrained_round_trip(name, tmp_path, photo):
    a = tower(name)
    a.save_pretrained(str(tmp_path / "saved"))
    b = build_vision_tower(VisionTowerConfig(name=name, name_or_path=str(tmp_path / "saved"), image_aspect_ratio="crop"))
    x = x_batch(a)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.image_processor([photo]), b.image_processor([photo]))


def test_hf_clip_accepts_full_clip_model_folder(tmp_path, photo):
    from transformers import CLIPConfig, CLIPModel

    vision = dict(image_size=28, patch_size=14, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    full.save_pretrained(tmp_path)  # no preprocessor_config.json: built from the vision config
    t = build_vision_tower(VisionTowerConfig(name="hf-clip", name_or_path=str(tmp_path), select_layer=-1))
    assert (t.hidden_size, t.num_tokens, t.image_size) == (32, 4, 28)
    x = x_batch(t)
    with torch.no_grad():
        want = full.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:]
    torch.testing.assert_close(t(x), want, rtol=0, atol=1e-6)
    assert t.image_processor([photo]).shape == (1, 3, 28, 28)

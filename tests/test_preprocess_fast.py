"""The HF fast path of :class:`mmit.models.encoders.preprocess.ImageProcessor` (:class:`HFFastPath`)
gives the wrapped transformers processor's output bit for bit, and is used only for the settings
it reproduces."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmit.models.encoders.hf_clip import default_clip_image_processor
from mmit.models.encoders.preprocess import HFFastPath, ImageProcessor

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "samples"
PHOTO_EXT = {".jpg", ".jpeg", ".png", ".webp"}


def _photos(limit=16):
    paths = sorted(p for p in (ROOT / "demo_data" / "images").rglob("*") if p.suffix.lower() in PHOTO_EXT)
    if SHARED.is_dir():
        extra = sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in PHOTO_EXT)
        paths += extra[:: max(1, len(extra) // (limit - len(paths)))] if len(paths) < limit else []
    return paths[:limit]


def _wrap(hf, aspect, fast=True):
    proc = ImageProcessor(hf, image_size=336, image_mean=hf.image_mean, image_std=hf.image_std,
                          aspect_ratio=aspect, batched=True)
    if not fast:
        proc.fast = None
    return proc


def _max_diff(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def clip336():
    return default_clip_image_processor(336)


def _rng_image(w, h, mode, seed=0):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    if mode == "P":
        return im.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "RGBA":
        a = Image.fromarray(np.random.default_rng(seed + 1).integers(0, 256, (h, w), dtype=np.uint8))
        return Image.merge("RGBA", (*im.split(), a))
    return im.convert(mode)


@pytest.mark.parametrize("aspect", ["pad", "crop", "resize"])
def test_real_photos_bit_exact(clip336, aspect):
    photos = _photos()
    assert len(photos) >= 6, "demo_data/images missing"
    fast, slow = _wrap(clip336, aspect), _wrap(clip336, aspect, fast=False)
    assert fast.fast is not None and slow.fast is None
    ims = [Image.open(p) for p in photos]
    worst = max(_max_diff(fast(im), slow(im)) for im in ims)
    assert worst == 0.0, f"{aspect}: max abs difference {worst}"
    # a batch of several images at once (HF groups them by shape) agrees too
    assert torch.equal(fast(ims[:4]), slow(ims[:4]))


def test_reference_is_the_hf_processor(clip336):
    """The slow path compared against is the processor's own call (pad = expand2square first)."""
    from mmit.models.encoders.preprocess import expand2square

    proc = _wrap(clip336, "pad")
    im = Image.open(_photos(1)[0]).convert("RGB")
    want = clip336(expand2square(im, proc.background_color), return_tensors="pt")["pixel_values"]
    assert torch.equal(proc(im), torch.as_tensor(want))


@pytest.mark.parametrize("aspect", ["pad", "crop"])
@pytest.mark.parametrize("size,mode", [((1, 1), "RGB"), ((2, 3), "L"), ((5, 300), "RGBA"), ((300, 5), "P"),
                                       ((337, 335), "RGB"), ((335, 337), "LA"), ((301, 203), "P"),
                                       ((3000, 2001), "RGB"), ((17, 4000), "1"), ((640, 480), "CMYK")])
def test_odd_sizes_and_modes_bit_exact(clip336, aspect, size, mode):
    im = _rng_image(*size, mode, seed=size[0] * 7 + size[1])
    fast, slow = _wrap(clip336, aspect), _wrap(clip336, aspect, fast=False)
    out = fast(im)
    assert out.shape == (1, 3, 336, 336) and out.is_contiguous()
    assert torch.equal(out, slow(im)), f"{size} {mode} {aspect}: max abs difference {_max_diff(out, slow(im))}"


def test_other_crop_and_mean(clip336):
    """Non-square crop smaller than the resize, other mean/std/rescale: still the HF output."""
    from transformers import CLIPImageProcessor

    hf = CLIPImageProcessor(size={"shortest_edge": 240}, crop_size={"height": 224, "width": 200},
                            image_mean=[0.5, 0.25, 0.125], image_std=[0.2, 0.3, 0.7], rescale_factor=1 / 127.5)
    proc = ImageProcessor(hf, image_size=224, image_mean=hf.image_mean, image_std=hf.image_std,
                          aspect_ratio="crop", batched=True)
    assert proc.fast is not None and proc.fast.out_size == (224, 200)
    for p in _photos(4):
        im = Image.open(p).convert("RGB")
        assert torch.equal(proc(im)[0], hf(im, return_tensors="pt")["pixel_values"][0])


@pytest.mark.parametrize("name", ["SiglipImageProcessor", "BlipImageProcessor"])
def test_fixed_size_processors(name):
    """Resize to a fixed size, no crop (SigLIP, InstructBLIP's BLIP processor): same path, exact."""
    import transformers

    hf = getattr(transformers, name)(size={"height": 224, "width": 224})
    assert HFFastPath.from_processor(hf) is not None
    fast = ImageProcessor(hf, image_size=224, image_mean=hf.image_mean, image_std=hf.image_std,
                          aspect_ratio="pad", batched=True)
    slow = ImageProcessor(hf, image_size=224, image_mean=hf.image_mean, image_std=hf.image_std,
                          aspect_ratio="pad", batched=True)
    slow.fast = None
    ims = [Image.open(p) for p in _photos(6)] + [_rng_image(31, 7, "RGBA")]
    for im in ims:
        assert torch.equal(fast(im), slow(im)), f"{name}: max abs difference {_max_diff(fast(im), slow(im))}"


def _variants():
    from transformers import CLIPImageProcessor

    base = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    yield "bilinear", CLIPImageProcessor(**base, resample=2)
    yield "no-normalize", CLIPImageProcessor(**base, do_normalize=False)
    yield "no-rescale", CLIPImageProcessor(**base, do_rescale=False)
    yield "no-resize", CLIPImageProcessor(**base, do_resize=False)
    yield "no-crop-shortest-edge", CLIPImageProcessor(**base, do_center_crop=False)
    yield "crop-larger-than-resize", CLIPImageProcessor(size={"shortest_edge": 300},
                                                        crop_size={"height": 336, "width": 336})
    yield "longest-edge", CLIPImageProcessor(size={"shortest_edge": 336, "longest_edge": 500},
                                             crop_size={"height": 336, "width": 336})
    yield "do-pad", CLIPImageProcessor(**base, do_pad=True)
    yield "one-channel-mean", CLIPImageProcessor(**base, image_mean=[0.5], image_std=[0.5])

    class Tiled(CLIPImageProcessor):  # a subclass with its own pipeline (LLaVA-NeXT style)
        def _preprocess(self, images, **kwargs):
            return super()._preprocess(images, **kwargs)

    yield "subclass", Tiled(**base)
    from transformers import CLIPImageProcessorPil

    yield "pil-backend", CLIPImageProcessorPil(**base)


@pytest.mark.parametrize("name,hf", list(_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_unsupported_settings_fall_back(name, hf):
    assert HFFastPath.from_processor(hf) is None, name
    proc = ImageProcessor(hf, image_size=336, image_mean=hf.image_mean, image_std=hf.image_std,
                          aspect_ratio="pad", batched=True)
    assert proc.fast is None
    if name in ("bilinear", "no-normalize", "subclass", "pil-backend"):  # ... and the processor's own output
        im = Image.open(_photos(1)[0]).convert("RGB")
        from mmit.models.encoders.preprocess import expand2square

        want = hf(expand2square(im, proc.background_color), return_tensors="pt")["pixel_values"]
        assert torch.equal(proc(im), torch.as_tensor(want).float())


def test_not_hf_and_unbatched_have_no_fast_path(clip336):
    assert HFFastPath.from_processor(lambda im: im) is None
    proc = ImageProcessor(lambda im: torch.zeros(3, 4, 4), image_size=4, image_mean=(0.5,) * 3,
                          image_std=(0.5,) * 3, batched=False)
    assert proc.fast is None


def test_pickles_with_fast_path(clip336):
    proc = _wrap(clip336, "pad")
    back = pickle.loads(pickle.dumps(proc))
    assert back.fast is not None
    im = _rng_image(50, 80, "RGB")
    assert torch.equal(back(im), proc(im))

"""Input-pipeline speed-ups that must not change what the model sees (issue 17).

Reduced-size JPEG decoding (:class:`mmit.data.media.Draft`, on by default in the processors whose
image transform states its size and aspect-ratio policy): the tower input it gives is compared with
a full decode's on real photos, in 8-bit levels (one level = 1/255 of the range).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES, SHARED_SAMPLES
from mmit.data.media import Draft, decode_image


def _jpegs(shared=SHARED_SAMPLES):
    """Real photos: the demo's, the Vision-Flan samples' when ``../shared/samples`` is there (VizWiz
    1224x1632, ...), and one demo photo enlarged 4x and saved again (a 2280x1520 JPEG) so that every
    case below has a photo large enough to reduce without the shared samples too."""
    files = sorted(p for p in Path(DEMO_IMAGES).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    flan = Path(shared) / "vision_flan" / "imgs"
    if flan.is_dir():
        files += sorted(p for p in flan.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    out = [(p.name, p.read_bytes()) for p in files]
    big = Image.open(Path(DEMO_IMAGES) / "extreme_ironing.jpg").convert("RGB")
    buf = io.BytesIO()
    big.resize((big.width * 4, big.height * 4), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return out + [("extreme_ironing_x4.jpg", buf.getvalue())]


def _transform(side: int, fit: str):
    from mmit.models.encoders.hf_clip import default_clip_image_processor
    from mmit.models.encoders.preprocess import ImageProcessor

    clip = default_clip_image_processor(side)
    return ImageProcessor(clip, image_size=side, image_mean=clip.image_mean, image_std=clip.image_std,
                          aspect_ratio=fit, batched=True)


def _levels(a: torch.Tensor, b: torch.Tensor, std) -> torch.Tensor:
    """|a - b| of two normalised pixel tensors [3,H,W], in 8-bit levels."""
    return (a - b).abs() * torch.tensor(std).view(3, 1, 1) * 255


# (side, fit, max levels at any pixel, max mean levels over an image): LLaVA-1.5 / v1 / InstructBLIP-
# sized towers stay within a few levels; the 32 px tiny tower (1/8 decodes) within a dozen.
CASES = [(336, "pad", 8, 0.5), (224, "pad", 8, 0.5), (224, "crop", 8, 0.5), (224, "resize", 8, 0.5),
         (32, "pad", 16, 2.5), (32, "crop", 16, 2.5)]


@pytest.mark.parametrize("shared", [SHARED_SAMPLES, "/nonexistent"], ids=["samples", "repo-only"])
@pytest.mark.parametrize("side,fit,max_levels,mean_levels", CASES)
def test_draft_keeps_the_tower_input_close_to_a_full_decode(side, fit, max_levels, mean_levels, shared):
    transform, reduced = _transform(side, fit), 0
    draft = Draft(side, fit)
    for name, data in _jpegs(shared):
        full, small = decode_image(data, name), decode_image(data, name, draft=draft)
        if small.size != full.size:
            reduced += 1
            s = draft.scale(*full.size)
            assert small.size == (full.size[0] // s, full.size[1] // s), name
            need = draft.min_size(*full.size)
            assert small.size[0] >= need[0] and small.size[1] >= need[1], name
        diff = _levels(transform([full])[0], transform([small])[0], transform.image_std)
        assert float(diff.max()) <= max_levels, (name, float(diff.max()))
        assert float(diff.mean()) <= mean_levels, (name, float(diff.mean()))
    assert reduced >= 1  # the comparison covered at least one reduced decode


def test_draft_scale_divides_exactly_keeps_the_pad_offset_and_the_gap():
    d = Draft(336, "pad")
    assert d.min_size(1500, 720) == (672, 323)
    assert d.scale(1500, 720) == 2  # 1/2 keeps 750 >= 672 px; 1/4 (375) would not
    assert d.scale(3000, 1440) == 4
    assert d.scale(1001, 720) == 1  # 1001 is not divisible: a rounded-up edge would stretch the image
    assert d.scale(1344, 1000) == 2 and d.scale(1344, 1002) == 1  # offset 171 is odd: 1/2 would move it
    assert d.scale(640, 480) == 1  # COCO at 336 px: nothing to gain without going below 2x
    assert Draft(336, "crop").min_size(1000, 500) == (1344, 672)
    assert Draft(336, "resize").min_size(1000, 500) == (672, 672)
    assert Draft(32, "crop", reducing_gap=1.0).scale(640, 480) == 8
    for bad in ((0, "pad", 2.0), (336, "square", 2.0), (336, "pad", 0.5)):
        with pytest.raises(ValueError, match="Draft needs"):
            Draft(*bad)


def _encoded(fmt: str, size=(1600, 1200)) -> bytes:
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def test_draft_leaves_other_formats_and_small_jpegs_untouched():
    d = Draft(32, "pad")
    png = _encoded("PNG")
    assert decode_image(png, "png", draft=d).tobytes() == decode_image(png, "png").tobytes()
    small = _encoded("JPEG", (64, 48))
    assert decode_image(small, "jpg", draft=d).tobytes() == decode_image(small, "jpg").tobytes()
    big = _encoded("JPEG")
    assert decode_image(big, "jpg", draft=d).size == (200, 150)  # 1/8, still >= 2 x 32 px on the long side
    assert decode_image(big, "jpg").size == (1600, 1200)


def test_processor_decodes_with_the_draft_its_transform_allows(tmp_path):
    from mmit.data.processor import Processor
    from mmit.data.sample import Media, Sample, Turn

    big = _encoded("JPEG")
    sample = Sample("s", [Turn("user", "<image>\nWhat?"), Turn("assistant", "A.")],
                    [Media("image", data=big, ext="jpg")])
    pre = Processor()
    assert pre.image_draft() is None  # no image_transform: full decodes
    pre.image_transform = _transform(32, "crop")
    assert pre.image_draft() == Draft(32, "crop", 2.0)
    assert pre.decode_media(sample)[0].size == (200, 150)
    pre.jpeg_draft = None
    assert pre.image_draft() is None
    assert pre.decode_media(sample)[0].size == (1600, 1200)
    pre.jpeg_draft, pre.image_transform = 2.0, lambda images: images  # states no size: full decodes
    assert pre.image_draft() is None


# -- DataLoader workers: chunks in one message, the same batches as without workers ------------------
@pytest.mark.parametrize("pipe_bytes", [0, 1 << 20])
def test_pack_tensors_round_trips_nested_items_in_one_buffer_per_dtype(monkeypatch, pipe_bytes):
    """Every tensor of a chunk lands in one buffer per dtype (shared memory, or pipe bytes when small)
    and comes back equal, with its shape and dtype, inside the same structure."""
    import mmit.training.data as data
    import mmit.training.transport as transport

    monkeypatch.setattr(transport, "PIPE_BYTES", pipe_bytes)
    items = [(0, {"id": "a", "input_ids": torch.arange(5), "pixel_values": torch.rand(2, 3, 4, 4),
                  "media": [("video", torch.rand(1, 2, 3, 4, 4))], "none": None}, None),
             (1, None, "skip"),
             (2, {"id": "b", "input_ids": torch.arange(3).view(1, 3).t(), "half": torch.rand(2).bfloat16(),
                  "pixel_values": torch.empty(0, 3, 4, 4)}, None)]
    packed, buffers = data.pack_tensors(items)
    assert set(buffers) == {torch.long, torch.float32, torch.bfloat16}
    sizes = {torch.long: 8 * 8, torch.float32: (2 * 48 + 2 * 48) * 4, torch.bfloat16: 2 * 2}
    for dt, buf in buffers.items():
        if pipe_bytes:
            assert isinstance(buf, bytes) and len(buf) == sizes[dt]
        else:
            assert isinstance(buf, torch.Tensor) and buf.dtype == dt and buf.numel() * buf.element_size() == sizes[dt]
    out = data.unpack_tensors(packed, buffers)
    assert out[1] == (1, None, "skip") and out[0][1]["none"] is None and out[0][1]["id"] == "a"
    for got, want in ((out[0][1], items[0][1]), (out[2][1], items[2][1])):
        for key in ("input_ids", "pixel_values"):
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key])
    assert torch.equal(out[0][1]["media"][0][1], items[0][1]["media"][0][1])
    assert torch.equal(out[2][1]["half"], items[2][1]["half"])


@pytest.mark.parametrize("per_message", [1, 4])
def test_workers_give_the_same_batches_and_skips_as_the_main_process(tmp_path, per_message):
    """Chunked workers must not change the stream: same batches (ids and tensors), positions and skip
    counts with 0 and 2 workers, across an epoch boundary (the demo records include a missing image),
    with one batch or several (``data.batches_per_message``) per worker message."""
    from conftest import tiny_run_config
    from mmit.families import get_family
    from mmit.training.data import SampleStream, batches

    cfg = tiny_run_config(tmp_path)
    cfg.data.batches_per_message = per_message
    fam = get_family("llava")
    model, tok = fam.build(cfg)
    pre = fam.processor(cfg, model, tok)
    runs = []
    for workers in (0, 2):
        stream = SampleStream(cfg.data, 0)
        it = batches(stream, pre, 3, start_epoch=0, start_pos=4, num_workers=workers)
        out = [next(it) for _ in range(20)]  # 50 records from position 4: into epoch 1
        runs.append((out, stream.stats.as_dict()))
    (a, skips_a), (b, skips_b) = runs
    assert skips_a == skips_b and skips_a.get("missing-media", 0) >= 1
    assert {e for _, e, _ in a} == {0, 1}
    for (ba, ea, pa), (bb, eb, pb) in zip(a, b):
        assert (ba.ids, ea, pa) == (bb.ids, eb, pb)
        assert torch.equal(ba.input_ids, bb.input_ids) and torch.equal(ba.labels, bb.labels)
        ia, ib = ba.values("image"), bb.values("image")
        assert (ia is None and ib is None) or torch.equal(ia, ib)


def test_vectorised_pad_rows_matches_row_by_row_padding():
    from mmit.data.batch import pad_rows

    rows = [torch.tensor([3, 1, 4], dtype=torch.int32), torch.zeros(0, dtype=torch.long), torch.arange(5) + 10]
    for left in (False, True):
        out, mask = pad_rows(rows, -7, left)
        assert out.dtype == mask.dtype == torch.long and out.shape == mask.shape == (3, 5)
        for i, r in enumerate(rows):
            n = r.shape[0]
            keep = slice(5 - n, 5) if left else slice(0, n)
            assert out[i, keep].tolist() == r.tolist() and mask[i, keep].tolist() == [1] * n
            assert int(mask[i].sum()) == n and (out[i][mask[i] == 0] == -7).all()


class _SkipAll:
    """A processor whose every sample is a counted skip."""

    def try_call(self, sample, stats):
        stats.add("too-long-for-images", sample.id, "skipped")
        return None

    def collate(self, items):  # pragma: no cover - never reached
        raise AssertionError("nothing to collate")


@pytest.mark.parametrize("workers", [0, 2])
def test_all_skipped_raises_and_a_resume_at_the_epoch_end_goes_on(tmp_path, workers):
    from conftest import tiny_run_config
    from mmit.training.data import SampleStream, batches

    cfg = tiny_run_config(tmp_path)
    stream = SampleStream(cfg.data, 0)
    with pytest.raises(RuntimeError, match="epoch 0 produced no usable sample"):
        next(batches(stream, _SkipAll(), 4, num_workers=workers))
    assert stream.stats.as_dict()["too-long-for-images"] == len(stream)

    class Ids(_SkipAll):
        def try_call(self, sample, stats):
            return {"id": sample.id}

        def collate(self, items):
            return [it["id"] for it in items]

    stream = SampleStream(cfg.data, 0)
    n = len(stream)
    b, epoch, pos = next(batches(stream, Ids(), 4, start_epoch=0, start_pos=n, num_workers=workers))
    assert (epoch, pos, len(b)) == (1, 4, 4)  # the resumed epoch was over: the next one starts
    assert b == [s.id for s in list(stream.epoch(1))[:4]]

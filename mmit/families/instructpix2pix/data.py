"""InstructPix2Pix samples -> training batches.

Batch (:class:`~mmit.data.batch.Batch`): ``input_ids`` ``[B,L]`` (the edit prompt, padded to the CLIP
tokenizer's ``model_max_length``), ``media["image"]`` ``[B,3,R,R]`` (the input images, one per sample,
position -1: they condition the UNet, not the text), ``extra["edited_pixel_values"]`` ``[B,3,R,R]`` (the
targets); pixels in [-1, 1].

Sample convention (the ``instructpix2pix`` reader and :mod:`mmit.families.instructpix2pix.triples` write it)::

    media = [Media("image", meta={"role": "input"}), Media("image", meta={"role": "edited"})]
    turns = [Turn("user", "<image>\\n" + edit_prompt), Turn("assistant", "<image>")]
    task = "image-editing", source = "instructpix2pix"

Both images get the SAME resize, crop and flip (DATASETS.md §8 pitfall), as in the diffusers example,
which transforms the channel-stacked pair.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from PIL import Image

from mmit.constants import IMAGE_PLACEHOLDER
from mmit.data.batch import Batch, MediaTensors
from mmit.data.media import MAX_PIXELS, decode_image, read_media_bytes
from mmit.data.processor import Processor
from mmit.data.sample import Media, Sample, SampleError

TASK = "image-editing"


def edit_parts(sample: Sample) -> Tuple[Media, Media, str]:
    """``(input media, edited media, edit prompt)`` of an editing sample.

    The images are picked by ``meta["role"]`` (``input`` / ``edited``), else by position (first image
    input, second edited). The prompt is the user turn with ``<image>`` removed and whitespace stripped.
    Raises :class:`SampleError` naming the sample id (reasons ``not-an-edit-pair``, ``no-edit-prompt``).
    """
    images = [m for m in sample.media if m.kind == "image"]
    by_role = {m.meta.get("role"): m for m in images if isinstance(m.meta, dict)}
    if "input" in by_role and "edited" in by_role:
        src, dst = by_role["input"], by_role["edited"]
    elif len(images) == 2:
        src, dst = images
    else:
        raise SampleError(f"sample {sample.id!r}: an edit needs an input and an edited image, got "
                          f"{len(images)} image(s) with roles {sorted(map(str, by_role))}", "not-an-edit-pair")
    users = [t.content for t in sample.turns if t.role == "user"]
    prompt = users[0].replace(IMAGE_PLACEHOLDER, " ").strip() if users else ""
    if not prompt:
        raise SampleError(f"sample {sample.id!r}: no edit instruction in the user turn", "no-edit-prompt")
    return src, dst, " ".join(prompt.split())


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> FloatTensor ``[3, H, W]`` in [0, 1]."""
    from torchvision.transforms.v2.functional import pil_to_tensor as to_t

    return to_t(image).float().div_(255.0)


class EditProcessor(Processor):
    """Sample -> ``{"id", "input_pixel_values" [3,R,R], "edited_pixel_values" [3,R,R], "input_ids" [L]}``.

    Pixel values are float32 in [-1, 1]; ``R`` is ``resolution``; ``L`` the tokenizer's
    ``model_max_length``. The pair is resized on its short side to ``R`` (bilinear, antialiased), cropped
    to ``R x R`` (centre or random) and flipped with probability 0.5 when ``random_flip``; an edited
    image of another size than the input is first resized to the input's size. Randomness comes from
    torch's global RNG (restored on resume). Picklable (DataLoader workers).

    ``overflow``: ``skip`` (``try_call`` counts a :class:`SampleError` and returns None) or ``error``.
    """

    def __init__(self, tokenizer, resolution: int, center_crop: bool = False, random_flip: bool = True,
                 overflow: str = "skip", max_pixels: int = MAX_PIXELS):
        if resolution <= 0:
            raise ValueError(f"model.resolution must be positive, got {resolution}")
        self.tokenizer, self.resolution = tokenizer, int(resolution)
        self.center_crop, self.random_flip = center_crop, random_flip
        self.overflow, self.max_pixels = overflow, max_pixels

    def _image(self, sample: Sample, m: Media) -> Image.Image:
        data = m.data if m.data is not None else read_media_bytes(m.path)
        return decode_image(data, f"sample {sample.id!r} ({m.path or m.meta.get('role')})", self.max_pixels)

    def transform_pair(self, src: Image.Image, dst: Image.Image) -> torch.Tensor:
        """Two PIL images -> FloatTensor ``[2, 3, R, R]`` in [-1, 1] with one shared crop and flip."""
        import torchvision.transforms.v2.functional as TF

        if dst.size != src.size:
            dst = dst.resize(src.size, Image.BICUBIC)
        pair = torch.stack([pil_to_tensor(src), pil_to_tensor(dst)])
        r = self.resolution
        pair = TF.resize(pair, [r], antialias=True)
        h, w = pair.shape[-2:]
        if self.center_crop:
            pair = TF.center_crop(pair, [r, r])
        else:
            top = int(torch.randint(0, h - r + 1, ()).item())
            left = int(torch.randint(0, w - r + 1, ()).item())
            pair = pair[..., top:top + r, left:left + r]
        if self.random_flip and bool(torch.rand(()) < 0.5):
            pair = pair.flip(-1)
        return pair.clamp(0, 1).mul(2).sub(1).contiguous()

    def __call__(self, sample: Sample) -> Dict[str, Any]:
        """Raises :class:`SampleError` (``not-an-edit-pair``, ``no-edit-prompt``, ``undecodable-image``,
        ...) naming the sample id; ``FileNotFoundError`` for a missing media path is turned into
        ``missing-media``."""
        src, dst, prompt = edit_parts(sample)
        try:
            pair = self.transform_pair(self._image(sample, src), self._image(sample, dst))
        except FileNotFoundError as e:
            raise SampleError(f"sample {sample.id!r}: {e}", "missing-media") from None
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids[0]
        return {"id": sample.id, "input_pixel_values": pair[0], "edited_pixel_values": pair[1], "input_ids": ids}


    def collate(self, items: List[Dict[str, Any]]) -> Batch:
        """Stack items into the batch of the module docstring. Raises ``ValueError`` on no items."""
        return collate_edits(items)


def collate_edits(items: List[Dict[str, Any]]) -> Batch:
    """Stack preprocessed items (module docstring for the layout). Raises ``ValueError`` on an empty list."""
    if not items:
        raise ValueError("collate_edits() got no items (every sample of the batch was skipped?)")
    ids = torch.stack([it["input_ids"] for it in items])
    B = len(items)
    images = MediaTensors(torch.stack([it["input_pixel_values"] for it in items]), torch.arange(B),
                          torch.full((B,), -1, dtype=torch.long))
    return Batch(ids=[str(it["id"]) for it in items], input_ids=ids, attention_mask=torch.ones_like(ids),
                 media={"image": images},
                 extra={"edited_pixel_values": torch.stack([it["edited_pixel_values"] for it in items])})

"""From a :class:`~mmit.data.sample.Sample` to model inputs, and batches of them.

:class:`SamplePreprocessor` decodes the images, renders the conversation template with labels, and
expands every ``<image>`` token into the vision tower's ``num_image_tokens`` copies. Image tokens
are budgeted before truncating: text after the last image may be cut to ``max_length``, but an
image span is never cut and never dropped (LLaVA truncates after splicing and can cut an image in
half); a sample whose images cannot all fit is an error or a counted skip.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from mmit.constants import IGNORE_INDEX
from mmit.data.media import MAX_PIXELS, decode_image, read_media_bytes
from mmit.data.sample import Sample, SampleError
from mmit.templates.labels import encode_conversation


def expand_image_tokens(ids: List[int], labels: Optional[List[int]], image_token_id: int, n: int):
    """Repeat every ``image_token_id`` ``n`` times: the layout MultimodalLM and transformers' Llava
    splice image features into. Labels there become IGNORE_INDEX.

    Returns ``(ids, labels or None, end)`` where ``end`` is the index just past the last image span
    (0 when there is none).
    """
    out_ids: List[int] = []
    out_labels: List[int] = []
    end = 0
    for j, t in enumerate(ids):
        if t == image_token_id:
            out_ids.extend([t] * n)
            out_labels.extend([IGNORE_INDEX] * n)
            end = len(out_ids)
        else:
            out_ids.append(t)
            out_labels.append(labels[j] if labels is not None else IGNORE_INDEX)
    return out_ids, (out_labels if labels is not None else None), end


class CountingPreprocessor:
    """Base of every family's preprocessor: ``self(sample)`` raises :class:`SampleError`;
    :meth:`try_call` turns that into a counted skip. Subclasses set ``self.overflow``."""

    overflow: str = "skip"

    def try_call(self, sample: Sample, stats) -> Optional[Dict[str, object]]:
        """``self(sample)``; under ``overflow='skip'`` a SampleError is counted in ``stats`` (by its
        reason) and None returned, under ``'error'`` it propagates."""
        try:
            return self(sample)
        except SampleError as e:
            if self.overflow == "error":
                raise
            stats.add(e.reason, sample.id, str(e))
            return None


class SamplePreprocessor(CountingPreprocessor):
    """Sample -> ``{"id", "input_ids" [T], "labels" [T], "pixel_values" [n_img,3,H,W] or None}``.

    Args:
        tokenizer: fast tokenizer with ``<image>`` as one token.
        template: conversation template name.
        image_transform: ``list[PIL.Image] -> FloatTensor [n,3,H,W]`` (the tower's ``image_processor``).
        num_image_tokens: N, tokens per image in the LLM sequence.
        image_token_id: id of ``<image>``.
        max_length: token budget per sample, image tokens included.
        overflow: ``skip`` (``try_call`` counts and returns None) or ``error`` (``try_call`` raises).
    Picklable (used in DataLoader workers).
    """

    def __init__(self, tokenizer, template: str, image_transform: Callable, num_image_tokens: int,
                 image_token_id: int, max_length: int, overflow: str = "skip", max_pixels: int = MAX_PIXELS):
        if overflow not in ("skip", "error"):
            raise ValueError(f"data.overflow must be skip or error, not {overflow!r}")
        self.tokenizer, self.template, self.image_transform = tokenizer, template, image_transform
        self.num_image_tokens, self.image_token_id = int(num_image_tokens), int(image_token_id)
        self.max_length, self.overflow, self.max_pixels = int(max_length), overflow, max_pixels

    def _images(self, sample: Sample):
        images = []
        for m in sample.media:
            if m.kind != "image":
                raise SampleError(f"sample {sample.id!r}: media kind {m.kind!r} is not supported by this model",
                                  "unsupported-media")
            data = m.data if m.data is not None else read_media_bytes(m.path)
            images.append(decode_image(data, f"sample {sample.id!r} ({m.path})", self.max_pixels))
        return images

    def __call__(self, sample: Sample) -> Dict[str, object]:
        """Raises SampleError (reasons: ``undecodable-image``, ``image-count-mismatch``,
        ``too-long-for-images``, ``no-supervised-tokens``, ``label-misaligned``, ...) naming the id."""
        sample.validate()
        ids, labels = encode_conversation(self.tokenizer, sample.turns, self.template, sample.id)
        ids, labels, last_end = expand_image_tokens(ids, labels, self.image_token_id, self.num_image_tokens)
        if len(ids) > self.max_length:
            if last_end > self.max_length:
                n_img = sum(1 for m in sample.media if m.kind == "image")
                raise SampleError(
                    f"sample {sample.id!r}: {n_img} image(s) x {self.num_image_tokens} tokens end at token "
                    f"{last_end}, beyond max_length {self.max_length} (full length {len(ids)}); images are never cut",
                    "too-long-for-images")
            ids, labels = ids[:self.max_length], labels[:self.max_length]
        if all(l == IGNORE_INDEX for l in labels):
            raise SampleError(f"sample {sample.id!r}: no supervised token left after truncation to "
                              f"{self.max_length} tokens", "no-supervised-tokens")
        images = self._images(sample)
        pixel_values = self.image_transform(images) if images else None
        return {"id": sample.id, "input_ids": torch.tensor(ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long), "pixel_values": pixel_values}


def collate(items: List[Dict[str, object]], pad_token_id: int) -> Dict[str, object]:
    """Right-pad a list of preprocessed items into a batch.

    Returns ``input_ids`` LongTensor [B,T], ``attention_mask`` LongTensor [B,T] (1 = token),
    ``labels`` LongTensor [B,T] (IGNORE_INDEX on padding), ``pixel_values`` FloatTensor
    [sum n_img,3,H,W] in sample order (None when no sample has an image), ``ids`` list[str],
    ``num_images`` list[int]. Raises ``ValueError`` on an empty list (every sample of a batch was
    skipped: the loader must drop such a batch, not hand the model a [0,0] tensor).
    """
    if not items:
        raise ValueError("collate() got no items (every sample of the batch was skipped?)")
    T = max(int(it["input_ids"].shape[0]) for it in items)
    B = len(items)
    input_ids = torch.full((B, T), int(pad_token_id), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    pixels, counts = [], []
    for i, it in enumerate(items):
        n = int(it["input_ids"].shape[0])
        input_ids[i, :n] = it["input_ids"]
        labels[i, :n] = it["labels"]
        mask[i, :n] = 1
        pv = it.get("pixel_values")
        counts.append(0 if pv is None else int(pv.shape[0]))
        if pv is not None:
            pixels.append(pv)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "pixel_values": torch.cat(pixels) if pixels else None,
            "ids": [str(it["id"]) for it in items], "num_images": counts}

"""LLaVA samples and prompts -> typed batches (:class:`~mmit.data.processor.Processor`).

The conversation template renders the turns with per-turn labels (:mod:`mmit.templates.labels`),
and every ``<image>`` token is expanded into the vision tower's ``num_image_tokens`` copies. Image
tokens are budgeted before truncating: text after the last image may be cut to ``max_length``, but
an image span is never cut and never dropped (LLaVA truncates after splicing and can cut an image in
half); a sample whose images cannot all fit is an error or a counted skip.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from mmit.constants import IGNORE_INDEX
from mmit.data.batch import Batch, media_tensors, pad_rows, span_starts
from mmit.data.collate import expand_image_tokens, truncate_keeping_media
from mmit.data.media import MAX_PIXELS
from mmit.data.processor import Processor, require_images
from mmit.data.sample import Sample, Turn
from mmit.templates import stop_token_ids
from mmit.templates.labels import answer_ids_in_context, encode_conversation, encode_prompt


class LlavaProcessor(Processor):
    """Sample -> ``{"id", "input_ids" [T], "labels" [T], "pixel_values" [n_img,3,H,W] or None}``;
    items -> :class:`~mmit.data.batch.Batch` with ``media["image"]`` ``[I,3,H,W]`` and no extras.

    Args:
        tokenizer: fast tokenizer with ``<image>`` as one token.
        template: conversation template name.
        image_transform: ``list[PIL.Image] -> FloatTensor [n,3,H,W]`` (the tower's ``image_processor``).
        num_image_tokens: N, tokens per image in the LLM sequence.
        image_token_id: id of ``<image>``.
        max_length: token budget per sample, image tokens included.
        overflow: ``skip`` (``try_call`` counts and returns None) or ``error`` (``try_call`` raises).
    Picklable (used in DataLoader workers); holds nothing but these arguments. Media: images only.
    """

    family = "the llava family"

    def __init__(self, tokenizer, template: str, image_transform: Callable, num_image_tokens: int,
                 image_token_id: int, max_length: int, overflow: str = "skip", max_pixels: int = MAX_PIXELS):
        self.tokenizer, self.template, self.image_transform = tokenizer, template, image_transform
        self.num_image_tokens, self.image_token_id = int(num_image_tokens), int(image_token_id)
        self.max_length, self.overflow, self.max_pixels = int(max_length), overflow, max_pixels

    def _images(self, sample: Sample):
        """The sample's images (:meth:`~mmit.data.processor.Processor.decode_media`: images only;
        ``unsupported-media`` for video/audio, ``missing-media`` for an unreadable file)."""
        return self.decode_media(sample)

    def __call__(self, sample: Sample) -> Dict[str, Any]:
        """Raises SampleError (reasons: ``undecodable-image``, ``image-count-mismatch``,
        ``too-long-for-images``, ``no-supervised-tokens``, ``label-misaligned``, ...) naming the id."""
        sample.validate()
        ids, labels = encode_conversation(self.tokenizer, sample.turns, self.template, sample.id)
        ids, labels, last_end = expand_image_tokens(ids, labels, self.image_token_id, self.num_image_tokens)
        n_img = sum(1 for m in sample.media if m.kind == "image")
        ids, labels = truncate_keeping_media(ids, labels, last_end, self.max_length, sample.id,
                                             f"{n_img} image(s) x {self.num_image_tokens} tokens")
        images = self._images(sample)
        pixel_values = self.image_transform(images) if images else None
        return {"id": sample.id, "input_ids": long_tensor(ids), "labels": long_tensor(labels),
                "pixel_values": pixel_values}

    def _batch(self, items: Sequence[Dict[str, Any]], left: bool) -> Batch:
        input_ids, mask = pad_rows([it["input_ids"] for it in items], self.tokenizer.pad_token_id, left)
        labels = None
        if all("labels" in it for it in items):
            labels, _ = pad_rows([it["labels"] for it in items], IGNORE_INDEX, left)
        pixels = [it["pixel_values"] for it in items if it.get("pixel_values") is not None]
        values = cat_adjacent(pixels) if pixels else None
        media = {}
        if values is not None:
            media["image"] = media_tensors(values, span_starts(input_ids, self.image_token_id, self.num_image_tokens))
        return Batch(ids=[str(it["id"]) for it in items], input_ids=input_ids, attention_mask=mask,
                     labels=labels, media=media)

    def collate(self, items: Sequence[Dict[str, Any]]) -> Batch:
        """Right-pad items: ``input_ids``/``attention_mask``/``labels`` ``[B,T]`` (-100 on padding),
        ``media["image"]`` ``[I,3,H,W]`` in sample order. Raises ``ValueError`` on no items."""
        return self._batch(items, left=False)

    def collate_packed(self, rows: Sequence[Sequence[Dict[str, Any]]]) -> Batch:
        """Pack items several to a row (``data.packing``, :mod:`mmit.training.batching`): each row is
        its items' tokens back to back, right-padded to the longest row.

        ``input_ids`` / ``attention_mask`` / ``labels`` ``[R,T]`` (labels -100 on padding and on each
        item's first token: nothing is predicted across a sample boundary); ``extra["position_ids"]``
        ``[R,T]`` restarting at 0 for every item (the model builds a block-diagonal causal mask from
        them); ``media["image"]`` in row then token order, ``sample_index`` the row; ``ids`` one per
        row, the items' ids joined with ``+``. Raises ``ValueError`` on no rows or an empty row.
        """
        from mmit.training.batching import pack_sequences

        input_ids, mask, labels, position_ids = pack_sequences(
            [[(it["input_ids"], it.get("labels")) for it in row] for row in rows], self.tokenizer.pad_token_id)
        pixels = [it["pixel_values"] for row in rows for it in row if it.get("pixel_values") is not None]
        media = {}
        if pixels:
            media["image"] = media_tensors(cat_adjacent(pixels),
                                           span_starts(input_ids, self.image_token_id, self.num_image_tokens))
        return Batch(ids=["+".join(str(it["id"]) for it in row) for row in rows], input_ids=input_ids,
                     attention_mask=mask, labels=labels, media=media, extra={"position_ids": position_ids})

    # -- inference ---------------------------------------------------------------------------------
    def prompt(self, turns: Sequence[Turn], media: Sequence[Any] = (), sample_id: str = "prompt") -> Dict[str, Any]:
        """The prompt's ids (template + generation prompt, ``<image>`` expanded) and its images:
        ``media`` are PIL images in placeholder order (``ValueError`` for video or audio)."""
        images = require_images(media, "llava")
        ids = encode_prompt(self.tokenizer, turns, self.template)
        expanded, _, _ = expand_image_tokens(ids, None, self.image_token_id, self.num_image_tokens)
        return {"id": sample_id, "input_ids": torch.tensor(expanded, dtype=torch.long), "raw_ids": ids,
                "pixel_values": self.image_transform(list(images)) if images else None}

    def collate_prompts(self, items: Sequence[Dict[str, Any]]) -> Batch:
        return self._batch([{k: v for k, v in it.items() if k != "labels"} for it in items], left=True)

    def candidate_ids(self, turns: Sequence[Turn], candidate: str, score_end_of_turn: bool,
                      item: Optional[Dict[str, Any]] = None, sample_id: str = "prompt") -> List[int]:
        """In-context answer tokens (:func:`mmit.templates.labels.answer_ids_in_context`)."""
        return answer_ids_in_context(self.tokenizer, turns, self.template, candidate, score_end_of_turn,
                                     None if item is None else item["raw_ids"], sample_id)

    def stop_token_ids(self) -> List[int]:
        return stop_token_ids(self.tokenizer, self.template)


def long_tensor(values: Sequence[int]) -> torch.Tensor:
    """``torch.tensor(values, dtype=torch.long)`` for a list of Python ints, about 4x faster for the
    ~600-token rows of a LLaVA sample (through a packed ``array('q')``: one C loop, no per-element
    type dispatch). Raises ``OverflowError`` for an int beyond int64."""
    from array import array

    if not values:
        return torch.empty(0, dtype=torch.long)
    return torch.frombuffer(array("q", values), dtype=torch.long)


def cat_adjacent(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors)`` (dim 0), without the copy when the tensors are already back to back in
    one storage (contiguous, same dtype and trailing shape, each starting where the previous ends), as
    the items of one DataLoader chunk are (:func:`mmit.training.transport.unpack_tensors`): a view of that
    storage then, equal in values, shape and dtype. Raises what ``torch.cat`` raises (e.g. on [])."""
    first = tensors[0] if tensors else None
    if first is None or not first.is_contiguous() or first.layout != torch.strided:
        return torch.cat(list(tensors))
    storage, offset = first.untyped_storage(), first.storage_offset()
    for t in tensors:
        if (t.dtype != first.dtype or t.device != first.device or t.shape[1:] != first.shape[1:]
                or not t.is_contiguous() or t.untyped_storage().data_ptr() != storage.data_ptr()
                or t.storage_offset() != offset):
            return torch.cat(list(tensors))
        offset += t.numel()
    rows = sum(int(t.shape[0]) for t in tensors)
    return first.new_empty(0).set_(storage, first.storage_offset(), (rows,) + tuple(first.shape[1:]))


"""Splice layout helpers shared by families that put media tokens into the LLM sequence."""

from __future__ import annotations

from typing import List, Optional

from mmit.constants import IGNORE_INDEX


def expand_image_tokens(ids: List[int], labels: Optional[List[int]], image_token_id: int, n: int):
    """Repeat every ``image_token_id`` ``n`` times: the layout LLaVA's model and transformers' Llava
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


def truncate_keeping_media(ids: List[int], labels: List[int], media_end: int, max_length: int,
                           sample_id: str, media: str):
    """``(ids, labels)`` cut to ``max_length`` tokens, never inside a media span.

    ``media_end``: index just past the last media span (from :func:`expand_image_tokens`); ``media``
    describes the media in the error (e.g. ``"2 image(s) x 576 tokens"``).

    Raises :class:`~mmit.data.sample.SampleError`: ``too-long-for-images`` when the media end beyond
    ``max_length`` (a span is never cut, unlike LLaVA, which can cut an image in half), and
    ``no-supervised-tokens`` when no label is left after the cut.
    """
    from mmit.data.sample import SampleError

    if len(ids) > max_length:
        if media_end > max_length:
            raise SampleError(f"sample {sample_id!r}: {media} end at token {media_end}, beyond max_length "
                              f"{max_length} (full length {len(ids)}); media spans are never cut",
                              "too-long-for-images")
        ids, labels = ids[:max_length], labels[:max_length]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise SampleError(f"sample {sample_id!r}: no supervised token left after truncation to {max_length} tokens",
                          "no-supervised-tokens")
    return ids, labels

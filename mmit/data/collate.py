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

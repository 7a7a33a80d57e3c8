"""The typed batch every family's processor produces and every family's model consumes.

A :class:`Batch` holds the text side (``input_ids``, ``attention_mask``, ``labels``), the media by
kind (:class:`MediaTensors`: the tensor, the sample each item belongs to and where its span starts
in the text) and a family's own extra tensors (e.g. the Q-Former's instruction ids). Shapes:
B samples, T tokens, I images, V videos, F frames per video, A audio clips.

==========  =====================================  ==============================================
kind        ``values``                             ``position``
==========  =====================================  ==============================================
image       FloatTensor ``[I,3,H,W]``              first token of the image's span in ``input_ids``
video       FloatTensor ``[V,F,3,H,W]``            first token of the video's span
audio       FloatTensor ``[A,...]`` (the encoder's  first token of the clip's span
            own input layout)
==========  =====================================  ==============================================

``position`` is ``-1`` for media that has no span in the token sequence (cross-attention fusion:
the decoder reads the media through its own blocks). Media items are ordered by sample, then by
position, which is the order their placeholders appear in the sample's turns.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Optional, Sequence

import torch

from mmit.constants import IGNORE_INDEX


@dataclass
class MediaTensors:
    """The media of one kind in a batch (module docstring for the layouts).

    values: FloatTensor ``[n, ...]``; sample_index: LongTensor ``[n]`` (row of the batch each item
    belongs to); position: LongTensor ``[n]`` (index in ``input_ids`` where its span starts, -1 when
    it has none).
    """

    values: torch.Tensor
    sample_index: torch.Tensor
    position: torch.Tensor

    def __post_init__(self):
        n = int(self.values.shape[0])
        if self.sample_index.shape != (n,) or self.position.shape != (n,):
            raise ValueError(f"MediaTensors: values hold {n} item(s) but sample_index has shape "
                             f"{tuple(self.sample_index.shape)} and position {tuple(self.position.shape)}")

    def to(self, device, non_blocking: bool = False) -> "MediaTensors":
        return MediaTensors(*(t.to(device, non_blocking=non_blocking)
                              for t in (self.values, self.sample_index, self.position)))

    def pin_memory(self) -> "MediaTensors":
        return MediaTensors(self.values.pin_memory(), self.sample_index.pin_memory(), self.position.pin_memory())

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass
class Batch:
    """One batch (module docstring).

    ids: the sample ids, list[str] of length B.
    input_ids, attention_mask: LongTensor ``[B,T]`` (1 = token, 0 = padding; training batches are
        right-padded, prompt batches for inference left-padded).
    labels: LongTensor ``[B,T]`` (decoder-only) or ``[B,T_dec]`` (encoder-decoder), ``-100`` where no
        loss is taken; None for prompts.
    media: kind -> :class:`MediaTensors` (only kinds present in the batch).
    extra: family-specific tensors (documented by the family's processor).
    """

    ids: List[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: Optional[torch.Tensor] = None
    media: Dict[str, MediaTensors] = field(default_factory=dict)
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        B = len(self.ids)
        if self.input_ids.dim() != 2 or self.input_ids.shape[0] != B:
            raise ValueError(f"Batch: input_ids must be [B={B}, T], got {tuple(self.input_ids.shape)}")
        if self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(f"Batch: attention_mask {tuple(self.attention_mask.shape)} != input_ids "
                             f"{tuple(self.input_ids.shape)}")

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on ``device`` (``non_blocking``: asynchronous copies from pinned
        memory, as ``Tensor.to``)."""
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, input_ids=mv(self.input_ids), attention_mask=mv(self.attention_mask),
                       labels=mv(self.labels),
                       media={k: m.to(device, non_blocking) for k, m in self.media.items()},
                       extra={k: mv(v) for k, v in self.extra.items()})

    def pin_memory(self) -> "Batch":
        """A copy with every tensor in page-locked (pinned) host memory, for asynchronous copies to
        a CUDA device; needs a CUDA build with a device (``Tensor.pin_memory``)."""
        pin = lambda t: t.pin_memory() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return replace(self, input_ids=pin(self.input_ids), attention_mask=pin(self.attention_mask),
                       labels=pin(self.labels), media={k: m.pin_memory() for k, m in self.media.items()},
                       extra={k: pin(v) for k, v in self.extra.items()})

    def values(self, kind: str) -> Optional[torch.Tensor]:
        """``media[kind].values`` or None when the batch has no media of that kind."""
        m = self.media.get(kind)
        return None if m is None else m.values

    def count(self, kind: str) -> List[int]:
        """Media items of ``kind`` per sample, list[int] of length B."""
        out = [0] * len(self.ids)
        m = self.media.get(kind)
        if m is not None:
            for i in m.sample_index.tolist():
                out[i] += 1
        return out

    @property
    def size(self) -> int:
        return len(self.ids)

    def describe(self) -> Dict[str, tuple]:
        """Field -> shape, for logs and tests."""
        out = {f.name: tuple(getattr(self, f.name).shape) for f in fields(self)
               if isinstance(getattr(self, f.name), torch.Tensor)}
        out.update({f"media.{k}": tuple(m.values.shape) for k, m in self.media.items()})
        out.update({f"extra.{k}": tuple(v.shape) for k, v in self.extra.items()})
        return out


def pad_rows(rows: Sequence[torch.Tensor], value: int, left: bool = False):
    """Pad 1-D LongTensors to ``[len(rows), T_max]``; returns ``(padded, mask)`` (mask 1 = token).
    ``left`` pads on the left (prompts for generation). Raises ``ValueError`` on no rows."""
    if not rows:
        raise ValueError("got no items to batch (every sample of the batch was skipped?)")
    from torch.nn.utils.rnn import pad_sequence

    # one C++ call instead of a copy per row (this runs in the trainer's process for every batch)
    out = pad_sequence([r.reshape(-1).long() for r in rows], batch_first=True, padding_value=int(value),
                       padding_side="left" if left else "right")
    lengths = torch.tensor([int(r.shape[0]) for r in rows], dtype=torch.long)[:, None]
    pos = torch.arange(out.shape[1], dtype=torch.long)
    mask = (pos >= out.shape[1] - lengths) if left else (pos < lengths)
    return out, mask.long()


def span_starts(input_ids: torch.Tensor, token_id: int, span: int) -> List[tuple]:
    """``(row, start)`` of every run of ``span`` copies of ``token_id`` in ``input_ids [B,T]``, in row
    then position order (a run of k x span tokens counts as k spans). Vectorised (it runs in every
    collate). Raises ``ValueError`` for a run whose length is not a multiple of ``span``."""
    is_tok = input_ids == token_id
    if not bool(is_tok.any()):
        return []
    T = input_ids.shape[1]
    pos = torch.arange(T, device=input_ids.device).expand_as(input_ids)
    prev = torch.cat([torch.zeros_like(is_tok[:, :1]), is_tok[:, :-1]], dim=1)
    nxt = torch.cat([is_tok[:, 1:], torch.zeros_like(is_tok[:, :1])], dim=1)
    run_start = torch.where(is_tok & ~prev, pos, torch.zeros_like(pos)).cummax(dim=1).values
    offset = pos - run_start
    bad = (is_tok & ~nxt & ((offset + 1) % span != 0)).nonzero()
    if bad.shape[0]:
        b, t = (int(v) for v in bad[0])
        start = int(run_start[b, t])
        raise ValueError(f"row {b}: a run of {t + 1 - start} media tokens at {start} is not a multiple of {span}")
    return [tuple(x) for x in (is_tok & (offset % span == 0)).nonzero().tolist()]


def media_tensors(values: Optional[torch.Tensor], spans: Sequence[tuple]) -> Optional[MediaTensors]:
    """:class:`MediaTensors` from stacked ``values`` and their ``(row, start)`` spans (None when no media)."""
    if values is None:
        return None
    return MediaTensors(values, torch.tensor([r for r, _ in spans], dtype=torch.long).reshape(-1),
                        torch.tensor([s for _, s in spans], dtype=torch.long).reshape(-1))


def has_supervision(labels: Optional[torch.Tensor]) -> bool:
    """Whether ``labels`` holds at least one supervised (non ``-100``) token."""
    return labels is not None and bool((labels != IGNORE_INDEX).any())

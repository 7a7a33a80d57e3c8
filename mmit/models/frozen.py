"""What every media encoder shares (vision towers, audio encoders): frozen by ``requires_grad``, the
dtype and device of its weights, and running without autograd while frozen."""

from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import nn


class MediaEncoder(nn.Module):
    """Base of :class:`~mmit.models.encoders.base.VisionTower` and
    :class:`~mmit.models.audio.base.AudioEncoder`. Subclasses define ``num_tokens`` and ``hidden_size``."""

    num_tokens: int
    hidden_size: int

    @property
    def frozen(self) -> bool:
        """True when no parameter requires grad (the trainer freezes with ``requires_grad_``)."""
        return not any(p.requires_grad for p in self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def feature_shape(self) -> Tuple[int, int]:
        """``(num_tokens, hidden_size)``: the output shape per medium."""
        return self.num_tokens, self.hidden_size

    def encode_with(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` with ``x`` moved to the encoder's device and dtype, without autograd when frozen."""
        x = x.to(device=self.device, dtype=self.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return fn(x)

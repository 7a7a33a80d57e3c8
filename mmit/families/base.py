"""The contract between the shared trainer and one model family (see :mod:`mmit.families`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn


class ModelFamily:
    """Hooks the trainer calls, in this order: :meth:`build`, :meth:`apply_stage`,
    :meth:`preprocessor` (per sample, possibly in DataLoader workers), :meth:`collate` (per batch),
    :meth:`loss` (per micro-batch), :meth:`count` (throughput), :meth:`on_step_end` (after each
    optimizer step), :meth:`save_extra` / :meth:`load_extra` (with every checkpoint).

    Subclasses override the abstract methods; the hooks after ``count`` default to doing nothing.
    """

    #: The unit :meth:`count` returns, for ``<unit>_per_s`` in the metrics (``tokens``, ``images``).
    unit: str = "tokens"

    def build(self, cfg, dtype: torch.dtype = torch.float32) -> Tuple[nn.Module, Any]:
        """``(model, tokenizer)`` from a :class:`~mmit.config.schema.RunConfig` (weights by hub id or
        local path). The tokenizer is saved with each checkpoint (``save_pretrained``)."""
        raise NotImplementedError

    def apply_stage(self, model: nn.Module, cfg) -> Dict[str, bool]:
        """Set ``requires_grad`` for ``cfg.train.stage``; returns top-level module -> trains."""
        raise NotImplementedError

    def parameter_modules(self, model: nn.Module) -> List[str]:
        """Top-level module names for the parameter table in ``train.log``."""
        return [n for n, _ in model.named_children()]

    def preprocessor(self, cfg, model: nn.Module, tokenizer):
        """A picklable callable ``Sample -> item dict`` with ``try_call(sample, stats)`` that counts a
        :class:`~mmit.data.sample.SampleError` under its reason (``data.overflow: skip``) and returns None."""
        raise NotImplementedError

    def collate(self, items: List[Dict[str, Any]], tokenizer) -> Dict[str, Any]:
        """Stack preprocessed items into a batch dict (tensors plus ``ids``: the sample ids)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Dict[str, Any]) -> torch.Tensor:
        """Scalar training loss for a batch already on the model's device."""
        raise NotImplementedError

    def count(self, batch: Dict[str, Any]) -> int:
        """Units of work in a batch (see :attr:`unit`)."""
        raise NotImplementedError

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Called after every optimizer step (e.g. an EMA update)."""

    def save_extra(self, model: nn.Module, ckpt_dir: Path) -> None:
        """Write family-specific state (e.g. EMA weights) into a checkpoint folder."""

    def load_extra(self, model: nn.Module, ckpt_dir: Path) -> None:
        """Read what :meth:`save_extra` wrote (a missing file is not an error: older checkpoints)."""

"""AdamW over the family's parameter groups (each split into decayed / not decayed) and the lr schedule."""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from mmit.config.schema import TrainConfig

NamedGroups = Dict[str, tuple]


def param_groups(groups: NamedGroups, cfg: TrainConfig) -> List[dict]:
    """Optimizer groups from the family's ``name -> (named parameters, lr or None[, weight decay or None])``:
    each split by decay; 1-D tensors (biases, norm weights) get no weight decay, as in LLaVA's / HF
    Trainer's ``get_decay_parameter_names``; a group's own weight decay (e.g. 0 for embeddings) replaces
    ``train.weight_decay``. Raises ``ValueError`` when nothing trains."""
    out = []
    for name in sorted(groups):
        named, lr, *rest = groups[name]
        wd = cfg.weight_decay if not rest or rest[0] is None else rest[0]
        for decay in (True, False):
            params = [p for _, p in named if p.requires_grad and (p.ndim >= 2) == decay]
            if params:
                out.append({"params": params, "lr": cfg.lr if lr is None else lr,
                            "weight_decay": wd if decay else 0.0,
                            "name": name + ("" if decay else "-no-decay")})
    if not out:
        raise ValueError("no trainable parameters: check train.stage")
    return out


def build_optimizer(groups: NamedGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(groups, cfg), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warmup over ``ceil(warmup_ratio * total_steps)`` steps, then cosine to 0 (or constant)."""
    warmup = int(-(-cfg.warmup_ratio * total_steps // 1))
    if cfg.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)

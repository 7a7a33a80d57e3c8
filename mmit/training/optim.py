"""AdamW with parameter groups (projector lr, no decay on biases and norms) and the lr schedule."""

from __future__ import annotations

from typing import List

import torch
from torch import nn
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from mmit.config.schema import TrainConfig


def param_groups(model: nn.Module, cfg: TrainConfig) -> List[dict]:
    """Trainable parameters split by (projector or not) x (decayed or not). 1-D tensors (biases,
    norm weights) get no weight decay, as in LLaVA's / HF Trainer's ``get_decay_parameter_names``."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_proj = name.startswith("projector.")
        decay = p.ndim >= 2
        lr = cfg.projector_lr if (is_proj and cfg.projector_lr is not None) else cfg.lr
        key = (is_proj, decay)
        g = groups.setdefault(key, {"params": [], "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0,
                                    "name": ("projector" if is_proj else "model") + ("" if decay else "-no-decay")})
        g["params"].append(p)
    if not groups:
        raise ValueError("no trainable parameters: check train.stage")
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warmup over ``ceil(warmup_ratio * total_steps)`` steps, then cosine to 0 (or constant)."""
    warmup = int(-(-cfg.warmup_ratio * total_steps // 1))
    if cfg.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if cfg.lr_scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"unknown train.lr_scheduler {cfg.lr_scheduler!r} (expected cosine or constant)")

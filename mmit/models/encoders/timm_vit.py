"""timm Vision Transformer towers (ViT: Dosovitskiy et al., arXiv 2010.11929).

Loading keeps timm's own path, ``timm.create_model(name, pretrained=True, num_classes=0)``, where
``name`` is a timm model name (``vit_base_patch16_224``, optionally ``.tag``), ``hf-hub:org/repo``
or ``local-dir:/folder`` (timm 1.0's folder format: ``config.json`` + ``model.safetensors``, written
by ``timm.models.save_for_hf``; a plain folder path is taken as ``local-dir:``). Preprocessing is
``timm.data.create_transform(**timm.data.resolve_data_config(model=model))``.

Layer selection: ``forward_intermediates(indices=[i], output_fmt="NLC", norm=False,
return_prefix_tokens=True, intermediates_only=True)``; ``select_layer`` follows transformers'
``hidden_states`` convention (``-1`` last block, ``-2`` penultimate, no final norm), ``0`` (the
embedding output) is not supported. ``cls_patch`` keeps all prefix tokens (CLS, plus register /
distillation tokens where the model has them) before the patch tokens.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Optional

import torch

from mmit.config.components import VisionTowerConfig
from mmit.models.encoders.base import VISION_TOWERS, VisionTower, resolve_layer
from mmit.models.encoders.preprocess import ImageProcessor


def parse_timm_source(spec: str) -> str:
    """Map ``name_or_path`` to a ``timm.create_model`` name: a folder becomes ``local-dir:<folder>``;
    timm names and ``hf-hub:`` / ``local-dir:`` names pass through."""
    if not spec.startswith(("local-dir:", "hf-hub:")) and os.path.isdir(spec):
        return f"local-dir:{spec}"
    return spec


class TimmViTTower(VisionTower):
    """A timm ViT (any model with ``patch_embed``, ``blocks``, ``num_prefix_tokens`` and
    ``forward_intermediates``) as a :class:`VisionTower`.

    Args:
        cfg: the tower config.
        model_name: passed to ``timm.create_model(model_name, pretrained=True, num_classes=0)``.

    Attributes: see :class:`VisionTower`; also ``model`` (the timm model) and ``data_config`` (timm's
    resolved preprocessing config). ``hidden_size`` is ``model.embed_dim``; ``num_tokens`` is the patch
    count (+ ``model.num_prefix_tokens`` for ``cls_patch``).

    Raises:
        RuntimeError: unknown model (timm); OSError / RuntimeError when weights are missing.
        ValueError: not a ViT-style model, non-square input, ``cls_patch`` on a model without prefix
            tokens, or ``select_layer`` out of range.
    """

    def __init__(self, cfg: VisionTowerConfig, model_name: str):
        super().__init__(cfg)
        from mmit.extras import require

        require("timm", "a timm vision tower")  # a missing package names its extra
        import timm
        from timm.data import create_transform, resolve_data_config

        self.model_name = model_name
        model = timm.create_model(model_name, pretrained=True, num_classes=0)
        for attr in ("patch_embed", "blocks", "num_prefix_tokens", "forward_intermediates"):
            if not hasattr(model, attr):
                raise ValueError(f"timm model {model_name!r} ({type(model).__name__}) is not a ViT: no {attr!r}")
        self.model = model
        self.data_config = resolve_data_config(model=model)
        _, h, w = self.data_config["input_size"]
        if h != w:
            raise ValueError(f"timm model {model_name!r}: non-square input {h}x{w} is not supported")
        self.image_size = int(h)
        pe = model.patch_embed
        if tuple(pe.img_size) != (h, w) and not getattr(pe, "dynamic_img_size", False) and getattr(pe, "strict_img_size", True):
            raise ValueError(f"timm model {model_name!r}: data config size {h} != model img_size {tuple(pe.img_size)}")
        patch = pe.patch_size[0] if isinstance(pe.patch_size, (tuple, list)) else int(pe.patch_size)
        self.hidden_size = int(model.embed_dim)
        self.num_layers = len(model.blocks)
        self._layer = resolve_layer(self.select_layer, self.num_layers, allow_embeddings=False)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        if self.select_feature == "cls_patch" and self.num_prefix_tokens == 0:
            raise ValueError(f"timm model {model_name!r} has no CLS token: use select_feature='patch'")
        self.num_patches = (self.image_size // patch) ** 2
        self.num_tokens = self.num_patches + (self.num_prefix_tokens if self.select_feature == "cls_patch" else 0)
        self.image_processor = ImageProcessor(
            create_transform(**self.data_config),
            image_size=self.image_size,
            image_mean=self.data_config["mean"],
            image_std=self.data_config["std"],
            interpolation=self.data_config.get("interpolation", "bicubic"),
            aspect_ratio=cfg.image_aspect_ratio,
        )

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_intermediates(
            pixel_values,
            indices=[self._layer - 1],
            return_prefix_tokens=self.num_prefix_tokens > 0,
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )[0]
        if self.num_prefix_tokens > 0:
            patches, prefix = out
            return self._select(prefix, patches)
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def save_pretrained(self, save_directory: str) -> None:
        """Write timm's folder format (``config.json`` + ``model.safetensors``) with
        ``timm.models.save_for_hf``; it loads back as ``local-dir:<save_directory>``."""
        from timm.models import save_for_hf

        save_for_hf(self.model, save_directory, safe_serialization=True)


def _build_timm(cfg: VisionTowerConfig, default: Optional[str] = None) -> TimmViTTower:
    spec = cfg.name_or_path or default
    if not spec:
        raise ValueError(f"vision tower {cfg.name!r} needs name_or_path (a timm model name or a local-dir folder)")
    return TimmViTTower(cfg, parse_timm_source(spec))


VISION_TOWERS.register("timm-vit-b-16", partial(_build_timm, default="vit_base_patch16_224"))
VISION_TOWERS.register("timm-vit", _build_timm)

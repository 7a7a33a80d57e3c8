"""open_clip vision towers (OpenCLIP, Cherti et al., arXiv 2212.07143; CLIP, arXiv 2103.00020).

Loading keeps open_clip's own path, ``open_clip.create_model_and_transforms(model_name, pretrained)``,
and the preprocessing is open_clip's validation transform. Only the image tower (``model.visual``) is
kept. ``model.visual.output_tokens`` is set, so ``tower.visual(x)`` returns ``(pooled, tokens)`` as in
OpenFlamingo (arXiv 2308.01390).

Layer selection. open_clip 3.3's ``VisionTransformer.forward_intermediates`` returns block outputs,
so every ``select_layer`` in ``-L..-1`` and ``1..L`` is supported with transformers' ``hidden_states``
convention (``-1`` = last block, ``-2`` = penultimate; no ``ln_post``); ``0`` (the embedding output)
is not. Note that ``tower.visual(x)[1]`` (OpenFlamingo / Otter's features) is the last block after
``ln_post``, i.e. ``visual.ln_post(features at select_layer=-1)`` with CLS dropped. Only open_clip's
own ``VisionTransformer`` image towers are supported (not its timm- or ResNet-based towers).

``name_or_path`` forms: ``ARCH:TAG`` (``ViT-B-32:laion2b_s34b_b79k``), ``ARCH:/path/weights.safetensors``,
``local-dir:/folder`` or a plain folder (``open_clip_config.json`` + weights, open_clip's own format),
``hf-hub:org/repo``, or a weights file (with the member's default architecture).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Optional, Tuple

import torch

from mmit.config.components import VisionTowerConfig
from mmit.models.encoders.base import VISION_TOWERS, VisionTower, resolve_layer
from mmit.models.encoders.preprocess import ImageProcessor


def parse_open_clip_source(spec: str, default_arch: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """Split a ``name_or_path`` into open_clip's ``(model_name, pretrained)`` arguments.

    Raises:
        ValueError: an architecture without a tag or weights file (that would be a random tower), or a
            weights file when there is no default architecture.
    """
    if spec.startswith(("local-dir:", "hf-hub:")):
        return spec, None
    if os.path.isdir(spec):
        return f"local-dir:{spec}", None
    if os.path.isfile(spec):
        if not default_arch:
            raise ValueError(f"{spec}: a weights file needs an architecture; write it as ARCH:{spec}")
        return default_arch, spec
    arch, sep, pretrained = spec.partition(":")
    if not sep or not pretrained:
        raise ValueError(
            f"open_clip source {spec!r} names no weights: use ARCH:TAG (e.g. ViT-B-32:laion2b_s34b_b79k), "
            "ARCH:/path/to/weights, local-dir:/folder or hf-hub:org/repo"
        )
    return arch, pretrained


class OpenCLIPVisionTower(VisionTower):
    """The image tower of an open_clip model as a :class:`VisionTower`.

    Args:
        cfg: the tower config.
        model_name, pretrained: passed to ``open_clip.create_model_and_transforms`` (with
            ``require_pretrained=True``: a tower never silently starts from random weights).

    Attributes: see :class:`VisionTower`; also ``visual`` (open_clip's ``VisionTransformer``),
    ``transform`` (open_clip's validation transform). ``hidden_size`` is the transformer width;
    ``num_tokens`` is the patch grid size (+1 for ``cls_patch``).

    Raises:
        RuntimeError: unknown architecture / tag or weights that cannot be loaded (open_clip).
        ValueError: unsupported image tower, non-square input, or ``select_layer`` out of range.
    """

    def __init__(self, cfg: VisionTowerConfig, model_name: str, pretrained: Optional[str] = None):
        super().__init__(cfg)
        from mmit.extras import require

        require("open_clip", "an open_clip vision tower")  # a missing package names its extra
        import open_clip
        from open_clip.transformer import VisionTransformer

        self.model_name, self.pretrained = model_name, pretrained
        model, _, transform = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, require_pretrained=True
        )
        visual = model.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"open_clip model {model_name!r}: image tower {type(visual).__name__} is not supported "
                "(only open_clip's VisionTransformer)"
            )
        visual.output_tokens = True
        self.visual = visual
        self.transform = transform
        h, w = visual.image_size
        if h != w:
            raise ValueError(f"open_clip model {model_name!r}: non-square input {h}x{w} is not supported")
        self.image_size = int(h)
        self.hidden_size = int(visual.transformer.width)
        self.num_layers = len(visual.transformer.resblocks)
        self._layer = resolve_layer(self.select_layer, self.num_layers, allow_embeddings=False)
        self.num_patches = int(visual.grid_size[0] * visual.grid_size[1])
        self.num_tokens = self.num_patches + (1 if self.select_feature == "cls_patch" else 0)
        pp = visual.preprocess_cfg
        self.image_processor = ImageProcessor(
            transform,
            image_size=self.image_size,
            image_mean=pp["mean"],
            image_std=pp["std"],
            interpolation=pp.get("interpolation", "bicubic"),
            aspect_ratio=cfg.image_aspect_ratio,
        )

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            pixel_values,
            indices=[self._layer - 1],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        return self._select(out["image_intermediates_prefix"][0], out["image_intermediates"][0])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)


def _build_open_clip(cfg: VisionTowerConfig, default: Optional[str] = None) -> OpenCLIPVisionTower:
    spec = cfg.name_or_path or default
    if not spec:
        raise ValueError(f"vision tower {cfg.name!r} needs name_or_path (e.g. ViT-B-32:laion2b_s34b_b79k)")
    default_arch = default.partition(":")[0] if default else None
    model_name, pretrained = parse_open_clip_source(spec, default_arch)
    return OpenCLIPVisionTower(cfg, model_name, pretrained)


VISION_TOWERS.register("open-clip-vit-b-32", partial(_build_open_clip, default="ViT-B-32:laion2b_s34b_b79k"))
VISION_TOWERS.register("open-clip", _build_open_clip)

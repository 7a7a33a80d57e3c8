"""EVA ViT-g as BLIP-2 / InstructBLIP use it, through transformers' ``InstructBlipVisionModel``.

Source: salesforce/LAVIS ``lavis/models/eva_vit.py::create_eva_vit_g`` (patch 14, width 1408,
depth 39: the 40-block EVA-CLIP ViT-g with its last block removed) and ``blip2.py::init_vision_encoder``
(all tokens, CLS kept, then the ``ln_vision`` LayerNorm). transformers' ``InstructBlipVisionModel``
holds the same network; its ``post_layernorm`` is LAVIS's ``ln_vision`` (the official conversion
maps one to the other). EVA: arXiv 2211.07636; BLIP-2: arXiv 2301.12597; InstructBLIP: arXiv 2305.06500.

Features: ``post_layernorm(hidden_states[select_layer])``; with the defaults (``select_layer=-1``,
``select_feature="cls_patch"``) that is exactly ``InstructBlipVisionModel(...).last_hidden_state``:
224 px -> 257 tokens (CLS + 16x16 patches) of width 1408.

Preprocessing is ``BlipImageProcessor`` (squash to the input size, bicubic, OpenAI CLIP mean/std), as
``InstructBlipProcessor``; use ``image_aspect_ratio: crop`` (the backend's pipeline unchanged) for
parity with transformers.

Members: ``eva-vit-g`` (needs ``name_or_path``: a folder or hub id holding an
``InstructBlipVisionModel`` / ``Blip2VisionModel``), ``tiny-eva-vit`` (built locally: 32 px, 8 px
patches, 17 tokens, width 64, 3 blocks).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mmit.config.components import VisionTowerConfig
from mmit.models.cache import build_dir_once, mmit_cache_dir
from mmit.models.encoders.base import VISION_TOWERS, VisionTower, resolve_layer
from mmit.models.encoders.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageProcessor, resample_name

TINY_EVA_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                       image_size=32, patch_size=8, layer_norm_eps=1e-6, qkv_bias=True)


def blip_image_processor(image_size: int):
    """InstructBLIP's preprocessing as a transformers ``BlipImageProcessor``: resize to
    ``image_size x image_size`` (bicubic, no crop), scale to 0-1, OpenAI CLIP mean/std."""
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": image_size, "width": image_size}, resample=3,
                              image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD),
                              do_resize=True, do_rescale=True, do_normalize=True, do_convert_rgb=True)


class EvaVisionTower(VisionTower):
    """An HF ``InstructBlipVisionModel`` (EVA ViT-g) as a :class:`VisionTower`.

    Args:
        cfg: tower config; ``select_layer`` -1 (the 39th block) and ``select_feature`` ``cls_patch``
            reproduce InstructBLIP.
        name_or_path: folder or hub id with an ``InstructBlipVisionModel`` (or ``Blip2VisionModel``,
            same weights layout) checkpoint, optionally with a ``preprocessor_config.json``.

    Output ``[B, N, D_enc]``: N = (S / 14)^2 + 1 with CLS (257 at 224 px), D_enc = 1408 for ViT-g.
    Raises ``OSError`` when the checkpoint cannot be found and ``ValueError`` when weights are missing.
    """

    def __init__(self, cfg: VisionTowerConfig, name_or_path: str):
        super().__init__(cfg)
        from transformers import BlipImageProcessor, InstructBlipVisionModel

        self.name_or_path = str(name_or_path)
        model, info = InstructBlipVisionModel.from_pretrained(self.name_or_path, output_loading_info=True)
        if info.get("missing_keys"):
            raise ValueError(f"{self.name_or_path}: not an EVA/InstructBLIP vision checkpoint, weights missing: "
                             f"{sorted(info['missing_keys'])[:8]}")
        self.vision_model = model
        vc = model.config
        self.image_size, self.patch_size = int(vc.image_size), int(vc.patch_size)
        self.hidden_size, self.num_layers = int(vc.hidden_size), int(vc.num_hidden_layers)
        self._layer = resolve_layer(self.select_layer, self.num_layers)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_tokens = self.num_patches + (1 if self.select_feature == "cls_patch" else 0)
        if os.path.isfile(os.path.join(self.name_or_path, "preprocessor_config.json")):
            self.processor = BlipImageProcessor.from_pretrained(self.name_or_path)
        else:
            self.processor = blip_image_processor(self.image_size)
        size = dict(self.processor.size)
        if size.get("height") != self.image_size or size.get("width") != self.image_size:
            raise ValueError(f"{self.name_or_path}: image processor size {size} != model image_size {self.image_size}")
        self.image_processor = ImageProcessor(
            self.processor, image_size=self.image_size, image_mean=self.processor.image_mean,
            image_std=self.processor.image_std, interpolation=resample_name(self.processor.resample),
            aspect_ratio=cfg.image_aspect_ratio, batched=True)

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        if self._layer == self.num_layers:
            hidden = vm(pixel_values=pixel_values).last_hidden_state  # post_layernorm applied (ln_vision)
        else:
            hidden = vm.post_layernorm(vm(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self._layer])
        return self._select(hidden[:, :1], hidden[:, 1:])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.vision_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.vision_model.gradient_checkpointing_disable()

    def save_pretrained(self, save_directory: str) -> None:
        """``InstructBlipVisionModel.save_pretrained`` plus the ``BlipImageProcessor``."""
        self.vision_model.save_pretrained(save_directory)
        self.processor.save_pretrained(save_directory)


def _build_tiny_eva(out: Path) -> None:
    from transformers import InstructBlipVisionConfig, InstructBlipVisionModel

    from mmit.models.encoders.tiny import _construct

    model = _construct(4, lambda: InstructBlipVisionModel(InstructBlipVisionConfig(**TINY_EVA_CONFIG)))
    model.save_pretrained(out)
    blip_image_processor(TINY_EVA_CONFIG["image_size"]).save_pretrained(out)


def ensure_tiny_eva() -> Path:
    """``<mmit cache>/tiny/tiny-eva-vit``, built on first use (deterministic weights, see ``tiny.py``)."""
    spec = {"format": 1, "member": "tiny-eva-vit", "library": "transformers", "config": TINY_EVA_CONFIG, "seed": 4}
    return build_dir_once(mmit_cache_dir() / "tiny" / "tiny-eva-vit", _build_tiny_eva, spec)


@VISION_TOWERS.register("eva-vit-g")
def eva_vit_g(cfg: VisionTowerConfig) -> VisionTower:
    """EVA ViT-g/14 (39 blocks, width 1408, CLS kept, ``ln_vision``); needs ``name_or_path``."""
    if not cfg.name_or_path:
        raise ValueError("vision tower 'eva-vit-g' needs name_or_path: a folder or hub id with an "
                         "InstructBlipVisionModel checkpoint (mmit import --format hf-instructblip writes one)")
    return EvaVisionTower(cfg, cfg.name_or_path)


@VISION_TOWERS.register("tiny-eva-vit")
def tiny_eva_vit(cfg: VisionTowerConfig) -> VisionTower:
    """Tiny EVA/InstructBLIP tower: 32 px, 8 px patches, 17 tokens with CLS, width 64, 3 blocks."""
    return EvaVisionTower(cfg, cfg.name_or_path or str(ensure_tiny_eva()))

"""transformers CLIP vision towers (LLaVA's ``CLIPVisionTower``).

Source: haotian-liu/LLaVA ``llava/model/multimodal_encoder/clip_encoder.py``: HF ``CLIPVisionModel``
with ``output_hidden_states=True``, features ``hidden_states[select_layer]``, ``patch`` drops CLS
(``[:, 1:]``). CLIP: Radford et al., arXiv 2103.00020; LLaVA: arXiv 2304.08485 / 2310.03744.

Members: ``clip-vit-l-14`` (LLaVA v1, 224 px, 256 patch tokens, D 1024), ``clip-vit-l-14-336``
(LLaVA-1.5, 336 px, 576 tokens, D 1024), ``clip-vit-b-16`` (224 px, 196 tokens, D 768) and ``hf-clip``
(any CLIP checkpoint given as ``name_or_path``).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Optional

import torch

from mmit.config.components import VisionTowerConfig
from mmit.models.encoders.base import VISION_TOWERS, VisionTower, resolve_layer
from mmit.models.encoders.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageProcessor, resample_name

_PROCESSOR_FILE = "preprocessor_config.json"


def default_clip_image_processor(image_size: int):
    """The OpenAI CLIP preprocessing for ``image_size`` as a transformers ``CLIPImageProcessor``:
    resize the shorter side to ``image_size`` (bicubic), centre-crop ``image_size`` square, scale to
    0-1, normalise with the OpenAI CLIP mean/std (arXiv 2103.00020)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=3,  # PIL bicubic
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def load_clip_image_processor(name_or_path: str, image_size: int):
    """``CLIPImageProcessor.from_pretrained(name_or_path)``, or :func:`default_clip_image_processor`
    when the checkpoint has no ``preprocessor_config.json`` (a local folder without one, or a hub
    repo whose processor cannot be fetched)."""
    from transformers import CLIPImageProcessor

    if os.path.isdir(name_or_path):
        if os.path.isfile(os.path.join(name_or_path, _PROCESSOR_FILE)):
            return CLIPImageProcessor.from_pretrained(name_or_path)
        return default_clip_image_processor(image_size)
    try:
        return CLIPImageProcessor.from_pretrained(name_or_path)
    except OSError:
        return default_clip_image_processor(image_size)


def _crop_side(processor) -> Optional[int]:
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop:
        crop = dict(crop)
        if crop.get("height") != crop.get("width"):
            return None
        return int(crop["height"])
    size = dict(getattr(processor, "size", None) or {})
    if "height" in size and size.get("height") == size.get("width"):
        return int(size["height"])
    return None


class HFCLIPVisionTower(VisionTower):
    """A transformers ``CLIPVisionModel`` as a :class:`VisionTower`.

    Args:
        cfg: the tower config (``select_layer``, ``select_feature``, ``image_aspect_ratio``, ``frozen``).
        name_or_path: hub id or local folder holding a ``CLIPVisionModel`` or a full ``CLIPModel``
            checkpoint (only the vision weights are loaded; the text weights are reported as unused
            by transformers' load report).

    Attributes: see :class:`VisionTower`; also ``vision_model`` (the HF ``CLIPVisionModel``) and
    ``processor`` (the ``CLIPImageProcessor``), both used by export. ``hidden_size`` is
    ``vision_config.hidden_size``; ``num_tokens`` is ``(image_size // patch_size) ** 2`` (+1 for
    ``cls_patch``).

    Raises:
        OSError: checkpoint not found (transformers).
        ValueError: checkpoint lacks vision weights, ``select_layer`` out of range, or the processor's
            crop size differs from the model's ``image_size``.
    """

    def __init__(self, cfg: VisionTowerConfig, name_or_path: str):
        super().__init__(cfg)
        from transformers import CLIPVisionModel

        self.name_or_path = str(name_or_path)
        model, info = CLIPVisionModel.from_pretrained(self.name_or_path, output_loading_info=True)
        missing = list(info.get("missing_keys") or [])
        if missing:
            raise ValueError(
                f"{self.name_or_path}: not a CLIP vision checkpoint, weights missing: {sorted(missing)[:8]}"
            )
        self.vision_model = model
        vcfg = model.config
        self.image_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.hidden_size = int(vcfg.hidden_size)
        self.num_layers = int(vcfg.num_hidden_layers)
        self._layer = resolve_layer(self.select_layer, self.num_layers)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.num_tokens = self.num_patches + (1 if self.select_feature == "cls_patch" else 0)

        self.processor = load_clip_image_processor(self.name_or_path, self.image_size)
        side = _crop_side(self.processor)
        if side is not None and side != self.image_size:
            raise ValueError(
                f"{self.name_or_path}: image processor output size {side} != model image_size {self.image_size}"
            )
        self.image_processor = ImageProcessor(
            self.processor,
            image_size=self.image_size,
            image_mean=self.processor.image_mean,
            image_std=self.processor.image_std,
            interpolation=resample_name(getattr(self.processor, "resample", 3)),
            aspect_ratio=cfg.image_aspect_ratio,
            batched=True,
        )

    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[self._layer]
        return self._select(hidden[:, :1], hidden[:, 1:])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.vision_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.vision_model.gradient_checkpointing_disable()

    def save_pretrained(self, save_directory: str) -> None:
        """Write ``CLIPVisionModel.save_pretrained`` (``config.json`` + ``model.safetensors``) and the
        ``CLIPImageProcessor`` (``preprocessor_config.json``) into ``save_directory``."""
        self.vision_model.save_pretrained(save_directory)
        self.processor.save_pretrained(save_directory)


def _build_hf_clip(cfg: VisionTowerConfig, default: Optional[str] = None) -> HFCLIPVisionTower:
    path = cfg.name_or_path or default
    if not path:
        raise ValueError(
            f"vision tower {cfg.name!r} needs name_or_path (a CLIP hub id or a local CLIPVisionModel / CLIPModel folder)"
        )
    return HFCLIPVisionTower(cfg, path)


#: registry name -> default hub id.
HF_CLIP_CHECKPOINTS = {
    "clip-vit-l-14": "openai/clip-vit-large-patch14",
    "clip-vit-l-14-336": "openai/clip-vit-large-patch14-336",
    "clip-vit-b-16": "openai/clip-vit-base-patch16",
}

for _name, _repo in HF_CLIP_CHECKPOINTS.items():
    VISION_TOWERS.register(_name, partial(_build_hf_clip, default=_repo))
VISION_TOWERS.register("hf-clip", _build_hf_clip)

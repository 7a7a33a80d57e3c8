"""The ``model:`` section of an InstructBLIP run (``family: instructblip``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from mmit.config.components import LLMConfig, QFormerConfig, VisionTowerConfig
from mmit.config.schema import FamilyConfig


def _eva_vit_g() -> VisionTowerConfig:
    """InstructBLIP's tower: EVA ViT-g, the last block's tokens with CLS kept, BLIP's processor."""
    return VisionTowerConfig(name="eva-vit-g", select_layer=-1, select_feature="cls_patch", image_aspect_ratio="crop")


@FamilyConfig.register_subclass("instructblip")
@dataclass
class InstructBlipConfig(FamilyConfig):
    """Vision tower -> instruction-aware Q-Former -> LLM (decoder-only Vicuna or encoder-decoder Flan-T5,
    told apart by the LLM's config). InstructBLIP uses no chat template: the prompt is the instruction."""

    vision_tower: VisionTowerConfig = field(default_factory=_eva_vit_g)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    #: LAVIS's InstructBLIP-Vicuna tokens (``blip2_vicuna_instruct.py``): bos and unk become ``</s>`` and
    #: ``[PAD]`` is added, so instructions start with ``</s>`` as in LAVIS training; needed to match
    #: LAVIS-trained checkpoints. None: on when ``llm.name_or_path`` names a Vicuna.
    lavis_vicuna_tokens: Optional[bool] = None

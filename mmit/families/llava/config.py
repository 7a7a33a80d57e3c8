"""The ``model:`` section of a LLaVA run (``family: llava``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from mmit.config.components import LLMConfig, ProjectorConfig, VisionTowerConfig
from mmit.config.schema import FamilyConfig
from mmit.templates import DEFAULT_TEMPLATE


@FamilyConfig.register_subclass("llava")
@dataclass
class LlavaConfig(FamilyConfig):
    vision_tower: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    #: Conversation template: ``plain``, ``vicuna-v1``, ``llama-2``, ``chatml``.
    template: str = DEFAULT_TEMPLATE
    #: Token budget per sample, image tokens included (LLaVA: ``model_max_length`` 2048).
    max_length: int = 2048

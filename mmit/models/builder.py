"""Build a :class:`~mmit.models.multimodal.MultimodalLM` and its tokenizer from a ``ModelConfig``."""

from __future__ import annotations

from typing import Tuple

import torch
from transformers import PreTrainedTokenizerBase

from mmit.config.schema import ModelConfig
from mmit.models.connectors.projectors import PROJECTORS, build_projector
from mmit.models.encoders import VISION_TOWERS, build_vision_tower
from mmit.models.llm import load_llm
from mmit.models.multimodal import MultimodalLM
from mmit.templates import apply_template, get_template


def build_model(cfg: ModelConfig, dtype: torch.dtype = torch.float32
                ) -> Tuple[MultimodalLM, PreTrainedTokenizerBase]:
    """Load the vision tower and LLM (hub id, local folder or ``tiny-*`` member), create the projector
    ``[I,N,D_enc] -> [I,N,D]`` and set the conversation template as the tokenizer's chat template.

    Raises :class:`~mmit.registry.UnknownNameError` for an unknown tower, projector or template name
    (before any weights are loaded) and ``OSError`` for weights that cannot be found.
    """
    # Fail on a bad name before loading any weights.
    get_template(cfg.template)
    PROJECTORS.resolve(cfg.projector.name)
    VISION_TOWERS.resolve(cfg.vision_tower.name)
    tower = build_vision_tower(cfg.vision_tower)
    llm, tokenizer, image_token_id = load_llm(cfg.llm, dtype)
    projector = build_projector(cfg.projector.name, tower.hidden_size, llm.config.get_text_config().hidden_size)
    apply_template(tokenizer, cfg.template)
    model = MultimodalLM(tower, projector, llm, image_token_id)
    return model.to(dtype), tokenizer

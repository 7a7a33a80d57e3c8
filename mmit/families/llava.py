"""The LLaVA family (arXiv 2304.08485, 2310.03744): vision tower -> projector -> spliced into a causal LM."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from mmit.constants import IGNORE_INDEX
from mmit.data.collate import SamplePreprocessor, collate
from mmit.families.base import ModelFamily
from mmit.training.stages import apply_stage

_MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values")


class LlavaFamily(ModelFamily):
    unit = "tokens"

    def build(self, cfg, dtype=torch.float32):
        from mmit.models.builder import build_model

        return build_model(cfg.model, dtype)

    def apply_stage(self, model, cfg):
        return apply_stage(model, cfg.train.stage, cfg.model.vision_tower.frozen)

    def parameter_modules(self, model):
        return ["vision_tower", "projector", "llm"]

    def preprocessor(self, cfg, model, tokenizer):
        return SamplePreprocessor(tokenizer, cfg.model.template, model.vision_tower.image_processor,
                                  model.num_image_tokens, model.image_token_id, cfg.model.max_length,
                                  cfg.data.overflow)

    def collate(self, items: List[Dict[str, Any]], tokenizer) -> Dict[str, Any]:
        return collate(items, tokenizer.pad_token_id)

    def loss(self, model, batch):
        """Mean cross-entropy over supervised tokens. Raises ``RuntimeError`` for a batch without a
        supervised token (the preprocessor never lets one through)."""
        if int((batch["labels"] != IGNORE_INDEX).sum()) == 0:
            raise RuntimeError(f"batch with no supervised token: {batch.get('ids')}")
        return model(**{k: batch[k] for k in _MODEL_INPUTS}).loss

    def count(self, batch):
        """Non-padding tokens, image tokens included."""
        return int(batch["attention_mask"].sum())

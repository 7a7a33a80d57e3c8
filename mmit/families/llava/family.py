"""The LLaVA family's hooks (arXiv 2304.08485, 2310.03744).

Stages follow LLaVA §4.2: ``align`` trains the projector only (stage 1, feature alignment on
captions); ``finetune`` trains the projector and the LLM (stage 2, visual instruction tuning; the
tower too when ``vision_tower.frozen`` is false); ``full`` trains everything. The projector is its own
parameter group (``train.projector_lr``, LLaVA's ``mm_projector_lr``).
"""

from __future__ import annotations

import torch

from mmit.data.batch import has_supervision
from mmit.families.base import ModelFamily
from mmit.families.llava.config import LlavaConfig


class LlavaFamily(ModelFamily):
    config_class = LlavaConfig
    stages = ("align", "finetune", "full")
    unit = "tokens"
    exporters = {"hf-llava": "mmit.families.llava.export:export_hf_llava"}
    importers = {"hf-llava": "mmit.families.llava.export:import_hf_llava"}

    def build(self, cfg, dtype=torch.float32):
        from mmit.families.llava.model import build_llava

        return build_llava(cfg.model, dtype)

    def trainable_modules(self, cfg):
        stage = cfg.train.stage
        return {"vision_tower": stage == "full" or (stage == "finetune" and not cfg.model.vision_tower.frozen),
                "projector": True, "llm": stage in ("finetune", "full")}

    def param_groups(self, model, cfg):
        return self.connector_groups(model, cfg, "projector")

    def processor(self, cfg, model, tokenizer):
        from mmit.families.llava.processor import LlavaProcessor

        return LlavaProcessor(tokenizer, cfg.model.template, model.vision_tower.image_processor,
                              model.num_image_tokens, model.image_token_id, cfg.model.max_length, cfg.data.overflow)

    def loss(self, model, batch):
        """Mean cross-entropy over supervised tokens. Raises ``RuntimeError`` for a batch without a
        supervised token (the processor never lets one through)."""
        if not has_supervision(batch.labels):
            raise RuntimeError(f"batch with no supervised token: {batch.ids}")
        return model(batch.input_ids, batch.attention_mask, batch.labels, batch.values("image"),
                     position_ids=batch.extra.get("position_ids")).loss  # packed rows (data.packing)

"""The InstructBLIP family's hooks (arXiv 2305.06500): vision tower -> instruction-aware Q-Former -> frozen LLM.

Stages: ``align`` is the InstructBLIP recipe (only the Q-Former, its queries and the projection;
tower and LLM frozen); ``finetune`` adds the LLM (and the tower unless ``vision_tower.frozen``);
``full`` trains everything. ``qformer.init_from`` (BERT, BLIP-2 or InstructBLIP weights) is applied
in :meth:`InstructBlipFamily.prepare_for_training`, never when a checkpoint is loaded. The Q-Former
tokenizer is written into every checkpoint (``qformer_tokenizer/``) and the checkpoint's config
points there.
"""

from __future__ import annotations

import copy

import torch

from mmit.data.batch import has_supervision
from mmit.families.base import ModelFamily
from mmit.families.instructblip.config import InstructBlipConfig
from mmit.families.instructblip.model import QFORMER_TOKENIZER_DIR


class InstructBlipFamily(ModelFamily):
    config_class = InstructBlipConfig
    stages = ("align", "finetune", "full")
    unit = "tokens"
    media_kinds = ("image", "video")
    exporters = {"hf-instructblip": "mmit.families.instructblip.export:export_hf_instructblip"}
    importers = {"hf-instructblip": "mmit.families.instructblip.export:import_hf_instructblip"}

    def build(self, cfg, dtype=torch.float32):
        from mmit.families.instructblip.model import build_instructblip

        return build_instructblip(cfg.model, dtype)

    def prepare_for_training(self, model, cfg):
        """Initialise the Q-Former from ``qformer.init_from`` unless ``model.init_from`` gave it weights."""
        if cfg.model.qformer.init_from and not cfg.model.init_from:
            from mmit.models.connectors.qformer import init_qformer

            init_qformer(model.qformer, cfg.model.qformer.init_from)

    def trainable_modules(self, cfg):
        stage = cfg.train.stage
        return {"vision_tower": stage == "full" or (stage == "finetune" and not cfg.model.vision_tower.frozen),
                "qformer": True, "llm": stage in ("finetune", "full")}

    def param_groups(self, model, cfg):
        return self.connector_groups(model, cfg, "qformer")

    def processor(self, cfg, model, tokenizer):
        from mmit.families.instructblip.processor import InstructBlipProcessor

        return InstructBlipProcessor(tokenizer, model.qformer_tokenizer, model.vision_tower.image_processor,
                                     model.qformer.cfg, model.image_token_id, model.is_encoder_decoder,
                                     cfg.data.overflow)

    def loss(self, model, batch):
        """Mean cross-entropy over answer tokens. Raises ``RuntimeError`` for a batch without one."""
        if not has_supervision(batch.labels):
            raise RuntimeError(f"batch with no supervised token: {batch.ids}")
        pixels, q_ids, q_mask = model.visual_inputs(batch)
        return model(batch.input_ids, batch.attention_mask, batch.labels, pixels, q_ids, q_mask).loss

    def count(self, batch):
        """Non-padding LLM input tokens (image tokens included) plus, for seq2seq, answer tokens."""
        n = int(batch.attention_mask.sum())
        if batch.labels.shape != batch.input_ids.shape:
            n += int((batch.labels != -100).sum())
        return n

    def checkpoint_config(self, cfg):
        """The run config with ``qformer.tokenizer`` pointing at the checkpoint's ``qformer_tokenizer/``."""
        out = copy.deepcopy(cfg)
        out.model.qformer.tokenizer = QFORMER_TOKENIZER_DIR
        return out

    def save_extra(self, model, ckpt_dir):
        """Write the Q-Former tokenizer to ``<ckpt>/qformer_tokenizer``."""
        if model.qformer_tokenizer is not None:
            model.qformer_tokenizer.save_pretrained(str(ckpt_dir / QFORMER_TOKENIZER_DIR))

    def load_extra(self, model, ckpt_dir, cfg):
        """Load ``<ckpt>/qformer_tokenizer`` when present (checkpoints whose config names another)."""
        from transformers import AutoTokenizer

        path = ckpt_dir / QFORMER_TOKENIZER_DIR
        if path.is_dir():
            model.qformer_tokenizer = AutoTokenizer.from_pretrained(str(path))

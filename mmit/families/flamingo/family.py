"""The Flamingo family's hooks: OpenFlamingo / Otter training (arXiv 2308.01390, 2305.03726).

Stages: ``align`` is the OpenFlamingo / Otter recipe (``factory.py``): the vision tower and the LLM are
frozen; the Perceiver, the gated cross-attention blocks and the rows of the new tokens (``<image>``,
``<|endofchunk|>``, ``<answer>``) of the input embeddings train (the other rows get a zero gradient,
as OpenFlamingo's ``train_utils.py``). ``finetune`` trains the whole LLM too, ``full`` the tower too.
The cross-attention blocks are the only group with weight decay (OpenFlamingo ``get_grouped_params``).
"""

from __future__ import annotations

import torch

from mmit.data.batch import has_supervision
from mmit.families.base import ModelFamily
from mmit.families.flamingo.config import FlamingoConfig


class FlamingoFamily(ModelFamily):
    config_class = FlamingoConfig
    stages = ("align", "finetune", "full")
    unit = "tokens"
    exporters = {"openflamingo": "mmit.families.flamingo.export:export_openflamingo"}
    importers = {"openflamingo": "mmit.families.flamingo.export:import_openflamingo"}

    def build(self, cfg, dtype=torch.float32):
        from mmit.families.flamingo.model import build_flamingo

        return build_flamingo(cfg.model, dtype)

    def trainable_modules(self, cfg):
        stage = cfg.train.stage
        return {"vision_tower": stage == "full", "llm": stage in ("finetune", "full"), "perceiver": True,
                "xattn": True}

    def prepare_for_training(self, model, cfg):
        """With the LLM frozen, train only the new token rows of its input embeddings (a gradient mask)."""
        if cfg.train.stage != "align":
            return
        emb = model.llm.get_input_embeddings().weight
        rows = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
        rows[[model.media_token_id, model.endofchunk_token_id, model.answer_token_id]] = 1
        emb.requires_grad_(True)
        emb.register_hook(lambda g: g * rows.to(g.device, g.dtype))

    def param_groups(self, model, cfg):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return {"xattn": ([(n, p) for n, p in named if n.startswith("xattn.")], None),
                "model": ([(n, p) for n, p in named if not n.startswith("xattn.")], None, 0.0)}

    def processor(self, cfg, model, tokenizer):
        from mmit.families.flamingo.processor import OtterProcessor

        return OtterProcessor(tokenizer, model.vision_tower.image_processor, cfg.model.max_length,
                              cfg.model.supervise_in_context, cfg.data.overflow)

    def loss(self, model, batch):
        """Mean cross-entropy over the answers. Raises ``RuntimeError`` for a batch without one."""
        if not has_supervision(batch.labels):
            raise RuntimeError(f"batch with no supervised token: {batch.ids}")
        return model(batch.input_ids, batch.attention_mask, batch.labels, model.vision_x(batch)).loss

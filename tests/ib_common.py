"""Shared helpers of the InstructBLIP tests: tiny configs, the processor, the tiny Llama model."""

import torch
from PIL import Image

from conftest import DEMO_IMAGES
from mmit.config.components import LLMConfig, QFormerConfig, VisionTowerConfig
from mmit.config.schema import RunConfig

TINY_Q = dict(num_query_tokens=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
              vocab_size=600, max_position_embeddings=128, cross_attention_frequency=2)


def _model_cfg(llm="tiny-llama", tower="tiny-eva-vit", **q):
    from mmit.families.instructblip.config import InstructBlipConfig

    return InstructBlipConfig(
        vision_tower=VisionTowerConfig(name=tower, select_layer=-1, select_feature="cls_patch",
                                       image_aspect_ratio="crop"),
        qformer=QFormerConfig(**{**TINY_Q, "tokenizer": "tiny-bert", **q}),
        llm=LLMConfig(name_or_path=llm))


def _run_cfg(**kw):
    cfg = RunConfig.for_family("instructblip")
    cfg.model = _model_cfg(**kw)
    return cfg


def _processor(model, tok, **q):
    """The family's processor for ``model``; ``q`` overrides Q-Former settings it reads (max lengths, frames)."""
    import copy

    from mmit.families import get_family

    pre = get_family("instructblip").processor(RunConfig.for_family("instructblip"), model, tok)
    if q:
        from mmit.families.instructblip.processor import InstructBlipProcessor

        qcfg = copy.deepcopy(model.qformer.cfg)
        for k, v in q.items():
            setattr(qcfg, k, v)
        pre = InstructBlipProcessor(tok, model.qformer_tokenizer, model.vision_tower.image_processor, qcfg,
                                    model.image_token_id, model.is_encoder_decoder)
    return pre


def build_llama_model():
    from mmit.families.instructblip.model import build_instructblip

    torch.manual_seed(0)
    model, tok = build_instructblip(_model_cfg())
    return model.eval(), tok


def _image(name="dog_running.jpg"):
    return Image.open(DEMO_IMAGES / name).convert("RGB")


# -- Q-Former connector -------------------------------------------------------------------------

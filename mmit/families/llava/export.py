"""Export an mmit checkpoint as a transformers ``LlavaForConditionalGeneration`` folder, and back.

LLaVA-shaped means: an HF CLIP vision tower (any layer, CLS dropped or kept), the ``mlp2x-gelu``
projector (transformers' ``LlavaMultiModalProjector``: linear_1 -> GELU -> linear_2), and a causal LM
whose backbone transformers' Llava can host. The exported folder has the config, safetensors
weights, the tokenizer with mmit's conversation template as its chat template, and a
``LlavaProcessor`` (``LlavaImageProcessor`` with ``do_pad`` for LLaVA-1.5's ``pad`` aspect mode).
LLaVA-1.5: arXiv 2310.03744.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from mmit.config.schema import RunConfig, save_config
from mmit.export.card import finish_export
from mmit.templates import DEFAULT_TEMPLATE
from mmit.training.checkpoint import load_model_from_checkpoint, save_weights


class NotLlavaShapedError(ValueError):
    """The checkpoint cannot be written as ``LlavaForConditionalGeneration`` (the message says why)."""


def _check_shape(model) -> None:
    tower = model.vision_tower
    if getattr(tower, "vision_model", None) is None or type(tower.vision_model).__name__ != "CLIPVisionModel":
        raise NotLlavaShapedError(f"hf-llava export needs an HF CLIP vision tower, not {type(tower).__name__}")
    proj = model.projector
    linears = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)]
    if not (isinstance(proj, torch.nn.Sequential) and len(proj) == 3 and len(linears) == 2
            and isinstance(proj[1], torch.nn.GELU)):
        raise NotLlavaShapedError("hf-llava export needs the mlp2x-gelu projector (transformers' "
                                  "LlavaMultiModalProjector); this checkpoint uses another")


def _image_processor(tower):
    from transformers import LlavaImageProcessor

    ref = tower.processor  # the CLIPImageProcessor behind the tower's preprocessing
    pad = tower.config.image_aspect_ratio == "pad"
    if tower.config.image_aspect_ratio == "resize":
        raise NotLlavaShapedError("image_aspect_ratio 'resize' has no LlavaImageProcessor equivalent")
    return LlavaImageProcessor(size=dict(ref.size), crop_size=dict(ref.crop_size), do_center_crop=ref.do_center_crop,
                               resample=ref.resample, image_mean=list(ref.image_mean), image_std=list(ref.image_std),
                               do_pad=pad, do_convert_rgb=True)


def to_hf_llava(model):
    """Build a ``LlavaForConditionalGeneration`` holding a copy of ``model``'s weights (fp32, eval mode).

    Raises :class:`NotLlavaShapedError` when the model is not LLaVA-shaped.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    _check_shape(model)
    tower, llm = model.vision_tower, model.llm
    vcfg, tcfg = tower.vision_model.config, llm.config
    lcfg = LlavaConfig(vision_config=vcfg.to_dict(), text_config=tcfg.to_dict(),
                       image_token_index=model.image_token_id, projector_hidden_act="gelu",
                       vision_feature_select_strategy="default" if tower.config.select_feature == "patch" else "full",
                       vision_feature_layer=tower.config.select_layer, image_seq_length=model.num_image_tokens,
                       multimodal_projector_bias=model.projector[0].bias is not None,
                       tie_word_embeddings=getattr(tcfg, "tie_word_embeddings", False))
    hf = LlavaForConditionalGeneration(lcfg).eval()
    with torch.no_grad():
        hf.model.vision_tower.load_state_dict(tower.vision_model.state_dict())
        hf.model.multi_modal_projector.linear_1.load_state_dict(model.projector[0].state_dict())
        hf.model.multi_modal_projector.linear_2.load_state_dict(model.projector[2].state_dict())
        hf.model.language_model.load_state_dict(llm.get_decoder().state_dict())
        hf.lm_head.load_state_dict(llm.get_output_embeddings().state_dict())
    hf.generation_config = llm.generation_config
    return hf


def export_hf_llava(checkpoint: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``output`` as a ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` folder.

    Raises :class:`NotLlavaShapedError` when the model is not LLaVA-shaped, ``FileNotFoundError`` for
    a missing checkpoint.
    """
    from transformers import LlavaProcessor

    model, tokenizer, cfg = load_model_from_checkpoint(checkpoint)
    hf = to_hf_llava(model)
    tower, lcfg = model.vision_tower, hf.config
    vcfg = tower.vision_model.config
    out = Path(output)
    hf.save_pretrained(out)
    patch = vcfg.patch_size
    processor = LlavaProcessor(image_processor=_image_processor(tower), tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy=lcfg.vision_feature_select_strategy,
                               chat_template=tokenizer.chat_template, image_token="<image>",
                               num_additional_image_tokens=1)
    processor.save_pretrained(out)
    return finish_export(checkpoint, out, "hf-llava")


def import_hf_llava(input_dir: str | os.PathLike, output: str | os.PathLike, template: str = DEFAULT_TEMPLATE) -> Path:
    """Turn a ``LlavaForConditionalGeneration`` folder into an mmit checkpoint folder.

    Writes ``vision_tower/`` (CLIPVisionModel + CLIPImageProcessor), ``llm/`` (the causal LM and
    tokenizer), ``tokenizer/``, ``model.safetensors`` (the projector) and ``config.yaml`` whose paths
    are relative to the folder. Raises ``ValueError`` for a Llava variant mmit cannot host.
    """
    from transformers import (AutoModelForCausalLM, AutoProcessor, CLIPImageProcessor, CLIPVisionConfig,
                              CLIPVisionModel, LlavaForConditionalGeneration)

    from mmit.families.llava.model import build_llava

    hf = LlavaForConditionalGeneration.from_pretrained(input_dir, dtype=torch.float32).eval()
    c = hf.config
    if isinstance(c.vision_feature_layer, (list, tuple)):
        raise ValueError(f"{input_dir}: vision_feature_layer {c.vision_feature_layer} (several layers) is not supported")
    if c.vision_config.model_type != "clip_vision_model":
        raise ValueError(f"{input_dir}: vision tower {c.vision_config.model_type} is not an HF CLIP tower")
    processor = AutoProcessor.from_pretrained(input_dir)
    ip, tok = processor.image_processor, processor.tokenizer
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    vt = CLIPVisionModel(CLIPVisionConfig(**c.vision_config.to_dict())).eval()
    vt.load_state_dict(hf.model.vision_tower.state_dict())
    vt.save_pretrained(out / "vision_tower")
    CLIPImageProcessor(size=dict(ip.size), crop_size=dict(ip.crop_size), do_center_crop=ip.do_center_crop,
                       resample=ip.resample, image_mean=list(ip.image_mean), image_std=list(ip.image_std)
                       ).save_pretrained(out / "vision_tower")
    llm = AutoModelForCausalLM.from_config(c.text_config).eval()
    llm.get_decoder().load_state_dict(hf.model.language_model.state_dict())
    llm.get_output_embeddings().load_state_dict(hf.lm_head.state_dict())
    llm.generation_config = hf.generation_config
    llm.save_pretrained(out / "llm")
    tok.save_pretrained(out / "llm")
    cfg = RunConfig.for_family("llava")
    cfg.model.vision_tower.name = "hf-clip"
    cfg.model.vision_tower.name_or_path = "vision_tower"
    cfg.model.vision_tower.select_layer = int(c.vision_feature_layer)
    cfg.model.vision_tower.select_feature = "patch" if c.vision_feature_select_strategy == "default" else "cls_patch"
    cfg.model.vision_tower.image_aspect_ratio = "pad" if getattr(ip, "do_pad", False) else "crop"
    cfg.model.projector.name = "mlp2x-gelu"
    cfg.model.llm.name_or_path = "llm"
    cfg.model.template = template
    save_config(cfg, out / "config.yaml")
    # Build the mmit model from the folders just written and take the projector from the HF model.
    here = copy.deepcopy(cfg.model)
    here.vision_tower.name_or_path = str(out / "vision_tower")
    here.llm.name_or_path = str(out / "llm")
    model, tokenizer = build_llava(here)
    with torch.no_grad():
        model.projector[0].load_state_dict(hf.model.multi_modal_projector.linear_1.state_dict())
        model.projector[2].load_state_dict(hf.model.multi_modal_projector.linear_2.state_dict())
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    save_weights(model, out / "model.safetensors")
    tokenizer.save_pretrained(out / "tokenizer")
    return out

"""``mmit import/export --format hf-instructblip``: transformers' ``InstructBlipForConditionalGeneration``
+ ``InstructBlipProcessor`` folders to and from mmit checkpoints (InstructBLIP, arXiv 2305.06500).

Exportable means: an EVA/InstructBLIP vision tower (``eva-vit-g`` / ``tiny-eva-vit``) read at its last
block with CLS kept (``select_layer -1``, ``cls_patch``; transformers always uses
``last_hidden_state``), ``image_aspect_ratio: crop`` (``BlipImageProcessor`` as is), and a Q-Former
that reads the instruction (``qformer.text_input``). The LLM may be causal or Flan-T5-like.

An imported checkpoint folder holds ``vision_tower/`` (``InstructBlipVisionModel`` +
``BlipImageProcessor``), ``llm/`` (the language model and its tokenizer), ``qformer_tokenizer/``,
``tokenizer/``, ``model.safetensors`` (Q-Former, queries, projection) and ``config.yaml`` with paths
relative to the folder.
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


class NotInstructBlipShapedError(ValueError):
    """The checkpoint cannot be written as ``InstructBlipForConditionalGeneration`` (the message says why)."""


def _check_shape(model) -> None:
    tower = model.vision_tower
    vm = getattr(tower, "vision_model", None)
    if vm is None or type(vm).__name__ != "InstructBlipVisionModel":
        raise NotInstructBlipShapedError(f"hf-instructblip export needs an EVA/InstructBLIP vision tower "
                                         f"(eva-vit-g, tiny-eva-vit), not {type(tower).__name__}")
    if tower.config.select_layer not in (-1, tower.num_layers) or tower.config.select_feature != "cls_patch":
        raise NotInstructBlipShapedError("hf-instructblip export needs vision_tower.select_layer -1 and "
                                         "select_feature cls_patch (transformers uses last_hidden_state)")
    if tower.config.image_aspect_ratio != "crop":
        raise NotInstructBlipShapedError("hf-instructblip export needs vision_tower.image_aspect_ratio crop "
                                         "(BlipImageProcessor squashes the image; pad/resize differ)")
    if not model.qformer.text_input:
        raise NotInstructBlipShapedError("hf-instructblip export needs qformer.text_input true (transformers' "
                                         "InstructBLIP always reads the instruction)")


def processor_tokenizer(tokenizer):
    """A copy of ``tokenizer`` without a *named* ``image_token`` (``<image>`` stays in the vocabulary).

    transformers' ``InstructBlipProcessor`` keeps a tokenizer's ``image_token`` as a string and then
    calls ``.content`` on it when given images (an ``AttributeError``); without the named token it
    registers ``<image>`` itself as an ``AddedToken``, as for the Salesforce checkpoints."""
    import copy

    tok = copy.deepcopy(tokenizer)
    smap = tok.__dict__.get("_special_tokens_map", {})
    if smap.get("image_token") is not None:
        smap.pop("image_token")
    return tok


def to_hf_instructblip(model):
    """An ``InstructBlipForConditionalGeneration`` holding a copy of ``model``'s weights (fp32, eval).

    Raises :class:`NotInstructBlipShapedError` when the model is not exportable (module docstring).
    """
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

    _check_shape(model)
    conn, llm = model.qformer, model.llm
    cfg = InstructBlipConfig(vision_config=model.vision_tower.vision_model.config.to_dict(),
                             qformer_config=conn.qformer.config.to_dict(), text_config=llm.config.to_dict(),
                             num_query_tokens=conn.num_query_tokens, image_token_index=model.image_token_id)
    hf = InstructBlipForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        hf.vision_model.load_state_dict(model.vision_tower.vision_model.state_dict())
        hf.qformer.load_state_dict(conn.qformer.state_dict())
        hf.query_tokens.copy_(conn.query_tokens)
        hf.language_projection.load_state_dict(conn.language_projection.state_dict())
        hf.language_model.load_state_dict(llm.state_dict())
    hf.generation_config = llm.generation_config
    return hf


def export_hf_instructblip(checkpoint: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``output`` as an ``InstructBlipForConditionalGeneration`` + ``InstructBlipProcessor`` folder.

    Raises :class:`NotInstructBlipShapedError` for a model that is not exportable, ``ValueError`` for
    a non-InstructBLIP checkpoint, ``FileNotFoundError`` for a missing one.
    """
    from transformers import InstructBlipProcessor

    model, tokenizer, cfg = load_model_from_checkpoint(checkpoint)
    if cfg.family != "instructblip":
        raise ValueError(f"{checkpoint}: family {cfg.family!r} is not instructblip (use the family's own format)")
    hf = to_hf_instructblip(model)
    out = Path(output)
    hf.save_pretrained(out)
    processor = InstructBlipProcessor(image_processor=model.vision_tower.processor, tokenizer=processor_tokenizer(tokenizer),
                                      qformer_tokenizer=model.qformer_tokenizer,
                                      num_query_tokens=model.num_query_tokens)
    processor.save_pretrained(out)
    return finish_export(checkpoint, out, "hf-instructblip")


def import_hf_instructblip(input_dir: str | os.PathLike, output: str | os.PathLike, template: str = DEFAULT_TEMPLATE) -> Path:
    """Turn an ``InstructBlipForConditionalGeneration`` + ``InstructBlipProcessor`` folder into an mmit
    checkpoint (layout in the module docstring). ``template`` is unused: InstructBLIP prompts use none. Raises ``OSError`` for a folder transformers cannot load."""
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    from mmit.families.instructblip.model import QFORMER_TOKENIZER_DIR, build_instructblip

    hf = InstructBlipForConditionalGeneration.from_pretrained(input_dir, dtype=torch.float32).eval()
    processor = InstructBlipProcessor.from_pretrained(input_dir)
    c, qc = hf.config, hf.config.qformer_config
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    hf.vision_model.save_pretrained(out / "vision_tower")
    processor.image_processor.save_pretrained(out / "vision_tower")
    hf.language_model.generation_config = hf.generation_config
    hf.language_model.save_pretrained(out / "llm")
    processor.tokenizer.save_pretrained(out / "llm")
    processor.qformer_tokenizer.save_pretrained(out / QFORMER_TOKENIZER_DIR)

    cfg = RunConfig.for_family("instructblip")
    vt = cfg.model.vision_tower
    vt.name, vt.name_or_path, vt.select_layer, vt.select_feature, vt.image_aspect_ratio = (
        "eva-vit-g", "vision_tower", -1, "cls_patch", "crop")
    q = cfg.model.qformer
    q.num_query_tokens, q.hidden_size, q.num_hidden_layers = c.num_query_tokens, qc.hidden_size, qc.num_hidden_layers
    q.num_attention_heads, q.intermediate_size = qc.num_attention_heads, qc.intermediate_size
    q.cross_attention_frequency, q.vocab_size = qc.cross_attention_frequency, qc.vocab_size
    q.max_position_embeddings = qc.max_position_embeddings
    q.hidden_dropout_prob, q.attention_probs_dropout_prob = qc.hidden_dropout_prob, qc.attention_probs_dropout_prob
    q.text_input, q.tokenizer, q.init_from = True, QFORMER_TOKENIZER_DIR, None
    cfg.model.llm.name_or_path = "llm"
    cfg.train.stage = "align"
    save_config(cfg, out / "config.yaml")

    # Build the mmit model from the folders just written; take the connector from the HF model.
    here = copy.deepcopy(cfg.model)
    here.vision_tower.name_or_path = str(out / "vision_tower")
    here.llm.name_or_path = str(out / "llm")
    here.qformer.tokenizer = str(out / QFORMER_TOKENIZER_DIR)
    model, tokenizer = build_instructblip(here)
    if c.image_token_index is None or model.image_token_id != c.image_token_index:
        raise ValueError(f"{input_dir}: the tokenizer's <image> id {model.image_token_id} is not the model's "
                         f"image_token_index {c.image_token_index} (a checkpoint from before transformers "
                         "expanded image tokens in the processor?)")
    model.qformer.init_from_instructblip(hf)
    model.requires_grad_(False)
    model.qformer.requires_grad_(True)
    save_weights(model, out / "model.safetensors")
    tokenizer.save_pretrained(out / "tokenizer")
    return out

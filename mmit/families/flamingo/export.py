"""``mmit export/import --format openflamingo``: OpenFlamingo / Otter state dicts (parameter names of
``open_flamingo/src/flamingo.py``: ``perceiver.*``, ``lang_encoder.gated_cross_attn_layers.{i}.*``,
``lang_encoder.<decoder layers>.{i}.decoder_layer.*``, ``vision_encoder.*`` for an open_clip tower).

An exported folder holds ``checkpoint.safetensors`` (every tensor under OpenFlamingo's names, the
cross-attention blocks under both of their names, as ``Flamingo.state_dict()`` has them) and the mmit
``config.yaml`` that describes the architecture. An import folder holds a ``config.yaml`` (a flamingo
run config) and ``checkpoint.safetensors`` or ``checkpoint.pt`` (read with ``weights_only=True``: no
code runs), full or only the trained parts as OpenFlamingo and Otter release them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict

import torch
from safetensors.torch import load_file, save_file

from mmit.config.schema import load_config, save_config
from mmit.export.card import finish_export
from mmit.training.checkpoint import load_model_from_checkpoint, save_weights

STATE_FILES = ("checkpoint.safetensors", "checkpoint.pt")


def _decoder_prefix(model) -> str:
    return model.decoder_layers_attr


def _xattn_layer_index(model) -> Dict[int, int]:
    """Block k -> index of the decoder layer it precedes."""
    from mmit.models.cross_attention import CrossAttentionLayer

    attr = _decoder_prefix(model)
    layers = model.llm.get_submodule(attr)
    out, k = {}, 0
    for i, layer in enumerate(layers):
        if isinstance(layer, CrossAttentionLayer) and layer.block is not None:
            out[k] = i
            k += 1
    return out


def to_openflamingo(model) -> Dict[str, torch.Tensor]:
    """Every tensor of ``model`` under OpenFlamingo's names (contiguous CPU copies)."""
    from mmit.models.connectors.perceiver import openflamingo_state_dict as perceiver_sd
    from mmit.models.cross_attention import openflamingo_state_dict as block_sd

    attr, where = _decoder_prefix(model), _xattn_layer_index(model)
    out: Dict[str, torch.Tensor] = {f"perceiver.{k}": v for k, v in perceiver_sd(model.perceiver).items()}
    for k, block in enumerate(model.xattn):
        for name, v in block_sd(block).items():
            out[f"lang_encoder.gated_cross_attn_layers.{where[k]}.{name}"] = v
            out[f"lang_encoder.{attr}.{where[k]}.gated_cross_attn_layer.{name}"] = v
    inner = re.compile(rf"^{re.escape(attr)}\.(\d+)\.decoder_layer\.(.+)$")
    for name, v in model.llm.state_dict().items():
        out[f"lang_encoder.{name}"] = v
        m = inner.match(name)
        if m:  # OpenFlamingo keeps the unwrapped layers registered too (FlamingoLMMixin.old_decoder_blocks)
            out[f"lang_encoder.old_decoder_blocks.{m.group(1)}.{m.group(2)}"] = v
    visual = getattr(model.vision_tower, "visual", None)
    if visual is not None:
        out.update({f"vision_encoder.{k}": v for k, v in visual.state_dict().items()})
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def openflamingo_names(model) -> Dict[str, str]:
    """OpenFlamingo name -> our parameter name, for every parameter outside the Perceiver (whose
    OpenFlamingo ``to_kv`` is our ``k_proj`` + ``v_proj``: it converts as a whole), the cross-attention
    blocks under both of their OpenFlamingo names."""
    attr, where = _decoder_prefix(model), _xattn_layer_index(model)
    out: Dict[str, str] = {}
    for k, block in enumerate(model.xattn):
        for name, _ in block.named_parameters():
            out[f"lang_encoder.gated_cross_attn_layers.{where[k]}.{name}"] = f"xattn.{k}.{name}"
            out[f"lang_encoder.{attr}.{where[k]}.gated_cross_attn_layer.{name}"] = f"xattn.{k}.{name}"
    inner = re.compile(rf"^{re.escape(attr)}\.(\d+)\.decoder_layer\.(.+)$")
    for name, _ in list(model.llm.named_parameters()) + list(model.llm.named_buffers()):
        out[f"lang_encoder.{name}"] = f"llm.{name}"
        m = inner.match(name)
        if m:
            out[f"lang_encoder.old_decoder_blocks.{m.group(1)}.{m.group(2)}"] = f"llm.{name}"
    visual = getattr(model.vision_tower, "visual", None)
    if visual is not None:
        for name, _ in list(visual.named_parameters()) + list(visual.named_buffers()):
            out[f"vision_encoder.{name}"] = f"vision_tower.visual.{name}"
    return out


def from_openflamingo(model, sd: Dict[str, torch.Tensor], where: str) -> set:
    """Copy OpenFlamingo-named tensors into ``model`` (any subset of its parameters and buffers).
    Returns our names of the parameters loaded. Raises ``KeyError`` naming the first key that maps to
    nothing in this architecture, ``ValueError`` for a shape mismatch."""
    from mmit.models.connectors.perceiver import load_openflamingo_state_dict, openflamingo_state_dict

    names = openflamingo_names(model)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    loaded = set()
    perceiver = {k[len("perceiver."):]: v for k, v in sd.items() if k.startswith("perceiver.")}
    if perceiver:
        current = openflamingo_state_dict(model.perceiver)
        unknown = sorted(set(perceiver) - set(current))
        if unknown:
            raise KeyError(f"{where}: perceiver.{unknown[0]} has no place in this model's Perceiver")
        load_openflamingo_state_dict(model.perceiver, {**current, **perceiver})
        loaded |= {f"perceiver.{n}" for n, _ in model.perceiver.named_parameters()}
    with torch.no_grad():
        for key, v in sd.items():
            if key.startswith("perceiver."):
                continue
            ours = names.get(key)
            dst = params.get(ours, buffers.get(ours)) if ours is not None else None
            if dst is None:
                raise KeyError(f"{where}: {key!r} has no place in this model (check the config's architecture)")
            if dst.shape != v.shape:
                raise ValueError(f"{where}: {key} has shape {tuple(v.shape)}, the model {tuple(dst.shape)}")
            dst.copy_(v.to(dst.dtype))
            if ours in params:
                loaded.add(ours)
    return loaded


def export_openflamingo(checkpoint: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``checkpoint``'s model as OpenFlamingo-named ``checkpoint.safetensors`` + ``config.yaml``.
    Raises ``ValueError`` for a checkpoint of another family."""
    model, _, cfg = load_model_from_checkpoint(checkpoint)
    if cfg.family != "flamingo":
        raise ValueError(f"{checkpoint}: family {cfg.family!r} is not flamingo (use the family's own format)")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_file(to_openflamingo(model), str(out / STATE_FILES[0]), metadata={"format": "pt"})
    save_config(cfg, out / "config.yaml")
    return finish_export(checkpoint, out, "openflamingo")


def read_state(folder: Path) -> Dict[str, torch.Tensor]:
    """The state dict of an import folder (safetensors, or a ``.pt`` read with ``weights_only=True``).
    Raises ``FileNotFoundError`` naming the files looked for."""
    for name in STATE_FILES:
        p = folder / name
        if p.is_file():
            if name.endswith(".safetensors"):
                return load_file(str(p))
            sd = torch.load(p, map_location="cpu", weights_only=True)
            return sd.get("model_state_dict", sd) if isinstance(sd, dict) else sd
    raise FileNotFoundError(f"{folder}: no {' or '.join(STATE_FILES)}")


def import_openflamingo(input_dir: str | os.PathLike, output: str | os.PathLike, template: str = "") -> Path:
    """An mmit checkpoint from an OpenFlamingo/Otter state dict and the flamingo ``config.yaml`` beside it
    (``template`` is unused: the family's prompt format is Otter's). Every tensor in the file is kept in
    the checkpoint (``model.safetensors``); the rest comes from the config's tower and LLM."""
    from mmit.families import get_family

    src = Path(input_dir)
    cfg = load_config(str(src / "config.yaml"), allow_include=False)  # a foreign folder: data only
    if cfg.family != "flamingo":
        raise ValueError(f"{src / 'config.yaml'}: family {cfg.family!r}, expected flamingo")
    sd = read_state(src)
    model, tokenizer = get_family("flamingo").build(cfg)
    loaded = from_openflamingo(model, sd, str(src))
    for name, p in model.named_parameters():
        p.requires_grad_(name in loaded)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors")
    save_config(cfg, out / "config.yaml")
    tokenizer.save_pretrained(str(out / "tokenizer"))
    return out

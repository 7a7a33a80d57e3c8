"""``mmit export/import --format video-llama``: Video-LLaMA checkpoints (Zhang et al., arXiv 2306.02858).

Parameter names are those of DAMO-NLP-SG/Video-LLaMA ``video_llama/models/video_llama.py::VideoLLAMA``,
whose Q-Formers are LAVIS BERTs (``video_llama/models/Qformer.py::BertLMHeadModel``)::

    Video-LLaMA                                  mmit (VideoLlamaLM)
    Qformer.bert.<LAVIS BERT>, query_tokens      image_qformer.qformer.<transformers>, image_qformer.query_tokens
    video_Qformer.bert.*, video_query_tokens     video_qformer.qformer.*, video_qformer.query_tokens
    llama_proj.*                                 video_qformer.language_projection.*
    video_frame_position_embedding.weight        frame_position_embedding.weight
    audio_Qformer.bert.*, audio_query_tokens     audio_qformer.qformer.*, audio_qformer.query_tokens
    audio_llama_proj.*                           audio_qformer.language_projection.*
    audio_position_embedding.weight              audio_position_embedding.weight
    llama_model.*                                llm.*

LAVIS BERT vs transformers' ``InstructBlipQFormerModel``: ``embeddings.LayerNorm`` is
``embeddings.layernorm`` and ``(cross)attention.self.*`` is ``(cross)attention.attention.*``; the rest
is the same. Video-LLaMA deletes each Q-Former's word and position embeddings, every layer's text FFN
(``intermediate``, ``output``) and ``cls``: those are never exported (mmit keeps them, unused).

An exported folder holds ``video_llama.pth`` (``torch.save({"model": state_dict})``, what Video-LLaMA's
``from_config`` reads as ``ckpt["model"]`` with ``strict=False``) and the mmit ``config.yaml``. The state
file holds what the mmit checkpoint holds (what trained; Video-LLaMA's ``_save_checkpoint`` keeps only
parameters that train too), so frozen parts come from where the config says: never the vision tower
(``visual_encoder``, ``ln_vision``) or the audio encoder (ImageBind); the LLM only when it trained,
without the rows of ``<ImageHere>``/``<AudioHere>``, which Video-LLaMA adds to its tokenizer only.

An import folder holds a ``config.yaml`` (a ``video-llama`` run config) and one or more state files
(``*.pth``/``*.pt``, read with ``weights_only=True`` so no code runs, ``{"model": sd}`` or a bare state
dict; or ``*.safetensors``), e.g. Video-LLaMA-2's separate vision-language and audio-language checkpoints.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mmit.config.schema import load_config, save_config
from mmit.export.card import finish_export
from mmit.training.checkpoint import load_model_from_checkpoint, resolve_checkpoint_dir, save_weights

log = logging.getLogger(__name__)

STATE_FILE = "video_llama.pth"
STATE_SUFFIXES = (".pth", ".pt", ".safetensors")
#: (our connector, Video-LLaMA Q-Former, Video-LLaMA queries, Video-LLaMA projection or None).
BRANCHES = (("image_qformer", "Qformer", "query_tokens", None),
            ("video_qformer", "video_Qformer", "video_query_tokens", "llama_proj"),
            ("audio_qformer", "audio_Qformer", "audio_query_tokens", "audio_llama_proj"))
RENAMES = {"frame_position_embedding.": "video_frame_position_embedding.",
           "audio_position_embedding.": "audio_position_embedding.", "llm.": "llama_model."}
#: Parts of ours that Video-LLaMA checkpoints never hold (frozen, loaded from their own files).
NOT_EXPORTED = ("vision_tower.", "audio_encoder.")
#: Q-Former parts (transformers names) that Video-LLaMA deletes: never exported.
DELETED = re.compile(r"^embeddings\.(word|position)_embeddings\.|^encoder\.layer\.\d+\.(intermediate|output)\.")
#: Video-LLaMA buffers that hold no learned state (its ``_save_checkpoint`` keeps every buffer): skipped on
#: import. BERT ``position_ids``, LLaMA ``rotary_emb.inv_freq``, ImageBind's causal ``mask``, fixed
#: ``log_logit_scale`` and sinusoidal ``pos_embed`` (the audio encoder of Video-LLaMA is all of ImageBind).
BUFFERS = re.compile(r"(^|\.)position_ids$|\.rotary_emb\.inv_freq$"
                     r"|^audio_encoder\..*(\.mask|\.log_logit_scale|\.pos_embedding_helper\.pos_embed)$")


def lavis_bert_name(name: str) -> str:
    """A transformers ``InstructBlipQFormerModel`` parameter name under LAVIS BERT naming
    (``embeddings.layernorm.weight`` -> ``embeddings.LayerNorm.weight``,
    ``encoder.layer.0.crossattention.attention.key.bias`` -> ``encoder.layer.0.crossattention.self.key.bias``)."""
    parts = name.split(".")
    if parts[:2] == ["embeddings", "layernorm"]:
        parts[1] = "LayerNorm"
    for i in range(len(parts) - 1):
        if parts[i] in ("attention", "crossattention") and parts[i + 1] == "attention":
            parts[i + 1] = "self"
    return ".".join(parts)


def video_llama_name(ours: str) -> Optional[str]:
    """Video-LLaMA's name of our parameter ``ours``; None for the vision tower and the audio encoder,
    which Video-LLaMA checkpoints do not hold."""
    for mine, qformer, queries, proj in BRANCHES:
        if ours == f"{mine}.query_tokens":
            return queries
        if ours.startswith(f"{mine}.qformer."):
            return f"{qformer}.bert.{lavis_bert_name(ours[len(mine) + len('.qformer.'):])}"
        if proj is not None and ours.startswith(f"{mine}.language_projection."):
            return proj + ours[len(mine) + len(".language_projection"):]
    for mine, ref in RENAMES.items():
        if ours.startswith(mine):
            return ref + ours[len(mine):]
    return None


def video_llama_names(model) -> Dict[str, str]:
    """Video-LLaMA name -> our parameter name for every parameter of ``model`` (a ``VideoLlamaLM``)
    outside the vision tower and audio encoder, the deleted Q-Former parts included, tied LLM weights
    under each of their names. Raises ``ValueError`` for a parameter with no Video-LLaMA name."""
    out: Dict[str, str] = {}
    for name, _ in model.named_parameters(remove_duplicate=False):
        if name.startswith(NOT_EXPORTED):
            continue
        ref = video_llama_name(name)
        if ref is None:
            raise ValueError(f"parameter {name} has no Video-LLaMA name (update mmit/families/video_llama/export.py)")
        out[ref] = name
    return out


def is_deleted(ours: str) -> bool:
    """True for a Q-Former part Video-LLaMA deletes (word/position embeddings, text FFN)."""
    for mine, *_ in BRANCHES:
        if ours.startswith(f"{mine}.qformer."):
            return DELETED.match(ours[len(mine) + len(".qformer."):]) is not None
    return False


def _embedding_rows(model) -> tuple:
    """(names of the LLM's input/output embedding weights, trailing rows that are ``<ImageHere>`` /
    ``<AudioHere>``, which Video-LLaMA's LLM does not have)."""
    weights = [m.weight for m in (model.llm.get_input_embeddings(), model.llm.get_output_embeddings()) if m is not None]
    names = {f"llm.{n}" for n, p in model.llm.named_parameters(remove_duplicate=False) if any(p is w for w in weights)}
    n, k = weights[0].shape[0], 0
    while n - 1 - k in (model.visual_token_id, model.audio_token_id):
        k += 1
    return names, k


def to_video_llama(model, only: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """Parameters of ``model`` under Video-LLaMA's names (contiguous CPU copies), the Q-Formers without
    their deleted parts, LLM embeddings without the ``<ImageHere>``/``<AudioHere>`` rows.

    ``only``: our names of the parameters to write (an export passes those its checkpoint holds, as
    Video-LLaMA's checkpoints hold only what trained); None: every part but the LLM."""
    params = dict(model.named_parameters(remove_duplicate=False))
    keep = None if only is None else set(only)
    emb, k = _embedding_rows(model)
    out: Dict[str, torch.Tensor] = {}
    for ref, ours in video_llama_names(model).items():
        if is_deleted(ours) or (ours.startswith("llm.") if keep is None else ours not in keep):
            continue
        v = params[ours].detach()
        if ours in emb and k:
            v = v[: v.shape[0] - k]
        out[ref] = v.to("cpu").contiguous().clone()
    return out


def from_video_llama(model, sd: Dict[str, torch.Tensor], where: str) -> Set[str]:
    """Copy Video-LLaMA-named tensors into ``model`` (any subset). LLM embeddings may lack the trailing
    ``<ImageHere>``/``<AudioHere>`` rows (those rows are left as they are). Buffers without learned
    state (:data:`BUFFERS`) are skipped. Returns our names of the parameters loaded.

    Raises ``KeyError`` naming ``where`` and the first key with no place in this model (the vision
    tower and audio encoder among them), ``ValueError`` for a shape mismatch, ``TypeError`` for a
    value that is not a tensor."""
    names = video_llama_names(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    emb, k = _embedding_rows(model)
    loaded, skipped = set(), 0
    with torch.no_grad():
        for key, v in sd.items():
            ours = names.get(key)
            if ours is None:
                if BUFFERS.search(key):
                    skipped += 1
                    continue
                raise KeyError(f"{where}: {key!r} has no place in this model (Video-LLaMA's vision tower and "
                               "audio encoder are not imported; check the config's architecture)")
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{where}: {key} is a {type(v).__name__}, not a tensor")
            dst = params[ours]
            if ours in emb and k and v.dim() == 2 and v.shape[0] == dst.shape[0] - k:
                dst = dst[: v.shape[0]]
            if dst.shape != v.shape:
                raise ValueError(f"{where}: {key} has shape {tuple(v.shape)}, the model {tuple(dst.shape)} ({ours})")
            dst.copy_(v.to(dst.dtype))
            loaded.add(ours)
    if skipped:
        log.info("%s: skipped %d buffer(s) without learned state (position_ids, inv_freq, ...)", where, skipped)
    return loaded


def state_files(folder: Path) -> List[Path]:
    """The state files of an import folder, sorted. Raises ``FileNotFoundError`` naming the folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(STATE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{folder}: no state file ({', '.join('*' + s for s in STATE_SUFFIXES)})")
    return files


def read_state(path: Path) -> Dict[str, torch.Tensor]:
    """One state file: safetensors, or a ``.pth``/``.pt`` read with ``weights_only=True`` holding
    ``{"model": state_dict, ...}`` (Video-LLaMA's ``_save_checkpoint``) or a bare state dict.

    Raises ``pickle.UnpicklingError`` naming the file when it holds anything but tensors and plain
    containers (weights_only refuses it), ``ValueError`` when it is not a state dict."""
    if path.name.endswith(".safetensors"):
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"{path}: refused by torch.load(weights_only=True): {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict or {{'model': state_dict}}, got {type(obj).__name__}")
    return obj


def _checkpoint_keys(checkpoint) -> Iterable[str]:
    with safe_open(str(resolve_checkpoint_dir(checkpoint) / "model.safetensors"), "pt") as f:
        return list(f.keys())


def export_video_llama(checkpoint: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Write ``checkpoint``'s model (an mmit ``video-llama`` checkpoint or run folder) as
    ``<output>/video_llama.pth`` + ``config.yaml``. Returns ``output``. The state file holds, under
    Video-LLaMA's names (:func:`to_video_llama`), the parameters the checkpoint holds (those that trained,
    as in Video-LLaMA's own checkpoints); frozen parts come from where the config says.

    Raises ``ValueError`` for a checkpoint of another family or one holding no Video-LLaMA weights,
    ``FileNotFoundError`` for no checkpoint."""
    model, _, cfg = load_model_from_checkpoint(checkpoint)
    if cfg.family != "video-llama":
        raise ValueError(f"{checkpoint}: family {cfg.family!r} is not video-llama (use the family's own format)")
    held = _checkpoint_keys(checkpoint)
    dropped = [k for k in held if k.startswith(NOT_EXPORTED)]
    if dropped:
        log.warning("%s: %d trained tensor(s) of the vision tower / audio encoder are not part of Video-LLaMA "
                    "checkpoints and are not written (e.g. %s)", checkpoint, len(dropped), dropped[0])
    sd = to_video_llama(model, only=held)
    if not sd:
        raise ValueError(f"{checkpoint}: holds no weights Video-LLaMA has (only the vision tower or audio encoder)")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd}, out / STATE_FILE)
    save_config(cfg, out / "config.yaml")
    return finish_export(checkpoint, out, "video-llama")


def import_video_llama(input_dir: str | os.PathLike, output: str | os.PathLike, template: str = "") -> Path:
    """An mmit checkpoint from Video-LLaMA state file(s) and the ``video-llama`` ``config.yaml`` beside
    them (``template`` is unused: the config's ``model.template`` says it). The model is the family's
    ``build`` of the config; every tensor of the files is loaded (:func:`from_video_llama`), the files
    in name order, a key in two files must hold equal values. When the files hold no image Q-Former
    (Video-LLaMA's training checkpoints: it is frozen there) and ``image_qformer.init_from`` is set,
    it is initialised from there (the family's ``prepare_for_training``). The loaded parameters are
    marked trainable, all others frozen, and the trainable ones written (``model.safetensors``) with
    the config and tokenizer, so :func:`~mmit.training.checkpoint.load_model_from_checkpoint` reads it.

    Raises ``FileNotFoundError`` (no config or state file), ``ValueError`` (another family, a shape
    mismatch, two files disagreeing), ``KeyError`` (a key with no place in the model, naming key and file).
    """
    from mmit.families import get_family

    src = Path(input_dir)
    cfg_path = src / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing (a video-llama run config describing the architecture)")
    cfg = load_config(str(cfg_path), allow_include=False)  # a foreign folder: data only
    if cfg.family != "video-llama":
        raise ValueError(f"{cfg_path}: family {cfg.family!r}, expected video-llama")
    files = state_files(src)
    family = get_family("video-llama")
    model, tokenizer = family.build(cfg)
    seen: Dict[str, tuple] = {}
    loaded: Set[str] = set()
    for path in files:
        sd = read_state(path)
        for key, v in sd.items():
            if key in seen and not (isinstance(v, torch.Tensor) and torch.equal(seen[key][1], v)):
                raise ValueError(f"{key} differs between {seen[key][0]} and {path}")
            seen.setdefault(key, (path, v))
        loaded |= from_video_llama(model, sd, str(path))
    image_qformer = {f"image_qformer.{n}" for n, _ in model.image_qformer.named_parameters()}
    if not loaded & image_qformer:
        if cfg.model.image_qformer.init_from:
            family.prepare_for_training(model, cfg)
            loaded |= image_qformer
        else:
            log.warning("%s: no image Q-Former (Qformer.*) in the files and image_qformer.init_from is not set: "
                        "it stays as built (random)", src)
    for name, p in model.named_parameters():
        p.requires_grad_(name in loaded)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors")
    save_config(family.checkpoint_config(cfg), out / "config.yaml")
    family.save_extra(model, out)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    return out

"""Checks of a run config's values, before any model is built.

:func:`check_values` (run by :func:`mmit.config.schema.load_config` on a user's config) checks what
draccus' types cannot: ranges (``train.batch_size >= 1``, ``train.warmup_ratio`` in [0, 1], ...),
registry names (vision towers, projectors, audio encoders, templates, data formats, ``tiny-*`` LLMs,
with the close matches), ``train.report_to`` (:func:`mmit.config.trackers.parse_report_to`), that
the optional packages the run needs are installed (:mod:`mmit.extras`) and, for ``mmit train``, that
local paths exist (``model.init_from``, a model path written as a local path). Every problem is
reported in one ``ValueError`` line.

:func:`check_data` (run by ``mmit train`` before training) checks ``data.path`` and infers
``data.format`` from it: a ``.json`` / ``.jsonl`` file is read by the source reader its first record
fits (:func:`sniff_format`), a folder of ``.tar`` files is shards; anything it cannot tell apart is an
error saying which flags to set (``--data.format=llava --data.media_root=DIR``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, List, Optional, Sequence, Tuple

#: Extensions of annotation files a source reader reads.
JSON_EXTS = (".json", ".jsonl")


def _ranges() -> List[Tuple[str, Callable[[Any], bool], str]]:
    """``(dotted name suffix, ok(value), what it must be)``; the suffix matches in every family."""
    pos = (lambda v: v > 0, "> 0")
    return [
        ("train.batch_size", lambda v: v >= 1, ">= 1"),
        ("train.gradient_accumulation_steps", lambda v: v >= 1, ">= 1"),
        ("train.max_steps", lambda v: v == -1 or v >= 1, "-1 (use train.epochs) or >= 1"),
        ("train.epochs", lambda v: v > 0, "> 0"),
        ("train.lr", *pos),
        ("train.projector_lr", *pos),
        ("train.weight_decay", lambda v: v >= 0, ">= 0"),
        ("train.adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("train.adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("train.adam_eps", lambda v: v > 0, "> 0"),
        ("train.warmup_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("train.max_grad_norm", lambda v: v >= 0, ">= 0 (0: no clipping)"),
        ("train.save_steps", lambda v: v >= 0, ">= 0 (0: only at the end)"),
        ("train.save_total_limit", lambda v: v >= 0, ">= 0 (0: keep all)"),
        ("train.logging_steps", lambda v: v >= 1, ">= 1"),
        ("train.lora.r", lambda v: v >= 1, ">= 1"),
        ("train.lora.alpha", lambda v: v > 0, "> 0"),
        ("train.lora.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("data.shuffle_buffer", lambda v: v >= 0, ">= 0 (0: no shuffling)"),
        ("data.num_workers", lambda v: v >= 0, ">= 0"),
        ("data.batches_per_message", lambda v: v >= 1, ">= 1"),
        ("data.max_tokens_per_batch", lambda v: v >= 1, ">= 1 or null"),
        ("max_length", lambda v: v >= 1, ">= 1"),
        ("num_query_tokens", lambda v: v >= 1, ">= 1"),
        ("num_frames", lambda v: v >= 1, ">= 1"),
        ("_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("_dropout", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ]


def _sections(cfg: Any, prefix: str = ""):
    """``(dotted name, dataclass instance)`` of ``cfg`` and every section under it."""
    yield prefix.rstrip("."), cfg
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            yield from _sections(v, f"{prefix}{f.name}.")


def _looks_local(s: str) -> bool:
    """A value that can only be a local path (a hub id is ``name`` or ``org/name``)."""
    return (os.path.isabs(s) or s.startswith(("./", "../", "~", ".\\")) or s.count("/") > 1
            or s.endswith((".safetensors", ".bin", ".pth", ".pt")))


def _registry_check(problems: List[str], name: str, value: Optional[str], lookup: Callable[[str], Any]) -> None:
    if not value:
        return
    from mmit.registry import UnknownNameError

    try:
        lookup(value)
    except UnknownNameError as e:
        problems.append(f"{name}: {e}")


def _tiny_llm_lookup(value: str) -> None:
    """Raises UnknownNameError for a ``tiny-*`` name no tiny-model registry holds (not a folder)."""
    if not value.startswith("tiny-") or os.path.isdir(value):
        return
    from mmit.models.llm import TINY_LLMS
    from mmit.models.tiny_seq2seq import TINY_SEQ2SEQ
    from mmit.registry import UnknownNameError

    if value not in TINY_LLMS.names() and value not in TINY_SEQ2SEQ.names():
        raise UnknownNameError("tiny LLM", value, TINY_LLMS.names() + TINY_SEQ2SEQ.names())


def _tiny_bert_lookup(value: str) -> None:
    if not value.startswith("tiny-") or os.path.isdir(value):
        return
    from mmit.models.tiny_seq2seq import TINY_BERTS

    TINY_BERTS.get(value)


def _check_section(problems: List[str], needs: List[Tuple[str, str]], name: str, sec: Any, paths: bool) -> None:
    """Registry names and local paths of one section, by its type."""
    from mmit.config.audio import AudioEncoderConfig
    from mmit.config.components import LLMConfig, ProjectorConfig, QFormerConfig, VisionTowerConfig
    from mmit.config.paths import PATH_METADATA

    if isinstance(sec, VisionTowerConfig):
        from mmit.models.encoders import VISION_TOWERS

        _registry_check(problems, f"{name}.name", sec.name, VISION_TOWERS.resolve)
        if "open-clip" in sec.name:
            needs.append(("open_clip", f"{name}.name={sec.name}"))
        if "timm" in sec.name:
            needs.append(("timm", f"{name}.name={sec.name}"))
    elif isinstance(sec, ProjectorConfig):
        from mmit.models.connectors.projectors import PROJECTORS

        _registry_check(problems, f"{name}.name", sec.name, PROJECTORS.resolve)
    elif isinstance(sec, AudioEncoderConfig):
        from mmit.models.audio import AUDIO_ENCODERS

        _registry_check(problems, f"{name}.name", sec.name, AUDIO_ENCODERS.resolve)
    elif isinstance(sec, LLMConfig):
        _registry_check(problems, f"{name}.name_or_path", sec.name_or_path, _tiny_llm_lookup)
        _registry_check(problems, f"{name}.tokenizer", sec.tokenizer, _tiny_llm_lookup)
    elif isinstance(sec, QFormerConfig):
        _registry_check(problems, f"{name}.tokenizer", sec.tokenizer, _tiny_bert_lookup)
    for f in dataclasses.fields(sec):
        v = getattr(sec, f.name)
        if paths and f.metadata.get(PATH_METADATA) and isinstance(v, str) and _looks_local(v):
            if not os.path.exists(os.path.expanduser(v)):
                problems.append(f"{name + '.' if name else ''}{f.name}: no such file or folder: {v}")


def check_values(cfg: Any, family_stages: Sequence[str] = (), paths: bool = False) -> None:
    """Check every value of the run config ``cfg`` that its types do not (module docstring). With
    ``paths``, also that local paths exist (``model.init_from``, path fields written as local paths):
    ``mmit train`` checks them; a shipped config may name folders a previous stage writes.

    Raises ``ValueError`` listing each problem as ``dotted.name: what is wrong`` (registry errors with
    their close matches; a missing optional package with its ``pip install 'mmit[...]'`` line)."""
    from mmit.extras import install_hint, missing

    problems: List[str] = []
    needs: List[Tuple[str, str]] = []  # (module, why)
    for name, sec in _sections(cfg):
        for f in dataclasses.fields(sec):
            full = f"{name}.{f.name}" if name else f.name
            v = getattr(sec, f.name)
            if dataclasses.is_dataclass(v) or isinstance(v, bool):
                continue
            for suffix, ok, what in _ranges():
                if full.endswith(suffix):
                    if isinstance(v, (int, float)) and not ok(v):
                        problems.append(f"{full}={v!r}: must be {what}")
                    break
        _check_section(problems, needs, name, sec, paths)
    model = cfg.model
    template = getattr(model, "template", None)
    if isinstance(template, str):
        from mmit.templates import TEMPLATES

        _registry_check(problems, "model.template", template, TEMPLATES.get)
    init_from = getattr(model, "init_from", None)
    if paths and init_from and not os.path.exists(os.path.expanduser(init_from)):
        problems.append(f"model.init_from: no such checkpoint or run folder: {init_from}")
    fmt = cfg.data.format
    if fmt != "shards":
        from mmit.data.sources import get_reader

        _registry_check(problems, "data.format", fmt, get_reader)
        if fmt in ("mimic-it", "instructpix2pix") and str(cfg.data.path).endswith(".parquet"):
            needs.append(("pyarrow", f"data.format={fmt} on a parquet file"))
    from mmit.config.trackers import parse_report_to

    try:
        trackers = parse_report_to(cfg.train.report_to)
    except ValueError as e:
        problems.append(str(e))
        trackers = []
    for logger in trackers:
        needs.append((logger, f"train.report_to={logger}"))
    if cfg.train.lora.enabled and cfg.train.lora.quantize == "4bit":
        needs.append(("bitsandbytes", "train.lora.quantize=4bit"))
    if cfg.family == "instructpix2pix":
        needs.append(("diffusers", "family instructpix2pix"))
    if cfg.family == "video-llama":
        needs.append(("av", "family video-llama (video decoding)"))
    if family_stages and cfg.train.stage not in family_stages:
        problems.append(f"train.stage={cfg.train.stage!r}: family {cfg.family!r} has the stages "
                        f"{', '.join(family_stages)}")
    for module in dict.fromkeys(m for m, _ in needs):
        if missing([module]):
            why = next(w for m, w in needs if m == module)
            problems.append(f"{why} needs the {module} package, which is not installed: {install_hint(module)}"
                            + (" (or --train.report_to=none)" if why.startswith("train.report_to") else ""))
    if problems:
        raise ValueError("; ".join(problems))


# -- data ------------------------------------------------------------------------------------------


def _first_record(path: str) -> Any:
    """The first record of a JSON list / JSONL file, or the whole document when it is one object
    (MIMIC-IT's ``{"meta", "data"}``); reads at most a few MB unless the first record is larger."""
    with open(path, "rb") as f:
        head = f.read(4 * 1024 * 1024)
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    dec = json.JSONDecoder()
    try:
        if text.startswith("["):
            body = text[1:].lstrip()
            return None if body.startswith("]") else dec.raw_decode(body)[0]
        if text.startswith("{"):
            first_line = text.split("\n", 1)[0]
            try:
                return json.loads(first_line)  # JSONL
            except json.JSONDecodeError:
                pass
            return dec.raw_decode(text)[0]
    except json.JSONDecodeError:
        pass
    from mmit.data.record_io import iter_json_records  # a first record larger than the prefix

    for _, rec, _ in iter_json_records(path):
        return rec
    return None


def sniff_format(path: str) -> Tuple[Optional[str], str]:
    """Which source reader reads the JSON/JSONL file at ``path``, judged by its first record's keys:
    ``(format, why)``, or ``(None, what was found)`` when no single reader fits."""
    try:
        rec = _first_record(path)
    except (ValueError, OSError) as e:
        return None, f"its first record cannot be read ({e})"
    if not isinstance(rec, dict):
        return None, f"its first record is a {type(rec).__name__}, not an object"
    keys = set(rec)
    if "conversations" in keys:
        if "pcl" in keys:
            return "lamm", "records with 'conversations' and 'pcl' (LAMM 3D)"
        return "llava", "records with 'conversations' (LLaVA's shape)"
    if "QA" in keys:
        return "videochat", "records with 'QA'"
    if {"unique_id", "prompt", "target"} <= keys:
        return "multiinstruct", "records with 'unique_id', 'prompt', 'target'"
    if "img_path" in keys or "instance_id" in keys:
        return "vision-flan", "records with 'img_path' / 'instance_id'"
    if "data" in keys and isinstance(rec.get("data"), dict) and any("_INS_" in k for k in list(rec["data"])[:5]):
        return "mimic-it", "an object whose 'data' maps *_INS_* ids"
    return None, f"its first record has the keys {sorted(keys)[:8]}"


def _media_example(rec: Any) -> Optional[str]:
    if not isinstance(rec, dict):
        return None
    for k in ("image", "video", "image_path", "img_path"):
        v = rec.get(k)
        if isinstance(v, list) and v and isinstance(v[0], str):
            return v[0]
        if isinstance(v, str) and v:
            return v
    return None


def _formats_hint(path: str) -> str:
    return (f"--data.format=llava --data.media_root=DIR (DIR: the folder the records' image paths are "
            f"relative to; other readers: `mmit convert --help`) with --data.path={path}")


def check_data(cfg: Any) -> List[str]:
    """Check ``cfg.data`` before training and infer ``data.format`` from ``data.path`` (module
    docstring); sets ``cfg.data.format`` when it infers one. Returns notes to show the user.

    Raises ``FileNotFoundError`` (no such path, no shards in a folder) and ``ValueError`` (an empty
    path, a JSON file no reader can be chosen for, a folder of JSON files, media that do not resolve
    without ``--data.media_root``), each naming the flags to set."""
    data = cfg.data
    path = str(data.path or "")
    notes: List[str] = []
    if getattr(cfg.model, "procedural_triples", 0) and data.format == "shards":
        return notes  # the family writes the shards itself (instructpix2pix demo)
    if not path:
        raise ValueError("data.path is empty: give a shard folder (written by `mmit convert`) or an annotation file, "
                         "e.g. --data.path=records.json --data.format=llava --data.media_root=IMAGES_DIR")
    if data.media_root is not None and not os.path.isdir(data.media_root):
        raise FileNotFoundError(f"data.media_root is not a folder: {data.media_root}")
    if data.format != "shards":
        if not os.path.exists(path):
            raise FileNotFoundError(f"data.path not found: {path}")
        return notes
    if "://" in path or path.startswith("pipe:") or "{" in path or any(c in path for c in "*?["):
        return notes  # URLs, brace and glob patterns: webdataset expands them (mmit.data.shards.expand_urls)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data.path not found: {path} (write shards there with `mmit convert --format llava "
                                f"--input FILE --media-root DIR --output {path}`, or train on the file itself: "
                                "--data.path=FILE.json --data.media_root=DIR)")
    if os.path.isdir(path):
        names = os.listdir(path)
        if any(n.endswith(".tar") for n in names):
            return notes
        jsons = sorted(n for n in names if n.endswith(JSON_EXTS) and not n.startswith("_"))
        if jsons:
            raise ValueError(f"data.path {path} holds no .tar shards but JSON files ({', '.join(jsons[:3])}): give "
                             f"the file, e.g. {_formats_hint(os.path.join(path, jsons[0]))}")
        raise FileNotFoundError(f"no *.tar shards in folder {path}: write them with `mmit convert`, or point "
                                "data.path at an annotation file with --data.format=llava --data.media_root=DIR")
    if path.endswith(".tar"):
        return notes
    if not path.lower().endswith(JSON_EXTS):
        raise ValueError(f"data.path {path} is neither a shard folder nor a .tar: for a source file set "
                         f"--data.format (e.g. {_formats_hint(path)})")
    fmt, why = sniff_format(path)
    if fmt is None:
        raise ValueError(f"data.path {path} is a JSON file, not shards, and its reader cannot be told from it "
                         f"({why}): set {_formats_hint(path)}")
    data.format = fmt
    notes.append(f"data.path is a JSON file with {why}: reading it with --data.format={fmt}")
    if data.media_root is None:
        media = _media_example(_first_record(path))
        base = os.path.dirname(os.path.abspath(path))
        if media and not os.path.isabs(media) and not os.path.exists(os.path.join(base, media)):
            raise ValueError(f"data.path {path}: the first record's media {media!r} is not under the file's folder "
                             f"{base}: set --data.format={fmt} --data.media_root=DIR (the folder its paths are "
                             "relative to)")
    return notes

"""``mmit export`` and ``mmit import`` argument parsing; each format lives in its own module.

Each family registers its formats (``ModelFamily.exporters`` / ``importers``) as
``name -> "module:function"``, imported only when used:

* exporters: ``function(checkpoint, output) -> Path`` (the folder written);
* importers: ``function(input_dir, output, template) -> Path`` (the mmit checkpoint written).

A checkpoint trained with ``train.lora`` (LoRA adapters in ``llm_adapter/``) is exported with
``--merge-lora``: the adapters are merged into the LLM's base weights (:func:`merged_checkpoint`)
before the format's writer runs, so every format gets plain weights.

Every export folder ends with :func:`mmit.export.card.finish_export`: a ``README.md`` model card
(base models, data, template, stage, eval results), normal file modes, no local paths in its configs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List


def exporters() -> Dict[str, str]:
    """Format -> ``"module:function"`` over every family (``ModelFamily.exporters``)."""
    from mmit.families import family_table

    return {k: t for k, (_, t) in family_table("exporters").items()}


def importers() -> Dict[str, str]:
    """Format -> ``"module:function"`` over every family (``ModelFamily.importers``)."""
    from mmit.families import family_table

    return {k: t for k, (_, t) in family_table("importers").items()}


def _load(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def merged_checkpoint(checkpoint: str | Path, folder: str | Path) -> int:
    """Write ``folder`` as an mmit checkpoint of ``checkpoint``'s model with its LoRA adapters merged into
    the LLM's base weights (:func:`mmit.training.lora.merge_lora`): ``model.safetensors`` holds what the
    checkpoint held plus the merged layers' weights, the config has ``train.lora`` off, the family's
    extra files are written again (``save_extra``). Returns the number of merged layers (0: the
    checkpoint has no adapters, nothing is written). Raises what
    :func:`~mmit.training.checkpoint.load_model_from_checkpoint` raises."""
    from safetensors import safe_open

    from mmit.families import get_family
    from mmit.training.checkpoint import (STATE_FILE, load_model_from_checkpoint, resolve_checkpoint_dir,
                                          save_checkpoint)
    from mmit.training.lora import merge_lora

    src = resolve_checkpoint_dir(checkpoint)
    model, tokenizer, cfg = load_model_from_checkpoint(src)
    merged = merge_lora(model)
    if not merged:
        return 0
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        keep = set(f.keys()) | {f"{name}.weight" for name in merged}
    model.requires_grad_(False)
    cfg.train.lora.enabled, cfg.train.lora.quantize = False, "none"
    family = get_family(cfg.family)
    state = json.loads((src / STATE_FILE).read_text()) if (src / STATE_FILE).is_file() else {}
    save_checkpoint(folder, model=model, cfg=family.checkpoint_config(cfg), tokenizer=tokenizer, trainer_state=state,
                    extra=family.save_extra, keep=keep)
    return len(merged)


def export_main(argv: List[str]) -> int:
    """``mmit export``. Raises ``ValueError`` for a LoRA checkpoint without ``--merge-lora``, and what the
    format's writer raises."""
    from mmit.export.card import finish_export
    from mmit.training.checkpoint import resolve_checkpoint_dir
    from mmit.training.lora import ADAPTER_DIR

    p = argparse.ArgumentParser(prog="mmit export", description="Write a checkpoint as another toolkit's model folder.")
    p.add_argument("--checkpoint", required=True, help="mmit checkpoint or run folder")
    table = exporters()
    p.add_argument("--format", required=True, choices=sorted(table))
    p.add_argument("--output", required=True)
    p.add_argument("--merge-lora", action="store_true",
                   help="merge the checkpoint's LoRA adapters (llm_adapter/) into the LLM's weights first")
    p.add_argument("--eval", action="append", default=[], metavar="DIR",
                   help="an `mmit eval --output` folder (or its results.json) whose results go into the model "
                        "card (default: those found in the run folder); repeatable")
    a = p.parse_args(argv)
    write = _load(table[a.format])
    has_adapters = (resolve_checkpoint_dir(a.checkpoint) / ADAPTER_DIR).is_dir()
    if has_adapters and not a.merge_lora:
        raise ValueError(f"{a.checkpoint} holds LoRA adapters ({ADAPTER_DIR}/): pass --merge-lora to merge them "
                         f"into the LLM's weights before writing {a.format}")
    if not has_adapters:
        if a.merge_lora:
            print(f"no LoRA adapters in {a.checkpoint}: nothing to merge", file=sys.stderr)
        out = write(a.checkpoint, a.output)
    else:
        parent = Path(a.output).resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".mmit-merge-lora-", dir=parent) as tmp:
            n = merged_checkpoint(a.checkpoint, Path(tmp) / "checkpoint")
            print(f"merged the LoRA adapters of {n} layers into the LLM's weights", file=sys.stderr)
            out = write(str(Path(tmp) / "checkpoint"), a.output)
    finish_export(a.checkpoint, out, a.format, a.eval)  # the card names the user's checkpoint, not a merged copy
    print(f"wrote {a.format} folder {out} (model card: {out}/README.md)")
    return 0


def import_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="mmit import", description="Turn another toolkit's model folder into an mmit checkpoint.")
    from mmit.templates import DEFAULT_TEMPLATE

    table = importers()
    p.add_argument("--format", required=True, choices=sorted(table))
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--template", default=DEFAULT_TEMPLATE, help="conversation template of the imported model")
    a = p.parse_args(argv)
    out = _load(table[a.format])(a.input, a.output, a.template)
    print(f"wrote mmit checkpoint {out}")
    return 0

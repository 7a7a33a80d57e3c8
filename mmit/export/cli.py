"""``mmit export`` and ``mmit import`` argument parsing; each format lives in its own module.

Each family registers its formats (``ModelFamily.exporters`` / ``importers``) as
``name -> "module:function"``, imported only when used:

* exporters: ``function(checkpoint, output) -> Path`` (the folder written);
* importers: ``function(input_dir, output, template) -> Path`` (the mmit checkpoint written).
"""

from __future__ import annotations

import argparse
import importlib
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


def export_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="mmit export", description="Write a checkpoint as another toolkit's model folder.")
    p.add_argument("--checkpoint", required=True, help="mmit checkpoint or run folder")
    table = exporters()
    p.add_argument("--format", required=True, choices=sorted(table))
    p.add_argument("--output", required=True)
    a = p.parse_args(argv)
    out = _load(table[a.format])(a.checkpoint, a.output)
    print(f"wrote {a.format} folder {out}")
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

"""``mmit export`` and ``mmit import`` argument parsing; each format lives in its own module.

A format is registered below as ``name -> "module:function"`` and imported only when used:

* exporters: ``function(checkpoint, output) -> Path`` (the folder written);
* importers: ``function(input_dir, output, template) -> Path`` (the mmit checkpoint written).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable, Dict, List

EXPORTERS: Dict[str, str] = {
    "hf-llava": "mmit.export.hf_llava:export_hf_llava",
    "hf-instructblip": "mmit.export.hf_instructblip:export_hf_instructblip",
    "diffusers-instructpix2pix": "mmit.export.diffusers_instructpix2pix:export_diffusers_instructpix2pix",
}
IMPORTERS: Dict[str, str] = {
    "hf-llava": "mmit.export.hf_llava:import_hf_llava",
    "hf-instructblip": "mmit.export.hf_instructblip:import_hf_instructblip",
}
EXPORT_FORMATS = tuple(EXPORTERS)
IMPORT_FORMATS = tuple(IMPORTERS)


def _load(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def export_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="mmit export", description="Write a checkpoint as another toolkit's model folder.")
    p.add_argument("--checkpoint", required=True, help="mmit checkpoint or run folder")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--output", required=True)
    a = p.parse_args(argv)
    out = _load(EXPORTERS[a.format])(a.checkpoint, a.output)
    print(f"wrote {a.format} folder {out}")
    return 0


def import_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="mmit import", description="Turn another toolkit's model folder into an mmit checkpoint.")
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--template", default="vicuna-v1", help="conversation template of the imported model")
    a = p.parse_args(argv)
    out = _load(IMPORTERS[a.format])(a.input, a.output, a.template)
    print(f"wrote mmit checkpoint {out}")
    return 0

"""``mmit export`` and ``mmit import`` argument parsing; the formats live in their own modules."""

from __future__ import annotations

import argparse
from typing import List

EXPORT_FORMATS = ("hf-llava",)
IMPORT_FORMATS = ("hf-llava",)


def export_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="mmit export", description="Write a checkpoint as another toolkit's model folder.")
    p.add_argument("--checkpoint", required=True, help="mmit checkpoint or run folder")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--output", required=True)
    a = p.parse_args(argv)
    from mmit.export.hf_llava import export_hf_llava

    out = export_hf_llava(a.checkpoint, a.output)
    print(f"wrote {a.format} folder {out}")
    return 0


def import_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="mmit import", description="Turn another toolkit's model folder into an mmit checkpoint.")
    p.add_argument("--format", required=True, choices=IMPORT_FORMATS)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--template", default="vicuna-v1", help="conversation template of the imported model")
    a = p.parse_args(argv)
    from mmit.export.hf_llava import import_hf_llava

    out = import_hf_llava(a.input, a.output, a.template)
    print(f"wrote mmit checkpoint {out}")
    return 0

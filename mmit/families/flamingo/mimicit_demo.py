"""Write a small MIMIC-IT-shaped dataset (arXiv 2306.05425) from a folder of images: the tiny Otter demo.

Files, in the layout the ``mimic-it`` reader expects (DATASETS.md §6): ``LA_instructions.json``
(``{"meta": ..., "data": {id: {instruction, answer, image_ids, rel_ins_ids}}}``), ``LA.json`` (image id ->
base64 of the file's bytes) and ``LA_train.json`` (query id -> in-context ids). Every image gets one
question and answer per question template; its in-context examples are ``shots`` other images asked
the same question (Otter's LA in-context layout: each example brings its own image). Answers name the
image after its file stem (``baseball.jpg`` -> "baseball"), so a model can only learn them from the
pixels.

CLI: ``python -m mmit.families.flamingo.mimicit_demo --images DIR --output DIR [--shots 2] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
from pathlib import Path
from typing import Dict, List

TEMPLATES = (("What is shown in this picture?", "This picture shows {name}."),
             ("Name the subject of the image.", "The subject is {name}."))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def write_mimicit_demo(images: str | Path, output: str | Path, shots: int = 2, seed: int = 0) -> Dict[str, int]:
    """Write the three files into ``output``; returns ``{"images", "instructions", "queries"}``.
    Raises ``FileNotFoundError`` / ``ValueError`` for a folder with fewer than ``shots + 1`` images."""
    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < shots + 1:
        raise ValueError(f"{images}: {len(files)} image(s); the demo needs at least {shots + 1}")
    rng = random.Random(seed)
    store = {f"LA_IMG_{p.stem}": base64.b64encode(p.read_bytes()).decode("ascii") for p in files}
    data: Dict[str, dict] = {}
    train: Dict[str, List[str]] = {}
    for t, (question, answer) in enumerate(TEMPLATES):
        ids = [f"LA_INS_{t}_{p.stem}" for p in files]
        for iid, p in zip(ids, files):
            name = p.stem.replace("_", " ")
            data[iid] = {"instruction": question, "answer": answer.format(name=name),
                         "image_ids": [f"LA_IMG_{p.stem}"], "rel_ins_ids": []}
        for iid in ids:
            train[iid] = rng.sample([j for j in ids if j != iid], shots)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "LA_instructions.json").write_text(json.dumps({"meta": {"version": "mmit-demo"}, "data": data}, indent=1))
    (out / "LA.json").write_text(json.dumps(store))
    (out / "LA_train.json").write_text(json.dumps(train, indent=1))
    return {"images": len(files), "instructions": len(data), "queries": len(train)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmit.families.flamingo.mimicit_demo", description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(write_mimicit_demo(a.images, a.output, a.shots, a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

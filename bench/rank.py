"""Benchmark: batched vocabulary ranking (media + prompt encoded once, KV cache reused by every
candidate) against one full forward pass per candidate, in one process on the same model.

Both paths produce the same scores (checked here to 1e-4 before timing). The baseline is
``mmit.evaluation.scorers.rank_full_forward`` (media + prompt + candidate through the whole model
for each candidate, what LAVIS ``predict_class`` computes with ``n_segments`` = #candidates); the
fast path is ``rank_batch`` over batches of ``--batch`` samples. Both include tokenization. Runs
are interleaved (fast, baseline, fast, ...) so drift in machine speed hits both alike; the median
round is reported.

    python bench/rank.py [--samples 32] [--candidates 4] [--batch 8] [--rounds 5] [--llm tiny-llama-4l]

Prints samples/s for each and the ratio fast / baseline (target >= 2.5 at 4 candidates).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def make_items(n: int, k: int, seed: int = 0):
    import random

    from PIL import Image

    from mmit.data.sample import Turn
    from mmit.evaluation.data import EvalItem
    from mmit.evaluation.procedural.tasks import TASKS

    rng = random.Random(seed)
    words = ["red circle", "green square", "blue triangle", "yellow star", "purple hexagon", "orange ring",
             "top left corner", "bottom right corner", "two", "three shapes"]
    items = []
    for i in range(n):
        q = rng.choice(TASKS["shape-of-color"].templates).format(color=rng.choice(["red", "blue"]))
        img = Image.new("RGB", (64, 64), tuple(rng.randrange(256) for _ in range(3)))
        items.append(EvalItem("bench", str(i), 0, [Turn("user", f"<image>\n{q}")], [img], "",
                              rng.sample(words, k)))
    return items


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="samples per rank_batch call")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--llm", default="tiny-llama-4l")
    ap.add_argument("--tower", default="tiny-clip-vit")
    ap.add_argument("--template", default="vicuna-v1")
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from mmit.config.schema import RunConfig
    from mmit.evaluation.config import RankConfig
    from mmit.evaluation.scorers import rank_batch, rank_full_forward
    from mmit.families import get_family

    torch.manual_seed(0)
    rc = RunConfig.for_family("llava")
    rc.model.vision_tower.name, rc.model.llm.name_or_path, rc.model.template = a.tower, a.llm, a.template
    family = get_family("llava")
    model, tok = family.build(rc)
    model.eval()
    proc = family.processor(rc, model, tok)
    cfg = RankConfig(reduction="sum")
    items = make_items(a.samples, a.candidates)

    def fast():
        out = []
        for k in range(0, len(items), a.batch):
            out += rank_batch(model, proc, items[k:k + a.batch], cfg)
        return out

    def baseline():
        return [rank_full_forward(model, proc, it, cfg) for it in items]

    f, b = fast(), baseline()  # warm-up, and the two must agree
    worst = max(abs(x - y) for fs, bs in zip(f, b) for x, y in zip(fs, bs))
    assert worst < 1e-4, f"scores differ by {worst}"
    tf, tb = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        fast()
        tf.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        baseline()
        tb.append(time.perf_counter() - t0)
    mf, mb = statistics.median(tf), statistics.median(tb)
    print(f"model: {a.tower} + {a.llm}, template {a.template}, {a.samples} samples x {a.candidates} candidates, "
          f"torch threads {torch.get_num_threads()}, max |score diff| {worst:.2e}")
    print(f"batched ranking (prefix once + KV cache, batch {a.batch}): {a.samples / mf:8.1f} samples/s")
    print(f"one full forward per candidate:                        {a.samples / mb:8.1f} samples/s")
    print(f"speed ratio batched / per-candidate: {mb / mf:.2f}x (target >= 2.5)")


if __name__ == "__main__":
    main()

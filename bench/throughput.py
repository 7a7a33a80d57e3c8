"""Benchmark: useful (supervised) tokens/s of the tiny LLaVA's training step with modality-length
grouping and packing (:mod:`mmit.training.batching`) against LLaVA's default batching (random order,
a fixed number of samples per batch, each padded to the longest), on a length mix drawn from real
LLaVA-style records.

Length mix (``../shared/samples``, see its MANIFEST.md; ``demo_data/llava_demo.json`` when absent):
multimodal records are LLaVA-Bench COCO's GPT-4 instruction/answer pairs
(``llava/coco2014_val_gpt4_qa_30x3.jsonl``: conversation, detail, complex reasoning), VideoChat's
copies of LLaVA complex reasoning and MiniGPT-4 captions (``videochat/*.json``) and the Vision-Flan
website records (``vision_flan/tasks_web.json``); text-only records stand in for mix665k's ShareGPT
part (LLaVA's text-only 6%): the symbolic context GPT-4 saw when writing LLaVA's data (COCO captions
and boxes, ``llava/caps_boxes_coco2014_val_80.jsonl``) with a LLaVA-Bench question as the user turn and
GPT-4's answer (``llava/qa90_*.jsonl``) as the reply. The pixels of every multimodal record are one real
image (``llava/images/extreme_ironing.jpg``): only lengths matter here. ``--samples`` records are
drawn with replacement, seeded.

Strategies, each one epoch over the same samples, fp32, AdamW, forward + backward + step:

* ``baseline``: random order, ``--batch`` samples per batch, padded to the longest (LLaVA's default);
* ``grouped``: ``data.group_by_modality_length`` with the same ``--batch`` (LLaVA's option);
* ``packed``: grouping + packing + a token budget of ``--batch x --max-length`` tokens per batch
  (the baseline's worst-case tensor), ``--cap`` samples at most.

Rounds are interleaved (baseline, grouped, packed, baseline, ...) so drift in machine speed hits all
alike; the ratio printed is the median over rounds of (strategy tokens/s) / (baseline tokens/s) of the
same round. The share of computed positions that are real tokens (padding efficiency) is printed too:
it does not depend on the machine's load.

    python bench/throughput.py [--samples 256] [--batch 16] [--max-length 1024] [--rounds 3] [--llm tiny-llama]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "samples"


def _jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def real_records():
    """``(multimodal, [(role, text), ...])`` pairs from ``../shared/samples`` (module docstring), or
    from ``demo_data/llava_demo.json`` when the shared samples are absent; and a description."""
    recs = []
    if (SHARED / "llava").is_dir():
        for r in _jsonl(SHARED / "llava" / "coco2014_val_gpt4_qa_30x3.jsonl"):
            recs.append((True, [("user", "<image>\n" + r["instruction"]), ("assistant", r["output"])]))
        for name in ("llava_complex_reasoning_2k.head20.json", "minigpt_caption_3k.head20.json"):
            for r in json.loads((SHARED / "videochat" / name).read_text()):
                turns = []
                for j, qa in enumerate(r["QA"]):
                    q = qa.get("q") or qa.get("i") or "Describe it."
                    turns += [("user", ("<image>\n" if j == 0 else "") + q), ("assistant", qa["a"])]
                recs.append((True, turns))
        for r in json.loads((SHARED / "vision_flan" / "tasks_web.json").read_text()):
            conv = r["conversations"]
            turns = [("user" if c["from"] == "human" else "assistant", c["value"]) for c in conv]
            if sum(t.count("<image>") for _, t in turns) == 1:
                recs.append((True, turns))
        context = {r["image"]: r for r in _jsonl(SHARED / "llava" / "caps_boxes_coco2014_val_80.jsonl")}
        answers = {r["question_id"]: r["text"] for r in _jsonl(SHARED / "llava" / "qa90_gpt4_answer.jsonl")}
        for q in _jsonl(SHARED / "llava" / "qa90_questions.jsonl"):
            c = context.get(q["image"])
            if c is None or q["question_id"] not in answers:
                continue
            boxes = "\n".join(f"{i['category']}: {i['bbox']}" for i in c["instances"])
            recs.append((False, [("user", "\n".join(c["captions"]) + "\n\n" + boxes + "\n\n" + q["text"]),
                                 ("assistant", answers[q["question_id"]])]))
        return recs, f"{SHARED} (LLaVA-Bench, VideoChat, Vision-Flan; text-only: captions+boxes -> GPT-4 answers)"
    for r in json.loads((ROOT / "demo_data" / "llava_demo.json").read_text()):
        turns = [("user" if c["from"] == "human" else "assistant", c["value"]) for c in r["conversations"]]
        recs.append(("image" in r, turns))
    return recs, "demo_data/llava_demo.json (../shared/samples not found)"


def draw_samples(n: int, seed: int):
    """``n`` :class:`~mmit.data.sample.Sample` records drawn with replacement from :func:`real_records`."""
    from mmit.data.sample import Media, Sample, Turn

    recs, where = real_records()
    image = SHARED / "llava" / "images" / "extreme_ironing.jpg"
    if not image.is_file():
        image = next((ROOT / "demo_data" / "images").rglob("*.jpg"))
    data = image.read_bytes()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        mm, turns = rng.choice(recs)
        media = [Media("image", path=str(image), data=data, ext="jpg")] if mm else []
        out.append(Sample(f"s{i}", [Turn(role, text) for role, text in turns], media))
    return out, where, len(recs), sum(1 for mm, _ in recs if not mm)


class _Stream:
    """An in-memory sample stream (what :func:`mmit.training.batching.build_batches` reads)."""

    def __init__(self, samples, cfg, seed: int):
        from mmit.data.stats import SkipCounter

        self.samples, self.cfg, self.seed, self.stats = samples, cfg, seed, SkipCounter()

    def epoch(self, e: int):
        order = list(range(len(self.samples)))
        random.Random(self.seed * 1_000_003 + e).shuffle(order)
        return (self.samples[i] for i in order)


def epoch_batches(samples, pre, cfg, batch_size: int, seed: int):
    """The batches of epoch 0 (processing done here, outside the timing)."""
    from mmit.training.data import batches

    stream = _Stream(samples, cfg, seed)
    out = []
    for batch, epoch, _ in batches(stream, pre, batch_size):  # the trainer's data path
        if epoch:
            break
        out.append(batch)
    return out, stream.stats


def run_epoch(model, family, opt, batches) -> float:
    """Seconds for forward + backward + AdamW step over ``batches``."""
    t = time.perf_counter()
    for b in batches:
        loss = family.loss(model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16,
                    help="samples per batch, baseline and grouped (LLaVA-1.5's per_device_train_batch_size)")
    ap.add_argument("--cap", type=int, default=64, help="most samples per packed batch")
    ap.add_argument("--max-length", type=int, default=1024,
                    help="tokens per sample (tiny-llama's positions; LLaVA-1.5: 2048 with 576 image tokens)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llm", default="tiny-llama", help="tiny-llama-4l: the demo's LLM (about 6x the compute)")
    ap.add_argument("--tower", default="tiny-clip-vit")
    a = ap.parse_args()

    from mmit.config.schema import DataConfig, RunConfig
    from mmit.families import get_family

    torch.manual_seed(a.seed)
    cfg = RunConfig.for_family("llava")
    cfg.model.vision_tower.name, cfg.model.llm.name_or_path = a.tower, a.llm
    cfg.model.template, cfg.model.max_length = "vicuna-v1", a.max_length
    family = get_family("llava")
    model, tok = family.build(cfg)
    model.train()
    pre = family.processor(cfg, model, tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    samples, where, n_recs, n_text = draw_samples(a.samples, a.seed)
    from mmit.data.stats import SkipCounter

    counter = SkipCounter()
    for s in samples:
        pre.try_call(s, counter)
    skips = counter.as_dict()

    plans = {"baseline": (DataConfig(), a.batch),
             "grouped": (DataConfig(group_by_modality_length=True), a.batch),
             "packed": (DataConfig(group_by_modality_length=True, packing=True,
                                   max_tokens_per_batch=a.batch * a.max_length), a.cap)}
    runs = {}
    for name, (dc, bs) in plans.items():
        batches, _ = epoch_batches(samples, pre, dc, bs, a.seed)
        sup = sum(int((b.labels[:, 1:] != -100).sum()) for b in batches)
        real = sum(int(b.attention_mask.sum()) for b in batches)
        computed = sum(b.input_ids.numel() for b in batches)
        used = sum(len(i.split("+")) for b in batches for i in b.ids)
        runs[name] = {"batches": batches, "sup": sup, "real": real, "computed": computed, "used": used}
    run_epoch(model, family, opt, runs["baseline"]["batches"][:3])  # warm-up
    rates = {n: [] for n in plans}
    for _ in range(a.rounds):
        for name in plans:
            rates[name].append(runs[name]["sup"] / run_epoch(model, family, opt, runs[name]["batches"]))

    print(f"length mix: {a.samples} samples drawn from {n_recs} real records ({n_text} text-only) in {where}; "
          f"not usable at max_length {a.max_length}: {a.samples - runs['baseline']['used']} {skips}")
    print(f"model: {a.tower} + {a.llm}, max_length {a.max_length}, {torch.get_num_threads()} CPU thread(s), "
          f"device cpu, fp32; {a.rounds} interleaved rounds")
    for name, r in runs.items():
        med = statistics.median(rates[name])
        ratio = statistics.median(x / b for x, b in zip(rates[name], rates["baseline"]))
        print(f"{name:9s} batches {len(r['batches']):4d}  supervised {r['sup']:7d}  real/computed tokens "
              f"{r['real'] / r['computed']:.3f}  samples {r['used']}  {med:9.0f} supervised tokens/s  "
              f"ratio {ratio:.2f}x")
    best = max(("grouped", "packed"), key=lambda n: statistics.median(rates[n]))
    ratio = statistics.median(x / b for x, b in zip(rates[best], rates["baseline"]))
    eff = {n: runs[n]["real"] / runs[n]["computed"] for n in runs}
    print(f"ratio {best}/baseline: {ratio:.2f}x supervised tokens/s (target >= 2.0x); padding efficiency "
          f"{eff[best]:.3f} vs {eff['baseline']:.3f}")


if __name__ == "__main__":
    main()

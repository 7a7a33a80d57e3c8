"""Benchmark: mmit's training step against transformers' LlavaForConditionalGeneration with a plain
PyTorch AdamW loop, on the same tiny config, batch and data, in one process.

Prints tokens/s for each and the ratio mmit / baseline (target >= 0.95). Both models hold the same
weights (the baseline is built with ``mmit.families.llava.export.to_hf_llava``) and run in fp32 on the
CPU (or in the trainer's ``auto`` precision on a GPU for mmit, fp32 for the baseline unless
``--bf16``). Runs are interleaved (mmit, baseline, mmit, ...) so that drift in machine speed hits
both alike.

    python bench/train_step.py [--steps 20] [--batch 8] [--seq 192] [--llm tiny-llama-4l] [--no-flamingo]

Then the Flamingo row (``bench/flamingo_step.py``): mmit's Flamingo step against open_flamingo's model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from accelerate import Accelerator


def make_batch(model, batch: int, seq: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_img = model.num_image_tokens
    vocab = model.llm.config.vocab_size
    ids = torch.randint(10, vocab, (batch, seq), generator=g)
    ids[:, 1:1 + n_img] = model.image_token_id
    labels = ids.clone()
    labels[:, :1 + n_img + 8] = -100
    size = model.vision_tower.image_size
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(batch, 3, size, size, generator=g)}


def to_batch(d: dict):
    """The typed :class:`~mmit.data.batch.Batch` of a dict from :func:`make_batch` (one image per row at 1)."""
    from mmit.data.batch import Batch, MediaTensors

    B = d["input_ids"].shape[0]
    media = {"image": MediaTensors(d["pixel_values"], torch.arange(B), torch.ones(B, dtype=torch.long))}
    return Batch([str(i) for i in range(B)], d["input_ids"], d["attention_mask"], d["labels"], media)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--llm", default="tiny-llama-4l")
    ap.add_argument("--tower", default="tiny-clip-vit")
    ap.add_argument("--bf16", action="store_true", help="baseline under bf16 autocast too (GPU)")
    ap.add_argument("--no-flamingo", action="store_true", help="skip the Flamingo row (bench/flamingo_step.py)")
    a = ap.parse_args()

    from mmit.config.schema import RunConfig, TrainConfig
    from mmit.families import get_family
    from mmit.families.llava.export import to_hf_llava
    from mmit.training.optim import build_optimizer, build_scheduler
    from mmit.training.params import apply_trainable
    from mmit.training.trainer import resolve_precision, train_step

    torch.manual_seed(0)
    cfg = RunConfig.for_family("llava")
    cfg.model.vision_tower.name, cfg.model.llm.name_or_path, cfg.model.template = a.tower, a.llm, "vicuna-v1"
    cfg.train = TrainConfig(stage="full", lr=1e-4, warmup_ratio=0.0, max_grad_norm=1.0)
    family = get_family("llava")
    model, _ = family.build(cfg)
    hf = to_hf_llava(model).train()
    apply_trainable(model, family.trainable_modules(cfg))
    accelerator = Accelerator(mixed_precision=resolve_precision("auto"), cpu=not torch.cuda.is_available())
    model = accelerator.prepare(model)  # as the trainer: the optimizer is built after prepare
    opt = accelerator.prepare(build_optimizer(family.param_groups(accelerator.unwrap_model(model), cfg), cfg.train))
    sched = build_scheduler(opt, cfg.train, 10_000)
    trainable = [p for p in model.parameters() if p.requires_grad]
    device = accelerator.device
    hf.to(device)
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    raw = make_batch(accelerator.unwrap_model(model), a.batch, a.seq)
    batch = to_batch(raw)
    tokens = int(raw["attention_mask"].sum())
    hf_batch = {k: v.to(device) for k, v in raw.items()}

    def run_mmit(n):
        for _ in range(n):
            train_step(accelerator, model, opt, sched, [batch], trainable, 1.0, family)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_hf(n):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if a.bf16 else torch.autocast(device.type, enabled=False)
        for _ in range(n):
            with ctx:
                loss = hf(**hf_batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run_mmit(3)
    run_hf(3)  # warm-up
    rates = {"mmit": [], "hf": []}
    ratios = []
    for r in range(a.rounds):
        order = (("mmit", run_mmit), ("hf", run_hf))
        for name, fn in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
            t = time.perf_counter()
            fn(a.steps)
            rates[name].append(tokens * a.steps / (time.perf_counter() - t))
        ratios.append(rates["mmit"][-1] / rates["hf"][-1])
    m, h = statistics.median(rates["mmit"]), statistics.median(rates["hf"])
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"device={device.type} precision={accelerator.mixed_precision} params={n_params/1e6:.2f}M "
          f"batch={a.batch}x{a.seq} tokens/step={tokens}")
    print(f"mmit train step:             {m:10.0f} tokens/s")
    print(f"transformers Llava + AdamW:  {h:10.0f} tokens/s")
    print(f"ratio mmit/baseline: {statistics.median(ratios):.3f}  (median of {a.rounds} paired rounds; "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}; target >= 0.95)")
    if not a.no_flamingo:
        from flamingo_step import run as flamingo_row  # bench/ is on sys.path when run as a script

        flamingo_row()


if __name__ == "__main__":
    main()

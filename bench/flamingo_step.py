"""Benchmark row: mmit's Flamingo training step against open_flamingo's ``Flamingo`` forward + backward
with AdamW, on the same tiny weights, batch and interleaved images, in one process (the Flamingo row
of ``bench/train_step.py``; it also runs on its own).

Both train what OpenFlamingo trains (Perceiver, gated cross-attention blocks, input embeddings; tower
and the rest of the LLM frozen). Rounds alternate which side goes first. Prints tokens/s of each and
the ratio mmit / reference. Needs ``open-flamingo`` (installed by ``make test``'s environment).

    python bench/flamingo_step.py [--steps 10] [--rounds 6] [--batch 4] [--seq 96] [--images 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from accelerate import Accelerator


def run(steps: int = 10, rounds: int = 6, batch: int = 4, seq: int = 96, images: int = 3) -> float:
    """Print the Flamingo row and return the median ratio mmit / reference."""
    from mmit.config.schema import load_config
    from mmit.data.batch import Batch, MediaTensors
    from mmit.families import get_family
    from mmit.families.flamingo.reference import build_reference, tie_to_reference
    from mmit.models.llm import resolve_llm_path
    from mmit.training.optim import build_optimizer, build_scheduler
    from mmit.training.params import apply_trainable
    from mmit.training.trainer import resolve_precision, train_step

    torch.manual_seed(0)
    cfg = load_config("configs/otter/tiny.yaml", [
        "--train.stage=align", "--model.perceiver_depth=6", "--model.perceiver_heads=8",
        "--model.perceiver_dim_head=64", "--model.num_latents=64", "--model.xattn_heads=8",
        "--model.xattn_dim_head=64", "--model.cross_attn_every_n_layers=1", "--train.lr=1e-4",
        "--train.warmup_ratio=0", "--train.weight_decay=0"])
    family = get_family("flamingo")
    model, _ = family.build(cfg)
    ref = build_reference(model, resolve_llm_path(cfg.model.llm.name_or_path), every_n=1).train()
    tie_to_reference(model, ref)
    apply_trainable(model, family.trainable_modules(cfg))
    family.prepare_for_training(model, cfg)
    accelerator = Accelerator(mixed_precision=resolve_precision("auto"), cpu=not torch.cuda.is_available())
    model = accelerator.prepare(model)
    opt = accelerator.prepare(build_optimizer(family.param_groups(accelerator.unwrap_model(model), cfg), cfg.train))
    sched = build_scheduler(opt, cfg.train, 10_000)
    trainable = [p for p in model.parameters() if p.requires_grad]
    ref.requires_grad_(False)
    for m in (ref.perceiver, ref.lang_encoder.gated_cross_attn_layers, ref.lang_encoder.get_input_embeddings()):
        m.requires_grad_(True)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    m = accelerator.unwrap_model(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 300, (batch, seq), generator=g)
    step_len = seq // images
    ids[:, [k * step_len for k in range(images)]] = m.media_token_id
    labels = ids.clone()
    labels[ids == m.media_token_id] = -100
    size = m.vision_tower.image_size
    vision_x = torch.randn(batch, images, 1, 3, size, size, generator=g)
    where = (ids == m.media_token_id).nonzero()
    typed = Batch([str(i) for i in range(batch)], ids, torch.ones_like(ids), labels,
                  {"image": MediaTensors(vision_x[:, :, 0].flatten(0, 1), where[:, 0], where[:, 1])})
    tokens = batch * seq

    def run_mmit(n):
        for _ in range(n):
            train_step(accelerator, model, opt, sched, [typed], trainable, 1.0, family)

    def run_ref(n):
        for _ in range(n):
            loss = ref(vision_x, ids, torch.ones_like(ids), labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in ref.parameters() if p.requires_grad], 1.0)
            ref_opt.step()
            ref_opt.zero_grad(set_to_none=True)

    run_mmit(2)
    run_ref(2)
    rates = {"mmit": [], "ref": []}
    ratios = []
    for r in range(rounds):
        order = (("mmit", run_mmit), ("ref", run_ref))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            fn(steps)
            rates[name].append(tokens * steps / (time.perf_counter() - t))
        ratios.append(rates["mmit"][-1] / rates["ref"][-1])
    ratio = statistics.median(ratios)
    print(f"flamingo: batch={batch}x{seq} images/sample={images}")
    print(f"mmit flamingo train step:      {statistics.median(rates['mmit']):10.0f} tokens/s")
    print(f"open_flamingo forward+backward: {statistics.median(rates['ref']):10.0f} tokens/s")
    print(f"ratio mmit/reference (flamingo): {ratio:.3f}  (median of {rounds} paired rounds; "
          f"min {min(ratios):.3f}, max {max(ratios):.3f})")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--images", type=int, default=3)
    a = ap.parse_args()
    run(a.steps, a.rounds, a.batch, a.seq, a.images)


if __name__ == "__main__":
    main()

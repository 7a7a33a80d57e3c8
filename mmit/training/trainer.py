"""The training loop (accelerate): stages, AdamW + warmup/cosine, gradient accumulation, clipping,
mixed precision, checkpoints with exact mid-epoch resume, progress bar and metrics.

Entry point: :func:`train` (``mmit train --config_path ...``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors import safe_open
from tqdm.auto import tqdm

from mmit.config.schema import RunConfig, save_config
from mmit.data.stats import SkipCounter
from mmit.families import ModelFamily, get_family
from mmit.training.checkpoint import (latest_checkpoint, load_training_state, load_weights, prune_checkpoints,
                                      resolve_checkpoint_dir, save_checkpoint)
from mmit.training.data import SampleStream, batches, to_device
from mmit.training.metrics import MetricsLogger, loss_fell, plot_loss, read_metrics
from mmit.training.optim import build_optimizer, build_scheduler
from mmit.training.params import apply_trainable, parameter_table

log = logging.getLogger("mmit.train")


class NoUsableSampleError(ValueError):
    """Every training sample was skipped, so there is nothing to train on. The message is one line naming
    the data path and the skip reasons with their counts (``mmit train`` prints it without a traceback)."""


def no_usable_sample_error(stats: SkipCounter, data_path: str) -> NoUsableSampleError:
    """The :class:`NoUsableSampleError` for a run whose samples were all skipped: one line with the
    reasons and counts of ``stats`` and the first message of the most frequent reason."""
    counts = stats.as_dict()
    example = ""
    if counts:
        top = max(counts, key=lambda r: counts[r])
        first = (stats.examples_dict().get(top) or [""])[0]
        first = " ".join(first.split())
        example = f"; first {top}: {first[:200] + '...' if len(first) > 200 else first}" if first else ""
    return NoUsableSampleError(f"no usable training sample in {data_path}: all {stats.total} sample(s) were "
                               f"skipped ({stats.summary()}){example}")


def _is_no_usable_sample(error: RuntimeError) -> bool:
    """Whether ``error`` is :func:`mmit.training.data.batches`' "epoch produced no usable sample"."""
    return "produced no usable sample" in str(error)


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on a CUDA GPU that supports it, ``fp16`` on other GPUs, ``no`` (fp32) on CPU.
    bf16 matmuls on CPU are ~100x slower than fp32, so ``auto`` never picks them there."""
    if precision == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    table = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
    if precision not in table:  # the config's Literal refuses it at parse time; this guards direct calls
        raise ValueError(f"unknown train.precision {precision!r} (expected auto, fp32, bf16 or fp16)")
    return table[precision]


def _setup_logging(run_dir: Path) -> None:
    root = logging.getLogger("mmit")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_mmit_run", False):
            root.removeHandler(h)
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh._mmit_run = True
    root.addHandler(fh)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("[mmit] %(message)s"))
        root.addHandler(sh)


def train_step(accelerator: Accelerator, model, optimizer, scheduler, micro_batches, trainable,
               max_grad_norm: float, family: ModelFamily):
    """One optimizer step over ``micro_batches`` (gradient accumulation): forward under autocast,
    backward of loss / n, gradient sync only on the last micro-batch, clipping, AdamW, lr schedule.

    The loss of a micro-batch is ``family.loss(model, batch)``. Returns ``(mean loss over the
    micro-batches, grad norm before clipping or None)``.
    """
    n = len(micro_batches)
    step_loss = 0.0
    for i, batch in enumerate(micro_batches):
        inputs = to_device(batch, accelerator.device)
        with (nullcontext() if i == n - 1 else accelerator.no_sync(model)), accelerator.autocast():
            loss = family.loss(model, inputs)
        accelerator.backward(loss / n)
        step_loss += float(loss.detach()) / n
    grad_norm = accelerator.clip_grad_norm_(trainable, max_grad_norm) if max_grad_norm > 0 else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def train(cfg: RunConfig, stop_after_steps: Optional[int] = None) -> Path:
    """Run one training job; returns the run folder (``cfg.train.output_dir``).

    ``stop_after_steps`` ends the run early after that optimizer step, as an interruption would
    (used by the resume test). Raises ``ValueError`` for inconsistent settings,
    :class:`NoUsableSampleError` (a ``ValueError``) when every sample is skipped (the message names the
    skip reasons and counts), and ``FileNotFoundError`` for missing data or weights.
    """
    tc = cfg.train
    run_dir = Path(tc.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir)
    accelerator = Accelerator(mixed_precision=resolve_precision(tc.precision), cpu=not torch.cuda.is_available())
    set_seed(tc.seed)
    save_config(cfg, run_dir / "config.yaml")

    family = get_family(cfg.family)
    if accelerator.is_main_process:
        family.prepare_data(cfg)
    accelerator.wait_for_everyone()
    model, tokenizer = family.build(cfg)
    keep = set()  # frozen weights that `build` cannot give back: every checkpoint holds them too
    if cfg.model.init_from:
        src = resolve_checkpoint_dir(cfg.model.init_from)
        with safe_open(str(src / "model.safetensors"), "pt") as f:
            keep |= set(f.keys())
        n = load_weights(model, src / "model.safetensors")
        log.info("initialised %d tensors from %s", n, src)
    trains = apply_trainable(model, family.trainable_modules(cfg))
    family.prepare_for_training(model, cfg)  # after freezing: it may unfreeze parts (adapters, new token rows)
    keep |= {n for n, _ in model.named_parameters() if n.split(".")[0] in family.persistent_modules(cfg)}
    table, _ = parameter_table(model, list(trains))
    log.info("stage %s, parameters:\n%s", tc.stage, table)
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    stats = SkipCounter()
    stream = SampleStream(cfg.data, tc.seed, accelerator.process_index, accelerator.num_processes, stats)
    pre = family.processor(cfg, model, tokenizer)
    pre.allow_empty_answers = cfg.data.allow_empty_answers
    per_step = tc.batch_size * tc.gradient_accumulation_steps
    if tc.max_steps > 0:
        total_steps = tc.max_steps
    else:
        total_steps = max(1, math.ceil(tc.epochs * len(stream) / per_step))

    step, epoch, pos, tokens_seen = 0, 0, 0, 0
    ckpt = latest_checkpoint(run_dir) if tc.resume else None
    if tc.resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir / "checkpoints")
    if ckpt is not None:
        load_weights(model, ckpt / "model.safetensors")
        family.load_extra(model, ckpt, cfg)

    # The optimizer is built after ``prepare`` (FSDP/DeepSpeed may replace the parameters), over the
    # family's parameter groups; its state is restored after that.
    model = accelerator.prepare(model)
    optimizer = build_optimizer(family.param_groups(accelerator.unwrap_model(model), cfg), tc)
    scheduler = build_scheduler(optimizer, tc, total_steps)
    optimizer = accelerator.prepare(optimizer)
    if ckpt is not None:
        state = load_training_state(ckpt, optimizer, scheduler)
        step, epoch, pos, tokens_seen = state["step"], state["epoch"], state["position"], state["tokens_seen"]
        stats.merge(state.get("skipped", {}))
        log.info("resumed from %s: step %d, epoch %d, sample position %d", ckpt, step, epoch, pos)

    def trainer_state() -> dict:
        return {"step": step, "epoch": epoch, "position": pos, "tokens_seen": tokens_seen,
                "total_steps": total_steps, "skipped": stats.as_dict()}

    def checkpoint(path: Path, with_optimizer: bool) -> None:
        state_dict = accelerator.get_state_dict(model)  # every rank takes part (FSDP/ZeRO-3 gather)
        if accelerator.is_main_process:
            save_checkpoint(path, model=accelerator.unwrap_model(model), cfg=family.checkpoint_config(cfg),
                            tokenizer=tokenizer, trainer_state=trainer_state(),
                            optimizer=optimizer if with_optimizer else None,
                            scheduler=scheduler if with_optimizer else None, extra=family.save_extra,
                            state_dict=state_dict, keep=keep)

    metrics = MetricsLogger(run_dir, tc.report_to if accelerator.is_main_process else "none",
                            resume_step=step if ckpt is not None else None)
    data_iter = batches(stream, pre, tc.batch_size, epoch, pos, cfg.data.num_workers)
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not (tc.progress_bar and accelerator.is_main_process),
               dynamic_ncols=True, mininterval=2.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    window_loss, window_n, window_tokens, t0 = 0.0, 0, 0, time.perf_counter()
    model.train()
    while step < total_steps:
        micro_batches = []
        for _ in range(tc.gradient_accumulation_steps):
            try:
                batch, epoch, pos = next(data_iter)
            except RuntimeError as e:  # every sample skipped: one line with the reasons, no traceback
                if not _is_no_usable_sample(e):
                    raise
                bar.close()
                metrics.close()
                raise no_usable_sample_error(stats, cfg.data.path) from None
            n_tok = family.count(batch)
            window_tokens += n_tok
            tokens_seen += n_tok
            micro_batches.append(batch)
        step_loss, grad_norm = train_step(accelerator, model, optimizer, scheduler, micro_batches, trainable,
                                          tc.max_grad_norm, family)
        step += 1
        family.on_step_end(accelerator.unwrap_model(model), step)
        window_loss += step_loss
        window_n += 1
        if step % tc.logging_steps == 0 or step == total_steps:
            dt = time.perf_counter() - t0
            rec = {"loss": window_loss / window_n, "lr": scheduler.get_last_lr()[0], "epoch": epoch,
                   f"{family.unit}_per_s": window_tokens / max(dt, 1e-9), f"{family.unit}_seen": tokens_seen}
            if grad_norm is not None:
                rec["grad_norm"] = float(grad_norm)
            if accelerator.is_main_process:
                metrics.log(step, rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                            per_s=f"{rec[f'{family.unit}_per_s']:.0f}")
            window_loss, window_n, window_tokens, t0 = 0.0, 0, 0, time.perf_counter()
        bar.update(1)
        if tc.save_steps > 0 and step % tc.save_steps == 0:
            checkpoint(run_dir / "checkpoints" / f"step-{step:07d}", with_optimizer=True)
            if accelerator.is_main_process:
                prune_checkpoints(run_dir, tc.save_total_limit)
        if stop_after_steps is not None and step >= stop_after_steps and step < total_steps:
            bar.close()
            metrics.close()
            log.info("stopped after step %d (interrupted)", step)
            return run_dir
    bar.close()
    metrics.close()
    checkpoint(run_dir / "final", with_optimizer=False)
    if accelerator.is_main_process:
        png = plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")
        summary = {"steps": step, f"{family.unit}_seen": tokens_seen, "skipped": stats.as_dict(),
                   "skipped_total": stats.total, "loss_png": str(png) if png else None}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        first, last = loss_fell(read_metrics(run_dir / "metrics.jsonl"))
        summary.update(loss_first_10pct=first, loss_last_10pct=last)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        log.info("mean loss: first 10%% of logged steps %.4f, last 10%% %.4f (ratio %.3f)", first, last,
                 last / max(first, 1e-12))
        if stats:
            log.warning("skipped %d sample(s) by reason: %s", stats.total, stats.as_dict())
        log.info("done: %d steps; final weights in %s", step, run_dir / "final")
    return run_dir

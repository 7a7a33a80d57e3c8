"""The training loop (accelerate): stages, AdamW + warmup/cosine, gradient accumulation, clipping,
mixed precision, checkpoints with exact mid-epoch resume, progress bar and metrics.

One process or several (``torchrun`` / ``accelerate launch``: DDP, FSDP2, DeepSpeed ZeRO-2/3, picked by
the accelerate config; :mod:`mmit.training.distributed`): every process trains on its own share of the
data (:mod:`mmit.training.split`); only the main process logs, prints and writes files.

``data_wait``: the share of wall time the (main) process spent blocked waiting for its next batch
(:class:`~mmit.training.data.WaitClock`), per logged interval in ``metrics.jsonl`` and the progress
bar (``wait=``), and in ``summary.json`` over the whole run (``data_wait``; a resumed run: since the
resume) and as the worst logged interval (``data_wait_max``). Near 0: the input pipeline keeps up;
raise ``data.num_workers`` when it is not.

Entry point: :func:`train` (``mmit train --config_path ...``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, set_seed
from safetensors import safe_open
from tqdm.auto import tqdm

from mmit.config.schema import RunConfig, save_config
from mmit.config.trackers import parse_report_to
from mmit.data.stats import SkipCounter
from mmit.families import ModelFamily, get_family
from mmit.training.checkpoint import (latest_checkpoint, load_training_state, load_weights, prune_checkpoints,
                                      resolve_checkpoint_dir, save_checkpoint)
from mmit.training.data import SampleStream, WaitClock, batches, to_device, wait_fraction
from mmit.training.distributed import (DEEPSPEED_DIR, SavedState, build_accelerator, check_launch,
                                       fill_deepspeed_config, find_unused_parameters,
                                       freeze_unused_encoder_parameters, gather_rank_states, load_optimizer_state,
                                       optimizer_state, rank_entry, rng_state, save_deepspeed_state, save_rank_rng,
                                       set_fsdp_wrap_classes, set_rank_rng)
from mmit.training.lora import apply_lora, load_adapter
from mmit.training.metrics import MetricsLogger, NullMetrics, loss_fell, plot_loss, read_metrics
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


def _setup_logging(run_dir: Path, main: bool = True, rank: int = 0) -> None:
    """The ``mmit`` logger of a run. Main process: INFO and up to ``<run_dir>/train.log`` and to stderr
    (``[mmit] ...``). Other processes: errors only, to stderr (``[mmit rank N] ...``), so a run of N
    processes logs and prints once."""
    root = logging.getLogger("mmit")
    root.setLevel(logging.INFO if main else logging.ERROR)
    for h in list(root.handlers):
        if getattr(h, "_mmit_run", False):
            root.removeHandler(h)
    if main:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh._mmit_run = True
        root.addHandler(fh)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        sh = _StderrHandler()
        sh.setFormatter(logging.Formatter("[mmit] %(message)s" if main else f"[mmit rank {rank}] %(message)s"))
        sh._mmit_run = True
        root.addHandler(sh)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record, not the one at creation: a
    handler bound to a stream that was later closed (a test's captured stderr, a redirected notebook
    cell) fails every later record with ``I/O operation on closed file``."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _config_dict(run_dir: Path) -> dict:
    """The run's resolved config (``config.yaml``, written by the main process) as a dict, for trackers."""
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def _minus(a: dict, b: dict) -> dict:
    """Counts of ``a`` less those of ``b`` (skip reasons), zeros dropped."""
    return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}


def _global(accelerator, loss: float, tokens: int):
    """A step's (mean loss, units) over all processes (one all-reduce; as is with one process)."""
    if accelerator.num_processes == 1:
        return loss, tokens
    t = accelerator.reduce(torch.tensor([loss, float(tokens)], dtype=torch.float64, device=accelerator.device), "sum")
    return float(t[0]) / accelerator.num_processes, int(round(float(t[1])))


def train_step(accelerator: Accelerator, model, optimizer, scheduler, micro_batches, trainable,
               max_grad_norm: float, family: ModelFamily):
    """One optimizer step over ``micro_batches`` (gradient accumulation): forward under autocast,
    backward of loss / n, gradient sync only on the last micro-batch, clipping, AdamW, lr schedule.

    The loss of a micro-batch is ``family.loss(model, batch)``; ``accelerator`` was built with
    ``gradient_accumulation_steps = len(micro_batches)`` and divides it by that in ``backward`` (a
    DeepSpeed engine does so itself, and steps on its own accumulation boundary). Returns ``(mean loss
    over the micro-batches, grad norm before clipping or None)``.
    """
    n = len(micro_batches)
    if accelerator.gradient_accumulation_steps != n:
        raise ValueError(f"accelerator accumulates {accelerator.gradient_accumulation_steps} micro-batches, got {n}")
    step_loss = 0.0
    for i, batch in enumerate(micro_batches):
        inputs = to_device(batch, accelerator.device)
        with (nullcontext() if i == n - 1 else accelerator.no_sync(model)), accelerator.autocast():
            loss = family.loss(model, inputs)
        accelerator.backward(loss)
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
    skip reasons and counts), and ``FileNotFoundError`` for missing data or weights; ``ValueError``
    also for a launch that started fewer processes than asked, FSDP version 1, and a resume with
    another number of processes than the checkpoint's.
    """
    tc = cfg.train
    parse_report_to(tc.report_to)  # before anything is built (load_config checks it too)
    check_launch()
    run_dir = Path(tc.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dist = PartialState(cpu=not torch.cuda.is_available())  # the Accelerator comes once the data is known
    _setup_logging(run_dir, dist.is_main_process, dist.process_index)
    set_seed(tc.seed)
    if dist.is_main_process:
        save_config(cfg, run_dir / "config.yaml")

    family = get_family(cfg.family)
    if dist.is_main_process:
        family.prepare_data(cfg)
    dist.wait_for_everyone()
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
    apply_lora(model, cfg, trains)  # train.lora: adapters on model.llm, its own weights frozen (QLoRA: 4-bit)
    keep |= {n for n, _ in model.named_parameters() if n.split(".")[0] in family.persistent_modules(cfg)}
    for where, names in freeze_unused_encoder_parameters(model).items():  # DDP would wait for their gradients
        log.info("%s: %d tensor(s) after select_layer never reach the features: frozen", where, len(names))
    table, _ = parameter_table(model, list(trains))
    log.info("stage %s, parameters:\n%s", tc.stage, table)
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    stats = SkipCounter()
    stream = SampleStream(cfg.data, tc.seed, dist.process_index, dist.num_processes, stats, block=tc.batch_size)
    pre = family.processor(cfg, model, tokenizer)
    pre.allow_empty_answers = cfg.data.allow_empty_answers
    per_step = tc.batch_size * tc.gradient_accumulation_steps
    if tc.max_steps > 0:
        total_steps = tc.max_steps
    else:
        total_steps = max(1, math.ceil(tc.epochs * len(stream) / per_step))  # len: the same on every process
    find_unused, why = find_unused_parameters(stream.mixed_media() if dist.num_processes > 1 else False)
    accelerator = build_accelerator(resolve_precision(tc.precision), tc.gradient_accumulation_steps, find_unused)
    kind = accelerator.distributed_type
    if accelerator.num_processes > 1:
        log.info("%d processes (%s), data split by %s%s", accelerator.num_processes, kind.value, stream.split,
                 f"; DDP find_unused_parameters={find_unused} ({why})" if kind in (
                     DistributedType.MULTI_CPU, DistributedType.MULTI_GPU) else "")
    if kind == DistributedType.FSDP:
        log.info("FSDP: %s layers sharded one by one", ", ".join(set_fsdp_wrap_classes(model)) or "no")
    if kind == DistributedType.DEEPSPEED:
        fill_deepspeed_config(accelerator.state.deepspeed_plugin, tc.batch_size, tc.gradient_accumulation_steps,
                              tc.max_grad_norm, accelerator.num_processes, model)

    step, epoch, pos, tokens_seen = 0, 0, 0, 0
    ckpt = latest_checkpoint(run_dir) if tc.resume else None
    if tc.resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir / "checkpoints")
    if ckpt is not None:
        load_weights(model, ckpt / "model.safetensors")
        family.load_extra(model, ckpt, cfg)
        load_adapter(model, ckpt, inject=False)  # the LoRA adapters (llm_adapter/), when the run has them

    # The optimizer is built over the family's parameter groups of the model as built and prepared
    # together with it (FSDP2 swaps its sharded parameters in, DeepSpeed wraps it in its engine; FSDP1,
    # which needs the optimizer after wrapping, is refused); its state is restored after that.
    optimizer = build_optimizer(family.param_groups(model, cfg), tc)
    scheduler = build_scheduler(optimizer, tc, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    if ckpt is not None:
        state = load_training_state(ckpt, None, scheduler)  # rank 0's RNG; each rank's below
        load_optimizer_state(accelerator, model, optimizer, ckpt)
        mine = rank_entry(state, rank, world, ckpt)
        set_rank_rng(ckpt, rank)
        step, epoch, pos, tokens_seen = state["step"], mine["epoch"], mine["position"], state["tokens_seen"]
        own = mine.get("skipped") or {}  # per rank: this process's own; else the total, the reader's included
        stats.merge(own if "ranks" in state else _minus(own, stream.read_stats.as_dict()))
        log.info("resumed from %s: step %d, epoch %d, sample position %d", ckpt, step, epoch, pos)

    def trainer_state(ranks: list) -> dict:
        """Step and data position (rank 0's on top; every rank's under ``ranks`` with several processes)."""
        skipped = SkipCounter().merge(stream.read_stats)
        for r in ranks:
            skipped.merge(r["skipped"])
        out = {"step": step, "epoch": epoch, "position": pos, "tokens_seen": tokens_seen,
               "total_steps": total_steps, "skipped": skipped.as_dict()}
        if world > 1:
            out.update(world_size=world, ranks=[{k: r[k] for k in ("epoch", "position", "skipped")} for r in ranks])
        return out

    def checkpoint(path: Path, with_optimizer: bool) -> None:
        """Every process takes part (gathers under FSDP/ZeRO-3); the main process writes."""
        ranks = gather_rank_states(accelerator, {"epoch": epoch, "position": pos, "rng": rng_state(),
                                                 "skipped": _minus(stats.as_dict(), stream.read_stats.as_dict())})
        state_dict = accelerator.get_state_dict(model)
        opt_state = ds_dir = None
        if with_optimizer:
            ds_dir = save_deepspeed_state(accelerator, model, path.with_name(path.name + ".deepspeed"))
            opt_state = None if ds_dir else optimizer_state(accelerator, model, optimizer)
            accelerator.wait_for_everyone()

        def extra(m, folder: Path) -> None:
            family.save_extra(m, folder)
            save_rank_rng(folder, ranks)
            if ds_dir is not None:
                os.replace(ds_dir, folder / DEEPSPEED_DIR)

        if accelerator.is_main_process:
            save_checkpoint(path, model=accelerator.unwrap_model(model), cfg=family.checkpoint_config(cfg),
                            tokenizer=tokenizer, trainer_state=trainer_state(ranks),
                            optimizer=SavedState(opt_state) if opt_state is not None else None,
                            scheduler=scheduler if with_optimizer else None, extra=extra,
                            state_dict=state_dict, keep=keep)

    metrics = (MetricsLogger(run_dir, tc.report_to, resume_step=step if ckpt is not None else None,
                             project=tc.tracker_project, run_name=tc.run_name, config=_config_dict(run_dir))
               if accelerator.is_main_process else NullMetrics())
    # data_wait: the share of each logged interval spent blocked in next() (waiting for the input pipeline)
    data_iter = WaitClock(batches(stream, pre, tc.batch_size, epoch, pos, cfg.data.num_workers))
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not (tc.progress_bar and accelerator.is_main_process),
               dynamic_ncols=True, mininterval=2.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    window_loss, window_n, window_tokens, t0 = 0.0, 0, 0, time.perf_counter()
    samples, first_step_end, steps_here = 0, None, 0
    loop_start, waits = time.perf_counter(), []
    model.train()
    while step < total_steps:
        micro_batches, step_tokens = [], 0
        for _ in range(tc.gradient_accumulation_steps):
            try:
                batch, epoch, pos = next(data_iter)
            except RuntimeError as e:  # every sample skipped: one line with the reasons, no traceback
                if not _is_no_usable_sample(e):
                    raise
                bar.close()
                metrics.close()
                raise no_usable_sample_error(stats, cfg.data.path) from None
            step_tokens += family.count(batch)
            samples += len(batch.ids)
            micro_batches.append(batch)
        step_loss, grad_norm = train_step(accelerator, model, optimizer, scheduler, micro_batches, trainable,
                                          tc.max_grad_norm, family)
        step_loss, step_tokens = _global(accelerator, step_loss, step_tokens)
        window_tokens += step_tokens
        tokens_seen += step_tokens
        step += 1
        steps_here += 1
        first_step_end = first_step_end or time.perf_counter()
        family.on_step_end(accelerator.unwrap_model(model), step)
        window_loss += step_loss
        window_n += 1
        if step % tc.logging_steps == 0 or step == total_steps:
            dt = time.perf_counter() - t0
            rec = {"loss": window_loss / window_n, "lr": scheduler.get_last_lr()[0], "epoch": epoch,
                   f"{family.unit}_per_s": window_tokens / max(dt, 1e-9), f"{family.unit}_seen": tokens_seen}
            if grad_norm is not None:
                rec["grad_norm"] = float(grad_norm)
            rec["data_wait"] = wait_fraction(data_iter.take(), dt)
            waits.append(rec["data_wait"])
            metrics.log(step, rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}",
                            per_s=f"{rec[f'{family.unit}_per_s']:.0f}", wait=f"{rec['data_wait']:.0%}")
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
    per_step_s = (time.perf_counter() - first_step_end) / (steps_here - 1) if steps_here > 1 else None
    data_wait = wait_fraction(data_iter.total, time.perf_counter() - loop_start)  # this process, this run
    checkpoint(run_dir / "final", with_optimizer=False)
    seen = gather_rank_states(accelerator, {"samples": samples,
                                            "skipped": _minus(stats.as_dict(), stream.read_stats.as_dict())})
    if accelerator.is_main_process:
        png = plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png")
        skips = SkipCounter().merge(stream.read_stats)  # the reader's skips once, every process's own
        for r in seen:
            skips.merge(r["skipped"])
        summary = {"steps": step, f"{family.unit}_seen": tokens_seen, "skipped": skips.as_dict(),
                   "skipped_total": skips.total, "loss_png": str(png) if png else None, "processes": world,
                   "samples_per_process": [r["samples"] for r in seen], "seconds_per_step": per_step_s,
                   "data_wait": data_wait, "data_wait_max": max(waits, default=None)}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        first, last = loss_fell(read_metrics(run_dir / "metrics.jsonl"))
        summary.update(loss_first_10pct=first, loss_last_10pct=last)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        log.info("mean loss: first 10%% of logged steps %.4f, last 10%% %.4f (ratio %.3f)", first, last,
                 last / max(first, 1e-12))
        if skips:
            log.warning("skipped %d sample(s) by reason: %s", skips.total, skips.as_dict())
        log.info("done: %d steps; final weights in %s", step, run_dir / "final")
    return run_dir

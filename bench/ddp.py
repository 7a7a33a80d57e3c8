"""Benchmark: 2-process DDP (gloo on the CPU, NCCL on GPUs) against 1 process with gradient accumulation
2, on the same global batch, data and tiny config, each through ``mmit train`` in fresh processes.

Prints the mean optimizer-step time of each (``summary.json``'s ``seconds_per_step``: every step after the
first, so start-up and the first step's warm-up are left out), tokens/s, and the ratio
``2-process step time / 1-process step time`` (ideal 0.5 when two processes get a core or GPU each).
Runs alternate (one, ddp, one, ddp, ...) so that drift in machine speed hits both alike; the load
average is printed before and after, because on a shared CPU the figures say more about the neighbours
than about DDP. CPU figures are informative only (gloo all-reduce, 1 thread per process by default).

    python bench/ddp.py [--steps 30] [--batch 4] [--rounds 2] [--threads 1] [--stage full] [--llm tiny-llama-4l]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(launcher: list, run_dir: Path, a, accumulation: int, threads: int) -> dict:
    """One ``mmit train`` run; returns its ``summary.json``. Raises ``RuntimeError`` with the log tail."""
    args = ["-m", "mmit.cli", "train", "--config_path", str(ROOT / "configs" / "llava" / "tiny_demo.yaml"),
            "--data.format=llava", f"--data.path={ROOT / 'demo_data' / 'llava_demo.json'}",
            f"--data.media_root={ROOT / 'demo_data' / 'images'}", f"--model.llm.name_or_path={a.llm}",
            f"--train.stage={a.stage}", f"--train.batch_size={a.batch}", f"--train.max_steps={a.steps}",
            f"--train.gradient_accumulation_steps={accumulation}", "--train.save_steps=0",
            "--train.report_to=none", "--train.progress_bar=false", "--train.logging_steps=10",
            f"--train.output_dir={run_dir}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    out = subprocess.run([*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(launcher)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--batch", type=int, default=4, help="per-process micro-batch; global batch = 2 x this")
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs (one process, two processes)")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    ap.add_argument("--stage", default="full", choices=["align", "finetune", "full"])
    ap.add_argument("--llm", default="tiny-llama-4l")
    a = ap.parse_args()

    load0 = os.getloadavg()[0]
    one, ddp = [], []
    with tempfile.TemporaryDirectory(prefix="mmit-bench-ddp-") as tmp:
        for r in range(a.rounds):
            s1 = run([sys.executable], Path(tmp) / f"one{r}", a, accumulation=2, threads=a.threads)
            s2 = run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port())],
                     Path(tmp) / f"ddp{r}", a, accumulation=1, threads=a.threads)
            assert s2["processes"] == 2 and min(s2["samples_per_process"]) > 0
            one.append(s1["seconds_per_step"])
            ddp.append(s2["seconds_per_step"])
            tok = s1["tokens_seen"] / s1["steps"]
            print(f"round {r + 1}: 1 process x accumulation 2: {s1['seconds_per_step'] * 1e3:7.1f} ms/step; "
                  f"2 processes (DDP): {s2['seconds_per_step'] * 1e3:7.1f} ms/step  ({tok:.0f} tokens/step)", flush=True)
    t1, t2 = statistics.median(one), statistics.median(ddp)
    load1 = os.getloadavg()[0]
    print(f"global batch {2 * a.batch} ({a.stage}, {a.llm}, {a.threads} thread(s)/process, {os.cpu_count()} CPUs; "
          f"load average {load0:.1f} before, {load1:.1f} after)")
    print(f"median step: 1 process {t1 * 1e3:.1f} ms, 2 processes {t2 * 1e3:.1f} ms")
    print(f"ratio 2-process / 1-process step time: {t2 / t1:.3f}  (speed-up {t1 / t2:.2f}x)")


if __name__ == "__main__":
    main()

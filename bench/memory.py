"""Benchmark: peak memory of LoRA + gradient checkpointing against full fine-tuning of the same model.

The model is the tiny LLaVA config (tests/conftest.py: ``tiny-clip-vit``, the demo records) with a wider
Llama built from a ``LlamaConfig`` (default: width 1024, 12 layers, about 155 M parameters, ~0.6 GB in
fp32), so that weights, gradients and AdamW state dominate. Each mode runs ``mmit.training.trainer.train``
in its own process for a few optimizer steps (stopped before the final checkpoint, whose weight copy is not
training memory):

* ``full``: stage ``full`` of the LLM and projector (stage ``finetune``), no gradient checkpointing;
* ``lora``: the same stage with ``train.lora`` and ``train.gradient_checkpointing``: every linear layer of the
  LLM but ``lm_head``, rank ``hidden / 32`` (LLaVA-1.5's ``finetune_lora.sh``: r 128 on Vicuna-7B's width
  4096), alpha ``2 r``, dropout 0.05.

Each worker reports its peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its
resident size after the imports, before any model exists (the interpreter, torch and transformers: the
same in both modes). Printed: both peaks, the ratio of the memory training added (peak minus that
baseline; target <= 0.40) and the ratio of the raw peaks.

Both workers run with glibc's mmap threshold fixed at its default 128 KiB (``MALLOC_MMAP_THRESHOLD_``),
so that freed activation buffers go back to the system: with glibc's dynamic threshold (the default
once a large block has been freed) blocks up to 32 MiB are carved from the heap and kept after ``free``,
and the resident size then follows the allocator's fragmentation rather than live tensors (about
+0.4 GB here for LoRA, whose many small adapter tensors interleave with the activations).
``--glibc-dynamic`` measures with the dynamic threshold instead.

    python bench/memory.py [--hidden 1024] [--layers 12] [--r HIDDEN/32] [--steps 2] [--batch 4] [--glibc-dynamic]

CPU only as written (fp32); a figure measured while the machine is busy with other work is still valid
(memory, not time), but another process's memory does not count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    """Current resident set size in MiB (``/proc/self/status``; the peak so far where that is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_mb()


def peak_mb() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def wide_llama(hidden: int, layers: int) -> str:
    """A Llama of width ``hidden`` (MLP 2.6875x, heads of 64) with ``layers`` layers and the tiny
    tokenizer, built once into ``$MMIT_CACHE/bench/``; returns its folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mmit.models.cache import build_dir_once, mmit_cache_dir
    from mmit.models.tokenizer import build_tiny_tokenizer

    spec = {"family": "bench-llm", "hidden": hidden, "layers": layers, "version": 1}

    def build(tmp: Path) -> None:
        tok = build_tiny_tokenizer()
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers,
                          num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=len(tok),
                          max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    folder = mmit_cache_dir() / "bench" / f"wide-llama-{hidden}x{layers}"
    return str(build_dir_once(folder, build, spec))


def worker(mode: str, llm: str, steps: int, batch: int, out_dir: str, r: int) -> dict:
    """Train ``steps`` optimizer steps in ``mode`` (``full`` or ``lora`` of rank ``r``); returns the memory
    figures (MiB)."""
    import torch  # noqa: F401  (imported before the baseline is read, as the trainer imports it)

    from mmit.config.schema import RunConfig
    from mmit.training.trainer import train

    base = rss_mb()
    cfg = RunConfig()
    cfg.model.vision_tower.name, cfg.model.llm.name_or_path = "tiny-clip-vit", llm
    cfg.model.template, cfg.model.max_length = "vicuna-v1", 160
    cfg.data.format, cfg.data.path = "llava", str(ROOT / "demo_data" / "llava_demo.json")
    cfg.data.media_root = str(ROOT / "demo_data" / "images")
    t = cfg.train
    t.stage, t.output_dir, t.seed, t.batch_size, t.max_steps = "finetune", out_dir, 0, batch, steps + 1
    t.lr, t.warmup_ratio, t.report_to, t.progress_bar, t.save_steps = 1e-4, 0.0, "none", False, 0
    if mode == "lora":
        t.lora.enabled, t.lora.r, t.lora.alpha, t.gradient_checkpointing = True, r, 2 * r, True
    train(cfg, stop_after_steps=steps)  # stops before the final checkpoint
    return {"mode": mode, "baseline_mb": base, "peak_mb": peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--r", type=int, default=0, help="LoRA rank (default: hidden / 32)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--glibc-dynamic", action="store_true", help="keep glibc's dynamic mmap threshold")
    ap.add_argument("--worker", choices=["full", "lora"], help=argparse.SUPPRESS)
    ap.add_argument("--llm", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.r = a.r or max(1, a.hidden // 32)
    if a.worker:
        print("RESULT " + json.dumps(worker(a.worker, a.llm, a.steps, a.batch, a.out, a.r)), flush=True)
        return
    llm = wide_llama(a.hidden, a.layers)
    res = {}
    with tempfile.TemporaryDirectory(prefix="mmit-bench-memory-") as tmp:
        for mode in ("full", "lora"):
            cmd = [sys.executable, __file__, "--worker", mode, "--llm", llm, "--out", str(Path(tmp) / mode),
                   "--steps", str(a.steps), "--batch", str(a.batch), "--r", str(a.r)]
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
            if not a.glibc_dynamic:
                env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode != 0 or not lines:
                sys.exit(f"bench/memory.py: the {mode} worker failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
            res[mode] = json.loads(lines[-1][len("RESULT "):])
    full, lora = res["full"], res["lora"]
    malloc = "glibc dynamic mmap threshold" if a.glibc_dynamic else "MALLOC_MMAP_THRESHOLD_=131072"
    print(f"model: tiny LLaVA with a {a.hidden}-wide {a.layers}-layer Llama ({llm}); {a.steps} steps, batch {a.batch}; "
          f"{malloc}")
    for r, what in ((full, "full fine-tuning (LLM + projector)"), (lora, f"LoRA r{a.r} + gradient checkpointing")):
        print(f"  {what:<36} peak RSS {r['peak_mb']:8.0f} MiB  after imports {r['baseline_mb']:6.0f} MiB  "
              f"training added {r['peak_mb'] - r['baseline_mb']:8.0f} MiB")
    added = (lora["peak_mb"] - lora["baseline_mb"]) / max(full["peak_mb"] - full["baseline_mb"], 1e-9)
    print(f"ratio LoRA+GC / full, memory training added: {added:.3f} (target <= 0.40)")
    print(f"ratio LoRA+GC / full, raw peak RSS:          {lora['peak_mb'] / full['peak_mb']:.3f}")


if __name__ == "__main__":
    main()

"""``mmit eval --config_path SUITE.yaml --checkpoint DIR --output DIR [--batch_size=N --max_samples=N]``.

Runs a suite (or a single task file) on a checkpoint or run folder, writes ``results.json``,
``predictions.jsonl`` and the bar chart into ``--output``, and prints the table. Any other
``--field=value`` overrides a suite field (draccus). ``--trust-remote-code`` lets the model folders
the checkpoint names run their own code (off by default; a checkpoint's config cannot turn it on).
"""

from __future__ import annotations

import sys
from typing import List

USAGE = ("usage: mmit eval --config_path SUITE.yaml --checkpoint DIR --output DIR "
         "[--batch_size=N] [--max_samples=N] [--quiet] [--trust-remote-code]")


def _take(argv: List[str], name: str):
    """Remove ``--name VALUE`` / ``--name=VALUE`` from argv; returns the value or None."""
    for i, a in enumerate(argv):
        if a == f"--{name}" and i + 1 < len(argv):
            v = argv[i + 1]
            del argv[i:i + 2]
            return v
        if a.startswith(f"--{name}="):
            del argv[i]
            return a.split("=", 1)[1]
    return None


def main(argv: List[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__)
        return 0 if argv else 2
    quiet = "--quiet" in argv
    trust_remote_code = "--trust-remote-code" in argv
    argv = [a for a in argv if a not in ("--quiet", "--trust-remote-code")]
    config_path = _take(argv, "config_path")
    checkpoint = _take(argv, "checkpoint")
    output = _take(argv, "output")
    missing = [n for n, v in (("--config_path", config_path), ("--checkpoint", checkpoint), ("--output", output))
               if not v]
    if missing:
        print(f"mmit eval: error: missing {', '.join(missing)}\n{USAGE}", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("mmit").setLevel(logging.WARNING if quiet else logging.INFO)
    from mmit.evaluation.report import format_table
    from mmit.evaluation.runner import run_suite

    loaded = {}
    if trust_remote_code:  # run_suite loads without it; load here with the caller's permission
        from mmit.inference import load_for_inference
        from mmit.training.checkpoint import resolve_checkpoint_dir

        checkpoint = str(resolve_checkpoint_dir(checkpoint))
        model, processor, _ = load_for_inference(checkpoint, trust_remote_code=trust_remote_code)
        loaded = {"model": model, "processor": processor}
    results = run_suite(config_path, checkpoint, output, argv, progress=not quiet, **loaded)
    print(format_table(results))
    print(f"results: {output}/results.json  predictions: {output}/predictions.jsonl"
          + (f"  chart: {results['plot']}" if results.get("plot") else ""))
    return 0

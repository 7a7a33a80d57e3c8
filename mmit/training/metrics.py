"""Run logs: ``metrics.jsonl`` (one JSON object per logged step, with a ``loss`` key), tensorboard
event files, and ``loss.png`` at the end (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional


class MetricsLogger:
    """Append-only metrics for one run folder. On resume, lines past the resumed step are dropped so
    ``metrics.jsonl`` reads as one uninterrupted run; a new run deletes the old file. Create it on the
    main process only (the others use :class:`NullMetrics`): a second logger would delete or
    interleave the main one's lines. Raises ``ValueError`` for an unknown ``report_to``."""

    def __init__(self, run_dir: str | Path, report_to: str = "tensorboard", resume_step: Optional[int] = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a")
        self._tb = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)
        elif report_to != "none":
            raise ValueError(f"unknown train.report_to {report_to!r} (expected tensorboard or none)")

    def log(self, step: int, values: Dict[str, float]) -> None:
        rec = {"step": step, **values}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


class NullMetrics:
    """What the processes other than the main one log: nothing (no file is opened or deleted)."""

    def log(self, step: int, values: Dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: str | Path) -> List[dict]:
    """The records of a ``metrics.jsonl`` file, in order. Raises ``json.JSONDecodeError`` on a bad line."""
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


def plot_loss(metrics_path: str | Path, out_png: str | Path) -> Optional[Path]:
    """Plot loss (and lr on a second axis) against step into ``out_png``; None if nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in rows], label="loss", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean CE per supervised token)")
    if all("lr" in r for r in rows):
        ax2 = ax.twinx()
        ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
        ax2.set_ylabel("learning rate")
    ax.set_title(Path(metrics_path).parent.name)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def loss_fell(rows: List[dict], fraction: float = 0.1) -> tuple:
    """(mean of the first ``fraction`` of logged losses, mean of the last ``fraction``)."""
    losses = [r["loss"] for r in rows if "loss" in r]
    k = max(1, int(len(losses) * fraction))
    return sum(losses[:k]) / k, sum(losses[-k:]) / k

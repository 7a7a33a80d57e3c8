"""Run logs: ``metrics.jsonl`` (one JSON object per logged step, with a ``loss`` key), tensorboard
event files, wandb / mlflow runs (through accelerate's trackers), and ``loss.png`` at the end
(matplotlib)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from mmit.config.trackers import parse_report_to

def _accelerate_trackers(names: Sequence[str], run_dir: Path, project: str, run_name: str, config: dict) -> list:
    """wandb / mlflow through ``accelerate.tracking`` (the classes ``Accelerator(log_with=...)`` builds),
    started on this (main) process. mlflow logs to the SQLite store ``<run_dir>/mlflow.db`` (see
    :func:`mlflow_uri`; its file store is deprecated) unless ``MLFLOW_TRACKING_URI`` is set; wandb writes under ``<run_dir>`` (``WANDB_DIR``) and honours ``WANDB_MODE=offline``.
    Raises ``ImportError`` with the pip command when the package is missing."""
    out = []
    for name in names:
        if name == "tensorboard":
            continue
        module = {"wandb": "wandb", "mlflow": "mlflow"}[name]
        try:
            __import__(module)
        except ImportError:
            raise ImportError(f"train.report_to={name} needs the {module} package: pip install "
                              f"{'mlflow-skinny sqlalchemy alembic' if name == 'mlflow' else 'wandb'}") from None
        from accelerate.tracking import MLflowTracker, WandBTracker

        if name == "wandb":
            os.environ.setdefault("WANDB_DIR", str(run_dir))
            tracker = WandBTracker(project, name=run_name, dir=str(run_dir))
        else:
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                import mlflow

                mlflow.set_tracking_uri(mlflow_uri(run_dir))
            tracker = MLflowTracker(experiment_name=project, logging_dir=str((run_dir / "mlartifacts").resolve()),
                                    run_name=run_name)
        tracker.start()
        tracker.store_init_configuration(config)
        out.append(tracker)
    return out


def mlflow_uri(run_dir: str | Path) -> str:
    """The tracking URI a run logs to when ``MLFLOW_TRACKING_URI`` is unset: ``sqlite:///<run_dir>/mlflow.db``
    (open it with ``mlflow ui --backend-store-uri`` and this URI)."""
    return "sqlite:///" + str((Path(run_dir) / "mlflow.db").resolve())


def flat_config(d: dict, prefix: str = "") -> Dict[str, object]:
    """A nested config dict as ``{"train.lr": 0.001, ...}`` with scalar values (lists as strings), the
    form trackers store hyperparameters in."""
    out: Dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return out


class MetricsLogger:
    """Append-only metrics for one run folder. On resume, lines past the resumed step are dropped so
    ``metrics.jsonl`` reads as one uninterrupted run; a new run deletes the old file. Create it on the
    main process only (the others use :class:`NullMetrics`): a second logger would delete or
    interleave the main one's lines. Raises ``ValueError`` for an unknown ``report_to``."""

    def __init__(self, run_dir: str | Path, report_to: str = "tensorboard", resume_step: Optional[int] = None,
                 project: str = "mmit", run_name: str = "", config: Optional[dict] = None):
        names = parse_report_to(report_to)
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [l for l in self.path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
            self.path.write_text("".join(l + "\n" for l in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a")
        self._tb = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)
        self._trackers = _accelerate_trackers(names, self.run_dir, project, run_name or self.run_dir.name,
                                              flat_config(config or {}))

    def log(self, step: int, values: Dict[str, float]) -> None:
        rec = {"step": step, **values}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)
        numeric = {f"train/{k}": v for k, v in values.items() if isinstance(v, (int, float))}
        for tracker in self._trackers:
            tracker.log(numeric, step=step)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        for tracker in self._trackers:
            tracker.finish()
        self._trackers = []


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

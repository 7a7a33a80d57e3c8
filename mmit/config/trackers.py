"""``train.report_to``: which trackers a run logs to (checked when the config loads)."""

from __future__ import annotations

from typing import List

#: What ``train.report_to`` may name (comma-separated for several).
TRACKERS = ("tensorboard", "wandb", "mlflow")


def parse_report_to(value: str) -> List[str]:
    """``train.report_to`` as a list of tracker names: ``"tensorboard,wandb"`` -> ``["tensorboard",
    "wandb"]``; ``"none"`` or ``""`` -> ``[]``. Raises ``ValueError`` naming the bad entry and the
    accepted ones (checked when the config loads, before any model is built)."""
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    if names == ["none"]:
        return []
    for n in names:
        if n not in TRACKERS:
            import difflib

            close = difflib.get_close_matches(n, TRACKERS + ("none",), n=1)
            raise ValueError(f"unknown train.report_to {n!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; expected {', '.join(TRACKERS)}, several comma-separated, or none")
    if len(set(names)) != len(names):
        raise ValueError(f"train.report_to names a tracker twice: {value!r}")
    return names

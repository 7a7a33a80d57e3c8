"""Which parameters train in each stage, decided in one place and logged as a table.

Stages follow LLaVA (arXiv 2304.08485 §4.2): ``align`` trains the projector only (stage 1, feature
alignment); ``finetune`` trains the projector and the LLM (stage 2, visual instruction tuning);
``full`` trains everything, the vision tower included.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from torch import nn

STAGES = ("align", "finetune", "full")
MODULES = ("vision_tower", "projector", "llm")


def apply_stage(model: nn.Module, stage: str, tower_frozen: bool = True) -> Dict[str, bool]:
    """Set ``requires_grad`` on ``model.vision_tower``, ``model.projector`` and ``model.llm``.

    Returns module name -> trains. Raises ``ValueError`` for an unknown stage.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown train.stage {stage!r} (expected one of {', '.join(STAGES)})")
    trains = {
        "vision_tower": stage == "full" or (stage == "finetune" and not tower_frozen),
        "projector": True,
        "llm": stage in ("finetune", "full"),
    }
    for name, on in trains.items():
        getattr(model, name).requires_grad_(on)
    return trains


def parameter_table(model: nn.Module, modules: Sequence[str] = MODULES) -> Tuple[str, List[Dict[str, object]]]:
    """A text table of trainable and frozen parameter counts per top-level module, and its rows."""
    rows = []
    for name in modules:
        mod = getattr(model, name)
        trainable = sum(p.numel() for p in mod.parameters() if p.requires_grad)
        total = sum(p.numel() for p in mod.parameters())
        rows.append({"module": name, "trainable": trainable, "frozen": total - trainable, "total": total})
    tot = {k: sum(r[k] for r in rows) for k in ("trainable", "frozen", "total")}
    lines = [f"{'module':<14}{'trainable':>14}{'frozen':>14}{'total':>14}"]
    for r in rows + [{"module": "all", **tot}]:
        lines.append(f"{r['module']:<14}{r['trainable']:>14,}{r['frozen']:>14,}{r['total']:>14,}")
    return "\n".join(lines), rows

"""What trains: the family names the modules per stage; this module applies it and logs it as a table.

The family's :meth:`~mmit.families.base.ModelFamily.trainable_modules` decides (prismatic-vlms'
``freeze_backbones`` pattern: one function per family, one place that sets ``requires_grad``).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

from torch import nn


def apply_trainable(model: nn.Module, trains: Mapping[str, bool]) -> Dict[str, bool]:
    """Set ``requires_grad`` on each top-level module named in ``trains``. Raises ``AttributeError``
    naming a module the model does not have. Returns ``trains`` as a dict."""
    for name, on in trains.items():
        mod = getattr(model, name, None)
        if not isinstance(mod, nn.Module):
            raise AttributeError(f"{type(model).__name__} has no module {name!r} (named by the family's stage policy)")
        mod.requires_grad_(bool(on))
    return dict(trains)


def parameter_table(model: nn.Module, modules: Sequence[str]) -> Tuple[str, List[Dict[str, object]]]:
    """A text table of trainable and frozen parameter counts per top-level module, and its rows."""
    rows = []
    for name in modules:
        mod = getattr(model, name)
        trainable = sum(p.numel() for p in mod.parameters() if p.requires_grad)
        total = sum(p.numel() for p in mod.parameters())
        rows.append({"module": name, "trainable": trainable, "frozen": total - trainable, "total": total})
    tot = {k: sum(r[k] for r in rows) for k in ("trainable", "frozen", "total")}
    w = max([14] + [len(r["module"]) + 2 for r in rows])
    lines = [f"{'module':<{w}}{'trainable':>14}{'frozen':>14}{'total':>14}"]
    for r in rows + [{"module": "all", **tot}]:
        lines.append(f"{r['module']:<{w}}{r['trainable']:>14,}{r['frozen']:>14,}{r['total']:>14,}")
    return "\n".join(lines), rows

"""Human-readable views of ``results.json``: the terminal table and the held-in vs held-out bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional


def _fmt(x: Optional[float], pct: bool) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.4f}"


def format_table(results: Dict[str, Any]) -> str:
    """A plain-text table: one row per task (held-in first) with the split, samples, headline metric,
    its value, the chance level beside it and, with several templates, the spread across them;
    then one row per split with the means (and instruction sensitivity when defined).
    Accuracies and other [0, 1] figures are shown in percent."""
    rows: List[List[str]] = [["task", "split", "n", "metric", "score", "chance", "templates (min-max)"]]
    tasks = results["tasks"]
    order = sorted(tasks, key=lambda n: (tasks[n]["split"] != "held-in", list(tasks).index(n)))
    for name in order:
        r = tasks[name]
        m = r["metric"]
        pt = r.get("per_template") or {}
        spread = "-"
        if pt:
            vals = [v[m] for v in pt.values() if v.get(m) is not None]
            spread = f"{_fmt(min(vals), True)}-{_fmt(max(vals), True)}" if vals else "-"
        rows.append([name, r["split"], str(r["n"]), m, _fmt(r.get(m), True), _fmt(r.get("chance"), True), spread])
    for split, s in results.get("splits", {}).items():
        sens = s.get("instruction-sensitivity")
        rows.append([f"MEAN {split}", split, str(sum(tasks[n]["n"] for n in s["tasks"])), "mean",
                     _fmt(s["mean"], True), _fmt(s.get("chance"), True),
                     "-" if sens is None else f"sensitivity {sens:.3f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i in (2, 4, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0 or (j == len(tasks)):
            lines.append("  ".join("-" * w for w in widths))
    head = (f"suite {results.get('suite')}  checkpoint {results.get('checkpoint')}  "
            f"config {results.get('config_hash')}  (scores and chance in %)")
    return head + "\n" + "\n".join(lines)


def plot_results(results: Dict[str, Any], out_png) -> Optional[Path]:
    """Bar chart of every task's headline figure (held-in blue, held-out orange, split means
    hatched) with its chance level as a black tick; written to ``out_png`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    if not tasks:
        return None
    names = sorted(tasks, key=lambda n: (tasks[n]["split"] != "held-in", list(tasks).index(n)))
    labels, vals, chances, colors, hatches = [], [], [], [], []
    palette = {"held-in": "#4C72B0", "held-out": "#DD8452"}
    for n in names:
        r = tasks[n]
        labels.append(n)
        vals.append(r.get(r["metric"]) or 0.0)
        chances.append(r.get("chance"))
        colors.append(palette[r["split"]])
        hatches.append("")
    for split, s in results.get("splits", {}).items():
        labels.append(f"mean {split}")
        vals.append(s["mean"])
        chances.append(s.get("chance"))
        colors.append(palette[split])
        hatches.append("//")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(labels) + 2), 4.2))
    xs = list(range(len(labels)))
    bars = ax.bar(xs, vals, color=colors)
    for b, h in zip(bars, hatches):
        b.set_hatch(h)
    for x, c in zip(xs, chances):
        if c is not None:
            ax.plot([x - 0.4, x + 0.4], [c, c], color="black", linewidth=1.5)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("headline metric (black line: chance)")
    ax.set_title(f"{results.get('suite', '')}: held-in (blue) vs held-out (orange)")
    top = max([v for v in vals] + [c for c in chances if c is not None] + [1e-9])
    ax.set_ylim(0, max(1.0, top * 1.05))
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

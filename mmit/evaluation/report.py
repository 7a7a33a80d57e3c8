"""Human-readable views of ``results.json``: the terminal table and the held-in vs held-out bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional


def _fmt(x: Optional[float], pct: bool) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.4f}"


def _ci(r: Dict[str, Any]) -> str:
    ci = r.get("ci95")
    return f"{_fmt(ci[0], True)}-{_fmt(ci[1], True)}" if ci else "-"


def _spread(r: Dict[str, Any]) -> str:
    m = r["metric"]
    vals = [v[m] for v in (r.get("per_template") or {}).values() if v.get(m) is not None]
    return f"{_fmt(min(vals), True)}-{_fmt(max(vals), True)}" if vals else "-"


def format_table(results: Dict[str, Any]) -> str:
    """A plain-text table: one row per task (held-in first) with the split, samples, headline metric,
    its value, its 95% confidence interval, uniform chance (1 / #candidates), the majority
    (best constant answer) baseline and, with several templates, the spread across them; then one
    row per split with the means (and instruction sensitivity when defined). A score is only
    better than guessing when its interval lies above both chance and majority.
    Accuracies and other [0, 1] figures are shown in percent.

    When a task reports k-shot results (``tasks[name]["shots"]``), a ``shots`` column is added and
    every task and split gets one row per k, in the task's ``shots`` order (zero-shot-only tasks:
    one row, k = 0); without any, the table is the zero-shot one."""
    tasks = results["tasks"]
    by_k = any("shots" in r for r in tasks.values())
    rows: List[List[str]] = [["task", "split"] + (["shots"] if by_k else []) +
                             ["n", "metric", "score", "95% CI", "chance", "majority", "templates (min-max)"]]
    order = sorted(tasks, key=lambda n: (tasks[n]["split"] != "held-in", list(tasks).index(n)))
    for name in order:
        r = tasks[name]
        for k, rk in (r.get("shots") or {"0": r}).items():
            m = rk["metric"]
            rows.append([name, r["split"]] + ([k] if by_k else []) +
                        [str(rk["n"]), m, _fmt(rk.get(m), True), _ci(rk), _fmt(rk.get("chance"), True),
                         _fmt(rk.get("majority"), True), _spread(rk)])
    n_task_rows = len(rows) - 1
    for split, s in results.get("splits", {}).items():
        sens = s.get("instruction-sensitivity")
        sens = "-" if sens is None else f"sensitivity {sens:.3f}"
        if by_k and s.get("shots"):
            for j, (k, sk) in enumerate(s["shots"].items()):
                n = sum((tasks[t].get("shots") or {"0": tasks[t]})[k]["n"] for t in s["tasks"])
                rows.append([f"MEAN {split}", split, k, str(n), "mean", _fmt(sk["mean"], True), "-",
                             _fmt(sk.get("chance"), True), _fmt(sk.get("majority"), True), sens if j == 0 else "-"])
            continue
        rows.append([f"MEAN {split}", split] + (["-"] if by_k else []) +
                    [str(sum(tasks[n]["n"] for n in s["tasks"])), "mean", _fmt(s["mean"], True), _ci(s),
                     _fmt(s.get("chance"), True), _fmt(s.get("majority"), True), sens])
    right = {2, 4, 5, 6, 7} if not by_k else {2, 3, 5, 6, 7, 8}
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0 or j == n_task_rows:
            lines.append("  ".join("-" * w for w in widths))
    head = (f"suite {results.get('suite')}  checkpoint {results.get('checkpoint')}  "
            f"config {results.get('config_hash')}  (scores, chance and majority in %)")
    foot = f"\n{results['ci_method']}" if results.get("ci_method") else ""
    return head + "\n" + "\n".join(lines) + foot


def plot_results(results: Dict[str, Any], out_png) -> Optional[Path]:
    """Bar chart of every task's headline figure (held-in blue, held-out orange, split means
    hatched) with its 95% confidence interval as an error bar, its chance level as a black tick and
    its majority (constant-answer) baseline as a red dashed tick; written to ``out_png``
    (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    if not tasks:
        return None
    names = sorted(tasks, key=lambda n: (tasks[n]["split"] != "held-in", list(tasks).index(n)))
    labels, vals, chances, colors, hatches, majors, cis = [], [], [], [], [], [], []
    palette = {"held-in": "#4C72B0", "held-out": "#DD8452"}
    for n in names:
        r = tasks[n]
        labels.append(n)
        vals.append(r.get(r["metric"]) or 0.0)
        chances.append(r.get("chance"))
        majors.append(r.get("majority"))
        cis.append(r.get("ci95"))
        colors.append(palette[r["split"]])
        hatches.append("")
    for split, s in results.get("splits", {}).items():
        labels.append(f"mean {split}")
        vals.append(s["mean"])
        chances.append(s.get("chance"))
        majors.append(s.get("majority"))
        cis.append(s.get("ci95"))
        colors.append(palette[split])
        hatches.append("//")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(labels) + 2), 4.2))
    xs = list(range(len(labels)))
    # error bars: distances below / above the bar (0 where a figure has no interval)
    yerr = [[max(0.0, v - c[0]) if c else 0.0 for v, c in zip(vals, cis)],
            [max(0.0, c[1] - v) if c else 0.0 for v, c in zip(vals, cis)]]
    bars = ax.bar(xs, vals, color=colors, yerr=yerr, capsize=3, ecolor="#333333")
    for b, h in zip(bars, hatches):
        b.set_hatch(h)
    for x, c in zip(xs, chances):
        if c is not None:
            ax.plot([x - 0.4, x + 0.4], [c, c], color="black", linewidth=1.5)
    for x, m in zip(xs, majors):
        if m is not None:
            ax.plot([x - 0.4, x + 0.4], [m, m], color="#C00000", linewidth=1.5, linestyle="--")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("headline metric, 95% CI\n(black: chance, red dashed: majority)")
    ax.set_title(f"{results.get('suite', '')}: held-in (blue) vs held-out (orange)")
    top = max([v for v in vals] + [c for c in chances + majors if c is not None] +
              [c[1] for c in cis if c] + [1e-9])
    ax.set_ylim(0, max(1.0, top * 1.05))
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

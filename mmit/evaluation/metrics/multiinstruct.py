"""MultiInstruct's summary metrics over instruction templates (Xu et al., arXiv 2212.10773):
``multiinstruct-aggregate`` and ``instruction-sensitivity``.

Each unseen task is evaluated once per instruction template (5 in MultiInstruct). Both metrics take
either

* per-template rows ``{"task": str, "template": int, "score": float}`` (the task's main metric
  under that template, e.g. accuracy for classification, ROUGE-L for open-ended tasks), or
* per-sample records (``task``, ``template`` and whatever the task's metric reads) together with the
  option ``metric``: a metric name, or ``{task: metric name}``; the rows are then computed by
  grouping the records by ``(task, template)`` and running that metric on each group.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from mmit.evaluation.metrics.base import Metric, MetricError, check_options, nonempty, where


def template_scores(records: Sequence[Mapping[str, Any]], metric_name: str,
                    metric: Union[None, str, Mapping[str, str]] = None,
                    ) -> "OrderedDict[str, Dict[Any, float]]":
    """``{task: {template: score}}`` in first-seen order, from rows or per-sample records (see
    module docstring). Raises :class:`MetricError` naming the record when ``task`` is missing, or
    when sample records come without a ``metric`` option."""
    out: "OrderedDict[str, Dict[Any, float]]" = OrderedDict()
    groups: "OrderedDict[tuple, List[Mapping[str, Any]]]" = OrderedDict()
    for i, r in enumerate(records):
        task = r.get("task") if isinstance(r, Mapping) else None
        if not isinstance(task, str) or not task:
            raise MetricError(f"{where(metric_name, i, r if isinstance(r, Mapping) else {})}: "
                              f"needs a 'task' name")
        template = r.get("template", 0)
        if "score" in r and metric is None:
            try:
                out.setdefault(task, {})[template] = float(r["score"])
            except (TypeError, ValueError):
                raise MetricError(f"{where(metric_name, i, r)}: 'score' must be a number, got "
                                  f"{r['score']!r}") from None
        elif metric is None:
            raise MetricError(f"{where(metric_name, i, r)}: has no 'score'; pass per-template rows "
                              f"or the option metric=<name> to score per-sample records")
        else:
            groups.setdefault((task, template), []).append(r)
    if groups:
        from mmit.evaluation.metrics import get_metric

        for (task, template), rs in groups.items():
            name = metric.get(task) if isinstance(metric, Mapping) else metric
            if name is None:
                raise MetricError(f"{metric_name}: no metric given for task {task!r}")
            out.setdefault(task, {})[template] = get_metric(name).compute(rs)[name]
    return out


class MultiInstructAggregate(Metric):
    """``multiinstruct-aggregate``: mean over tasks of each task's score, a task's score being the
    mean of its per-template scores. Also returns ``multiinstruct-aggregate/<task>`` per task.
    Options: ``metric`` (see module docstring)."""

    name = "multiinstruct-aggregate"
    options = ("metric",)

    def compute(self, records, **options) -> Dict[str, float]:
        check_options(self.name, options, self.options)
        nonempty(self.name, records)
        per_task = template_scores(records, self.name, options.get("metric"))
        task_means = {t: sum(s.values()) / len(s) for t, s in per_task.items()}
        out = {self.name: sum(task_means.values()) / len(task_means)}
        out.update({f"{self.name}/{t}": v for t, v in task_means.items()})
        return out


class InstructionSensitivity(Metric):
    """``instruction-sensitivity``: for each task, the standard deviation of its scores across
    instruction templates divided by their mean; averaged over tasks. Lower is better.

    Options: ``metric`` (see module docstring); ``ddof`` (0 = population std, the default; 1 =
    sample std). Returns also ``instruction-sensitivity/<task>``. A task needs at least two
    templates (else :class:`MetricError`); a task whose mean score is 0 has no defined ratio and is
    left out of the average, counted in ``instruction-sensitivity/undefined-tasks``.
    """

    name = "instruction-sensitivity"
    higher_is_better = False
    options = ("metric", "ddof")

    def compute(self, records, **options) -> Dict[str, float]:
        check_options(self.name, options, self.options)
        nonempty(self.name, records)
        ddof = int(options.get("ddof", 0))
        per_task = template_scores(records, self.name, options.get("metric"))
        out: Dict[str, float] = {}
        values, undefined = [], 0
        for task, by_template in per_task.items():
            s = list(by_template.values())
            if len(s) < 2 or len(s) - ddof < 1:
                raise MetricError(f"{self.name}: task {task!r} has {len(s)} template score(s); "
                                  f"sensitivity needs at least 2")
            mean = sum(s) / len(s)
            if mean == 0:
                undefined += 1
                continue
            std = math.sqrt(sum((x - mean) ** 2 for x in s) / (len(s) - ddof))
            out[f"{self.name}/{task}"] = std / mean
            values.append(std / mean)
        main = sum(values) / len(values) if values else float("nan")
        return {self.name: main, **out, f"{self.name}/undefined-tasks": float(undefined)}

    def correct(self, record) -> Optional[bool]:
        return None

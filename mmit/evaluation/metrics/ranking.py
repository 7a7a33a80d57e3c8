"""Metrics over ranked candidates: ``roc-auc`` (HatefulMemes) and ``mrr`` (Visual Dialog).

Both read records scored by a ``rank`` scorer: ``candidates`` (list[str]) with aligned ``scores``
(log-likelihoods, higher = more likely), and the gold answer in ``label`` (a candidate string or
an integer index into ``candidates``), else ``reference``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Dict, Mapping, Optional

from mmit.evaluation.metrics.accuracy import MCAccuracy, gold_choice
from mmit.evaluation.metrics.base import (Metric, MetricError, check_options, get_ranked,
                                          nonempty, where)

log = logging.getLogger(__name__)


def _canon(text: Any) -> str:
    return str(text).strip().lower()


def gold_index(record: Mapping[str, Any], metric: str, index: Optional[int] = None) -> int:
    """Index of the gold answer among ``record["candidates"]`` (see module docstring)."""
    cands, _ = get_ranked(record, metric, index)
    gold = _canon(gold_choice(record, metric, index))
    for j, c in enumerate(cands):
        if _canon(c) == gold:
            return j
    raise MetricError(f"{where(metric, index, record)}: gold answer {gold!r} is not among the "
                      f"{len(cands)} candidates")


def gold_rank(record: Mapping[str, Any], metric: str = "mrr", index: Optional[int] = None) -> int:
    """1-based rank of the gold candidate when candidates are sorted by score, highest first.

    Ties keep candidate order (a stable sort, as Visual Dialog's ``scores_to_ranks``): a candidate
    ranks above the gold one when its score is higher, or equal and it comes earlier.
    """
    _, scores = get_ranked(record, metric, index)
    g = gold_index(record, metric, index)
    sg = scores[g]
    return 1 + sum(1 for j, s in enumerate(scores) if s > sg or (s == sg and j < g))


class MRR(Metric):
    """``mrr``: mean reciprocal rank of the gold answer among the candidates (Visual Dialog, Das et
    al., arXiv 1611.08669: 100 options per question). Also returns ``r@1``, ``r@5``, ``r@10``
    (fraction with the gold answer in the top k) and ``mean-rank``. ``correct``: gold ranked first.
    """

    name = "mrr"
    per_record = True

    def compute(self, records, **options) -> Dict[str, float]:
        check_options(self.name, options, ())
        nonempty(self.name, records)
        ranks = [gold_rank(r, self.name, i) for i, r in enumerate(records)]
        n = len(ranks)
        out = {self.name: sum(1.0 / k for k in ranks) / n}
        for k in (1, 5, 10):
            out[f"r@{k}"] = sum(1 for r in ranks if r <= k) / n
        out["mean-rank"] = sum(ranks) / n
        return out

    def correct(self, record) -> Optional[bool]:
        return gold_rank(record, self.name) == 1


def positive_probability(record: Mapping[str, Any], positive: str, metric: str = "roc-auc",
                         index: Optional[int] = None) -> float:
    """Probability of the positive class: ``record["positive_score"]`` when given, else the
    softmax over the candidates' log-likelihoods taken at the candidate equal to ``positive``
    (for two classes, ``sigmoid(score_pos - score_neg)``)."""
    if record.get("positive_score") is not None:
        return float(record["positive_score"])
    cands, scores = get_ranked(record, metric, index)
    pos = [j for j, c in enumerate(cands) if _canon(c) == _canon(positive)]
    if not pos:
        raise MetricError(f"{where(metric, index, record)}: positive class {positive!r} is not "
                          f"among the candidates {cands!r} (set the 'positive' option)")
    m = max(scores)
    z = sum(math.exp(s - m) for s in scores)
    return math.exp(scores[pos[0]] - m) / z


def is_positive(record: Mapping[str, Any], positive: str, metric: str = "roc-auc",
                index: Optional[int] = None) -> bool:
    """Whether the record's gold label is the positive class (``label`` 1/0 or ``True``/``False``
    count directly; strings are compared with ``positive``)."""
    label = record.get("label")
    if isinstance(label, bool) or (isinstance(label, int) and label in (0, 1)
                                   and not record.get("candidates")):
        return bool(label)
    return _canon(gold_choice(record, metric, index)) == _canon(positive)


class RocAuc(Metric):
    """``roc-auc``: area under the ROC curve of the positive-class probability
    (:func:`positive_probability`) against the gold labels, by
    ``sklearn.metrics.roc_auc_score``; InstructBLIP's HatefulMemes metric (arXiv 2305.06500).

    Options: ``positive`` (the positive candidate, default ``"yes"``). When the records hold only
    one gold class the AUC is undefined: the value is NaN and a warning is logged (so that one
    small per-template subset does not abort a whole suite). ``correct``: the top-scored
    candidate is the gold one (as ``mc-accuracy``).
    """

    name = "roc-auc"
    cheap = True
    options = ("positive",)

    def compute(self, records, **options) -> Dict[str, float]:
        from mmit.extras import require

        require("sklearn", "the ROC-AUC metric")  # a missing package names its extra
        from sklearn.metrics import roc_auc_score

        check_options(self.name, options, self.options)
        nonempty(self.name, records)
        positive = str(options.get("positive", "yes"))
        y = [int(is_positive(r, positive, self.name, i)) for i, r in enumerate(records)]
        p = [positive_probability(r, positive, self.name, i) for i, r in enumerate(records)]
        if len(set(y)) < 2:
            log.warning("roc-auc: all %d records have the same gold class (%s); ROC-AUC is "
                        "undefined, returning NaN", len(y), "positive" if y[0] else "negative")
            return {self.name: float("nan")}
        return {self.name: float(roc_auc_score(y, p))}

    def correct(self, record) -> Optional[bool]:
        return MCAccuracy().correct(record)

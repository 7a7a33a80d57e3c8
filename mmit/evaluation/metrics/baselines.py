"""Honest reference points for a task's headline figure: the constant-answer (majority) baseline
and a 95% confidence interval.

* **Majority baseline** (:func:`majority_baseline`): the best score a model reaches by giving the
  same answer to every prompt, trying the most frequent gold answers of the records as that
  constant. With skewed labels it is far above uniform chance (1 / #candidates): a model must beat
  it, not chance, before it has read anything from the image. Defined for metrics that score each
  record on its own (:attr:`~.base.Metric.per_record`: accuracies, ROUGE-L, MRR); None otherwise.
* **Confidence interval** (:func:`bootstrap_distribution`, :func:`percentile_interval`): a
  *percentile cluster bootstrap* (Efron & Tibshirani 1993, ch. 13). The resampled unit is the
  sample (record ``id``): all instruction templates (and k-shot prompts) of one image go into a
  resample together, since they are not independent, so the interval is not the too-narrow binomial
  one over prompts. :data:`N_BOOT` resamples with ``numpy.random.default_rng(SEED)``: the same
  records always give the same interval. Per-record metrics are resampled from per-record values
  (cheap); a corpus metric marked :attr:`~.base.Metric.cheap` (ROC-AUC) is recomputed on
  :data:`N_BOOT_CORPUS` resamples when there are at most :data:`MAX_CORPUS_RECORDS` records; the
  others (BLEU, CIDEr: a tokenizer run per call, ~1 s) get no interval (None).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmit.evaluation.metrics.accuracy import gold_choice
from mmit.evaluation.metrics.base import Metric

#: Bootstrap resamples for per-record metrics, and for corpus metrics (each one recomputes the metric).
N_BOOT = 1000
N_BOOT_CORPUS = 200
#: Corpus metrics over more records than this get no interval (it would cost N_BOOT_CORPUS full runs).
MAX_CORPUS_RECORDS = 5000
SEED = 0
#: Constant answers :func:`majority_baseline` tries (the most frequent gold answers).
MAX_CONSTANTS = 20
#: How ``results.json`` names the interval (``ci_method``).
CI_METHOD = (f"95% CI: percentile bootstrap over samples (all templates of a sample resampled together), "
             f"{N_BOOT} resamples ({N_BOOT_CORPUS} for ROC-AUC; none for BLEU/CIDEr), numpy seed {SEED}")


def _gold_answers(record: Mapping[str, Any]) -> List[str]:
    """The record's gold answer(s) as candidates for a constant answer: its ``label`` (as text),
    else every reference (VQA's 10 human answers each count)."""
    if record.get("label") is not None:
        try:
            return [gold_choice(record)]
        except ValueError:
            return []
    ref = record.get("reference")
    return [ref] if isinstance(ref, str) else [r for r in (ref or []) if isinstance(r, str)]


def _as_constant(record: Mapping[str, Any], answer: str) -> Dict[str, Any]:
    """A copy of ``record`` answering ``answer``: prediction = ``answer`` and, for ranked records,
    scores that put that candidate (when present) first and the others below it."""
    out = dict(record)
    out["prediction"] = answer
    cands = record.get("candidates")
    if isinstance(cands, (list, tuple)) and cands:
        key = answer.strip().lower()
        out["scores"] = [0.0 if str(c).strip().lower() == key else -1e4 for c in cands]
    return out


def majority_baseline(metric: Metric, records: Sequence[Mapping[str, Any]],
                      max_constants: int = MAX_CONSTANTS) -> Tuple[Optional[float], Optional[str]]:
    """``(score, answer)`` of the best constant answer under ``metric`` among the
    ``max_constants`` most frequent gold answers of ``records`` (ties: the earlier-seen answer),
    or ``(None, None)`` when the metric is not per-record or no record has a gold answer. For
    ``mc-accuracy`` with a fixed candidate list this is the majority-class frequency."""
    if not metric.per_record or not records:
        return None, None
    counts = Counter(a for r in records for a in _gold_answers(r))
    best: Tuple[Optional[float], Optional[str]] = (None, None)
    for answer, _ in counts.most_common(max_constants):
        v = metric.compute([_as_constant(r, answer) for r in records])[metric.name]
        if v is not None and not math.isnan(v) and (best[0] is None or v > best[0]):
            best = (float(v), answer)
    return best


def _clusters(records: Sequence[Mapping[str, Any]]) -> List[List[int]]:
    """Record indices grouped by sample ``id`` (records without one are their own cluster)."""
    groups: Dict[Any, List[int]] = {}
    for i, r in enumerate(records):
        key = r.get("id")
        groups.setdefault(("id", key) if key is not None else ("row", i), []).append(i)
    return list(groups.values())


def bootstrap_distribution(metric: Metric, records: Sequence[Mapping[str, Any]], n_boot: Optional[int] = None,
                           seed: int = SEED) -> Optional[np.ndarray]:
    """The metric on ``n_boot`` cluster-bootstrap resamples of ``records`` (module docstring):
    float64 array of shape ``[n_boot]`` (NaN-free values only for per-record metrics; a corpus
    metric may give NaN, e.g. ROC-AUC on a one-class resample), or None for a corpus metric that is
    not ``cheap`` or has more than :data:`MAX_CORPUS_RECORDS` records. Deterministic given ``seed``."""
    if not records:
        return None
    clusters = _clusters(records)
    rng = np.random.default_rng(seed)
    name = metric.name
    if metric.per_record:
        n_boot = N_BOOT if n_boot is None else n_boot
        vals = np.array([metric.compute([r])[name] for r in records], dtype=np.float64)
        sums = np.array([vals[c].sum() for c in clusters])
        sizes = np.array([len(c) for c in clusters], dtype=np.float64)
        out = np.empty(n_boot)
        step = max(1, 2_000_000 // len(clusters))  # bounded memory: step x clusters indices at a time
        for a in range(0, n_boot, step):
            idx = rng.integers(0, len(clusters), size=(min(step, n_boot - a), len(clusters)))
            out[a:a + len(idx)] = sums[idx].sum(1) / sizes[idx].sum(1)
        return out
    if not metric.cheap or len(records) > MAX_CORPUS_RECORDS:
        return None
    n_boot = N_BOOT_CORPUS if n_boot is None else n_boot
    out = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, len(clusters), size=len(clusters))
        out[b] = metric.compute([records[i] for k in pick for i in clusters[k]])[name]
    return out


def percentile_interval(dist: Optional[np.ndarray], level: float = 0.95) -> Optional[List[float]]:
    """``[low, high]``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``dist``
    (NaNs dropped), or None when there is no finite value."""
    if dist is None:
        return None
    d = dist[np.isfinite(dist)]
    if d.size == 0:
        return None
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927): ``(low, high)`` in [0, 1];
    for reference and tests (the report uses the bootstrap, which respects template clusters).
    Raises ``ValueError`` for ``n <= 0`` or successes outside ``0..n``."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n > 0, got {successes}/{n}")
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)

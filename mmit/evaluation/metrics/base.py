"""The metric contract and helpers that read evaluation records.

A *record* is one scored sample, a plain dict:

===============  =================================================================================
``prediction``   str: the generated text (after post-processing) or the top-ranked candidate
``reference``    str or list[str]: the gold answer(s), e.g. VQA's 10 human answers, 5 captions
``candidates``   list[str], optional: the answer options a ``rank`` scorer scored
``scores``       list[float], optional: one log-likelihood per candidate, aligned with ``candidates``
``label``        optional: the gold candidate (multiple choice) or the positive class (ROC-AUC)
``template``     int, optional: index of the instruction template the prompt used
``task``         str, optional: the eval task name
``id``           optional: the sample id, named in error messages
===============  =================================================================================

A metric object (:class:`Metric`) has ``compute(records, **options) -> Dict[str, float]`` with its
main value under its own registry name, and ``correct(record) -> Optional[bool]`` for per-sample
correctness where the metric defines one (None otherwise, e.g. for BLEU/CIDEr).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence


class MetricError(ValueError):
    """A record a metric cannot score; the message names the metric, record index and id."""


def where(metric: str, index: Optional[int], record: Mapping[str, Any]) -> str:
    """``"<metric>: record <index> (id 'x', task 'y')"`` for error messages."""
    parts = [f"{k} {record[k]!r}" for k in ("id", "task") if isinstance(record, Mapping)
             and record.get(k) is not None]
    at = f"record {index}" if index is not None else "record"
    return f"{metric}: {at}" + (f" ({', '.join(parts)})" if parts else "")


def get_prediction(record: Mapping[str, Any], metric: str, index: Optional[int] = None) -> str:
    """The record's ``prediction`` as str; raises :class:`MetricError` when absent or not a str."""
    if not isinstance(record, Mapping):
        raise MetricError(f"{where(metric, index, {})}: expected a dict, got "
                          f"{type(record).__name__}")
    pred = record.get("prediction")
    if not isinstance(pred, str):
        raise MetricError(f"{where(metric, index, record)}: 'prediction' must be a string, got "
                          f"{pred!r}")
    return pred


def get_references(record: Mapping[str, Any], metric: str, index: Optional[int] = None) -> List[str]:
    """The record's ``reference`` as a non-empty list of str (a lone str becomes ``[str]``).

    Raises :class:`MetricError` naming the record when missing, empty or not text.
    """
    ref = record.get("reference") if isinstance(record, Mapping) else None
    refs = [ref] if isinstance(ref, str) else ref
    if not isinstance(refs, (list, tuple)) or not refs or not all(isinstance(r, str) for r in refs):
        raise MetricError(f"{where(metric, index, record)}: 'reference' must be a string or a "
                          f"non-empty list of strings, got {ref!r}")
    return list(refs)


def get_ranked(record: Mapping[str, Any], metric: str,
               index: Optional[int] = None) -> tuple[List[str], List[float]]:
    """``(candidates, scores)`` of a ranked record, checked to be non-empty and aligned."""
    cands, scores = record.get("candidates"), record.get("scores")
    if not isinstance(cands, (list, tuple)) or not cands:
        raise MetricError(f"{where(metric, index, record)}: needs a non-empty 'candidates' list "
                          f"(use a rank scorer)")
    if not isinstance(scores, (list, tuple)) or len(scores) != len(cands):
        raise MetricError(f"{where(metric, index, record)}: 'scores' must be a list aligned with "
                          f"the {len(cands)} candidates, got {scores!r}")
    try:
        return [str(c) for c in cands], [float(s) for s in scores]
    except (TypeError, ValueError):
        raise MetricError(f"{where(metric, index, record)}: 'scores' must be numbers, got "
                          f"{scores!r}") from None


def check_options(metric: str, options: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Raise ``TypeError`` naming the metric for an option it does not take (typos in YAML)."""
    allowed = set(allowed)
    bad = sorted(set(options) - allowed)
    if bad:
        raise TypeError(f"metric {metric!r} got unknown option(s) {', '.join(bad)} (it takes: "
                        f"{', '.join(sorted(allowed)) or 'none'})")


def nonempty(metric: str, records: Sequence[Any]) -> None:
    """Raise ``ValueError`` when there is nothing to score."""
    if len(records) == 0:
        raise ValueError(f"metric {metric!r}: no records to score")


class Metric:
    """Base class of every registered metric.

    Attributes:
        name: the registry name; ``compute`` returns the main value under this key.
        higher_is_better: False for metrics such as instruction sensitivity.
        options: option names ``compute`` accepts (others raise ``TypeError``).
        per_record: True when the value is the mean of the value on each record alone
            (``compute(records) == mean(compute([r]) for r in records)``: accuracies, ROUGE-L,
            MRR); the bootstrap interval and the majority baseline of
            :mod:`~mmit.evaluation.metrics.baselines` rely on it. False for corpus metrics.
        cheap: a corpus metric cheap enough to recompute on every bootstrap resample (ROC-AUC);
            BLEU / CIDEr (a Java tokenizer run per call) are not, and get no interval.
    """

    name: str = ""
    higher_is_better: bool = True
    options: Sequence[str] = ()
    per_record: bool = False
    cheap: bool = False

    def compute(self, records: Sequence[Mapping[str, Any]], **options: Any) -> Dict[str, float]:
        """Score ``records``; returns ``{self.name: value, ...extra keys}``."""
        raise NotImplementedError

    def correct(self, record: Mapping[str, Any]) -> Optional[bool]:
        """Per-sample correctness, or None where the metric has no such notion."""
        return None

    def __repr__(self) -> str:
        return f"<metric {self.name}>"

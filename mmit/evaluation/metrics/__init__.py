"""Evaluation metrics as paper protocols define them, in one registry.

:data:`METRICS` maps kebab-case names to metric objects (:class:`~.base.Metric`); each has
``compute(records, **options) -> Dict[str, float]`` (main value under the metric's own name) and
``correct(record) -> Optional[bool]``. Records are dicts described in :mod:`.base`.

==========================  ========================================================  ==============
name                        definition                                                 source
==========================  ========================================================  ==============
``vqa-accuracy``            min(#matches/3, 1) over leave-one-out subsets; the        arXiv 1505.00468
                            official 2016 script / LAVIS (InstructBLIP protocol)
``vqa-accuracy-2021``       the same under the current official script (2021          arXiv 1505.00468
                            fix: both sides normalised when the answers differ)
``exact-match``             stripped prediction equals a reference                     -
``mc-accuracy``             prediction (text or option letter) picks the gold option   -
``rouge-l``                 ROUGE-L F-measure, ``rouge-score``                         Lin 2004
``bleu``                    corpus BLEU-1..4, pycocoevalcap                            Papineni 2002
``cider``                   CIDEr-D, pycocoevalcap                                     arXiv 1411.5726
``roc-auc``                 ROC-AUC of the positive-class probability, scikit-learn    HatefulMemes
``mrr``                     mean reciprocal rank of the gold option (+ R@k)           arXiv 1611.08669
``multiinstruct-aggregate`` mean over tasks of the per-task score                      arXiv 2212.10773
``instruction-sensitivity`` mean over tasks of std/mean across instruction templates   arXiv 2212.10773
``ivqa-accuracy``           min(#annotators agreeing / 2, 1) over 5 answers            arXiv 2012.00451
==========================  ========================================================  ==============
"""

from __future__ import annotations

from mmit.evaluation.metrics.accuracy import (VQA_VERSIONS, ExactMatch, IVQAAccuracy, MCAccuracy,
                                              VQAAccuracy, VQAAccuracy2021, vqa_prepare, vqa_score)
from mmit.evaluation.metrics.base import Metric, MetricError
from mmit.evaluation.metrics.caption import Bleu, Cider
from mmit.evaluation.metrics.multiinstruct import InstructionSensitivity, MultiInstructAggregate
from mmit.evaluation.metrics.ranking import MRR, RocAuc, gold_rank
from mmit.evaluation.metrics.text import RougeL
from mmit.registry import Registry

#: Metric name -> metric object.
METRICS: Registry[Metric] = Registry("metric")

for _cls in (VQAAccuracy, VQAAccuracy2021, ExactMatch, MCAccuracy, RougeL, Bleu, Cider, RocAuc, MRR,
             MultiInstructAggregate, InstructionSensitivity, IVQAAccuracy):
    METRICS.register(_cls.name, _cls())


def get_metric(name: str) -> Metric:
    """The metric registered as ``name``.

    Raises :class:`~mmit.registry.UnknownNameError` (a ``KeyError``) listing close matches, e.g.
    ``get_metric("vqa-acc")`` -> ``unknown metric 'vqa-acc'; did you mean: vqa-accuracy?``.
    """
    return METRICS.get(name)


__all__ = ["METRICS", "Metric", "MetricError", "get_metric", "vqa_score", "vqa_prepare",
           "VQA_VERSIONS", "gold_rank"]

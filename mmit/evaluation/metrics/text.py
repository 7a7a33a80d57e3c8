"""``rouge-l``: ROUGE-L F-measure with Google's ``rouge-score`` package (Lin, 2004), the metric
MultiInstruct (arXiv 2212.10773) reports for open-ended unseen tasks."""

from __future__ import annotations

from typing import Dict, Optional

from mmit.evaluation.metrics.base import (Metric, check_options, get_prediction, get_references,
                                          nonempty)


class RougeL(Metric):
    """``rouge-l``: mean over records of the ROUGE-L F-measure (``rouge_score.rouge_scorer``,
    key ``rougeL``: sentence-level longest common subsequence), in [0, 1].

    With several references the best-scoring one counts (``RougeScorer.score_multi``). Options:
    ``use_stemmer`` (bool, default False, the package default). Tokenisation is rouge-score's:
    lower-cased, non-alphanumeric characters dropped, so non-Latin text scores 0.
    """

    name = "rouge-l"
    per_record = True
    options = ("use_stemmer",)

    def compute(self, records, **options) -> Dict[str, float]:
        from mmit.extras import require

        require("rouge_score", "the ROUGE-L metric")  # a missing package names its extra
        from rouge_score import rouge_scorer

        check_options(self.name, options, self.options)
        nonempty(self.name, records)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=bool(options.get("use_stemmer",
                                                                                   False)))
        total = 0.0
        for i, r in enumerate(records):
            pred = get_prediction(r, self.name, i)
            refs = get_references(r, self.name, i)
            total += scorer.score_multi(refs, pred)["rougeL"].fmeasure
        return {self.name: total / len(records)}

    def correct(self, record) -> Optional[bool]:
        return None

"""Captioning metrics with pycocoevalcap (the COCO caption evaluation code, arXiv 1504.00325):
``bleu`` (BLEU-1..4, Papineni et al. 2002) and ``cider`` (CIDEr-D, Vedantam et al., arXiv
1411.5726). InstructBLIP (arXiv 2305.06500) reports CIDEr on NoCaps and Flickr30K.

Captions are tokenised first (:mod:`mmit.evaluation.metrics.coco_tokenizer`: Stanford
PTBTokenizer through Java when available, else a documented pure-Python equivalent); option
``tokenizer`` = ``auto`` | ``ptb`` | ``python``. Values are on the scale the reference code gives:
BLEU in [0, 1]; CIDEr-D unbounded, typically 0..~1.5 (papers print it x100).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from mmit.evaluation.metrics.base import (Metric, check_options, get_prediction, get_references,
                                          nonempty)
from mmit.evaluation.metrics.coco_tokenizer import tokenize_captions


def coco_inputs(records: Sequence[dict], metric: str,
                tokenizer: str = "auto") -> Tuple[Dict[str, list], Dict[str, list]]:
    """``(gts, res)`` dicts as pycocoevalcap scorers take them: keyed by record index (as str),
    references / the one prediction tokenised."""
    refs, preds = {}, {}
    for i, r in enumerate(records):
        preds[str(i)] = [get_prediction(r, metric, i)]
        refs[str(i)] = get_references(r, metric, i)
    return tokenize_captions(refs, tokenizer), tokenize_captions(preds, tokenizer)


class Bleu(Metric):
    """``bleu``: corpus BLEU-1..4 from ``pycocoevalcap.bleu.Bleu(4)`` (closest reference length for
    the brevity penalty). Returns ``{"bleu": BLEU-4, "bleu-1": .., "bleu-2": .., "bleu-3": ..,
    "bleu-4": ..}``. Corpus-level: ``correct`` is None."""

    name = "bleu"
    options = ("tokenizer",)

    def compute(self, records, **options) -> Dict[str, float]:
        from mmit.extras import require

        require("pycocoevalcap", "the BLEU metric")  # a missing package names its extra
        from pycocoevalcap.bleu.bleu import Bleu as CocoBleu

        check_options(self.name, options, self.options)
        nonempty(self.name, records)
        gts, res = coco_inputs(records, self.name, options.get("tokenizer", "auto"))
        scores, _ = CocoBleu(4).compute_score(gts, res, verbose=0)
        out = {f"bleu-{n + 1}": float(s) for n, s in enumerate(scores)}
        return {self.name: out["bleu-4"], **out}

    def correct(self, record) -> Optional[bool]:
        return None


class Cider(Metric):
    """``cider``: CIDEr-D from ``pycocoevalcap.cider.Cider`` (n = 1..4, sigma = 6). The document
    frequencies come from the references of the records scored together, so the value depends on
    the whole evaluated set (one image alone always scores 0). Corpus-level: ``correct`` is None."""

    name = "cider"
    options = ("tokenizer",)

    def compute(self, records, **options) -> Dict[str, float]:
        from pycocoevalcap.cider.cider import Cider as CocoCider

        check_options(self.name, options, self.options)
        nonempty(self.name, records)
        gts, res = coco_inputs(records, self.name, options.get("tokenizer", "auto"))
        score, _ = CocoCider().compute_score(gts, res)
        return {self.name: float(score)}

    def correct(self, record) -> Optional[bool]:
        return None

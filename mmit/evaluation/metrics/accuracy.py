"""Accuracy-style metrics: ``vqa-accuracy`` (2016 script / LAVIS), ``vqa-accuracy-2021`` (current
official script), ``exact-match``, ``mc-accuracy``, ``ivqa-accuracy``.

All return fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mmit.evaluation.metrics.base import (Metric, MetricError, check_options, get_prediction,
                                          get_references, nonempty, where)
from mmit.evaluation.postprocess import (extract_option_letter, vqa_normalize,
                                         vqa_process_digit_article, vqa_process_punctuation)


#: The official VQA evaluation script versions :func:`vqa_prepare` follows.
VQA_VERSIONS = ("2016", "2021")


def _vqa_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, outer spaces stripped (both versions do this first)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _check_version(version: str) -> None:
    if version not in VQA_VERSIONS:
        raise ValueError(f"unknown VQA evaluation version {version!r}; choose one of "
                         f"{', '.join(VQA_VERSIONS)}")


def vqa_prepare(prediction: str, answers: Sequence[str],
                version: str = "2016") -> Tuple[str, List[str]]:
    """The prediction and human answers as the VQA script of ``version`` compares them.

    * ``"2016"``: GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` @ 458a8b2
      (2016-10-08), identical to LAVIS ``lavis/common/vqa_tools/vqa_eval.py`` (the InstructBLIP
      protocol, arXiv 2305.06500). The prediction always gets the full normalisation
      (:func:`~mmit.evaluation.postprocess.vqa_normalize`). The answers are taken as written
      (not even stripped) and, only when they are not all identical, go through
      ``processPunctuation`` alone: no lower-casing, number words, articles or contractions.
    * ``"2021"``: the same file @ a013f00 (2021-03-11, "Fixed processing answers bug"), the current
      official code. Newlines/tabs become spaces and the ends are stripped, on the answers and the
      prediction. Then, only when the answers are not all identical, *both* sides get the full
      normalisation (``processPunctuation`` then ``processDigitArticle``); when they are all
      identical, neither does (ten ``"2"`` and the prediction ``"Two"`` do not match).

    Both versions share the normalisation tables of :mod:`mmit.evaluation.postprocess`.

    Args:
        prediction: the model's answer.
        answers: the human answers.
        version: ``"2016"`` or ``"2021"``.

    Returns:
        ``(prediction, answers)`` ready for exact string comparison.

    Raises:
        ValueError: an unknown ``version``.
    """
    _check_version(version)
    if version == "2016":
        gts = list(answers)
        if len(set(gts)) > 1:
            gts = [vqa_process_punctuation(a) for a in gts]
        return vqa_normalize(prediction), gts
    gts = [_vqa_whitespace(a) for a in answers]  # "2021"
    pred = _vqa_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [vqa_process_digit_article(vqa_process_punctuation(a)) for a in gts]
        pred = vqa_process_digit_article(vqa_process_punctuation(pred))
    return pred, gts


def vqa_score(prediction: str, answers: Sequence[str], min_matches: int = 3,
              version: str = "2016") -> float:
    """VQA accuracy of one prediction against the human answers (Antol et al., arXiv 1505.00468).

    Prediction and answers are prepared as the official script of ``version`` does
    (:func:`vqa_prepare`: ``"2016"`` = the 2016 script and LAVIS, the default; ``"2021"`` = the
    current official code). Then for each of the ``n`` leave-one-out subsets of ``n - 1`` answers
    (the 10-choose-9 subsets for VQA's 10), ``min(#matches / min_matches, 1)``; the score is the
    mean over subsets.

    A single answer (GQA-style data) has no leave-one-out subset (both scripts would give 0): the
    score is then 1.0 when the fully normalised prediction equals the fully normalised answer,
    else 0.0 (LAVIS's GQA rule), whatever the ``version``.

    Args:
        prediction: the model's answer.
        answers: the human answers (non-empty).
        min_matches: matches that earn full credit (3 in VQA).
        version: ``"2016"`` or ``"2021"``.

    Returns:
        float in [0, 1]; e.g. 4 of 10 humans agree -> 1.0, 3 -> 0.9, 2 -> 0.6, 1 -> 0.3.

    Raises:
        ValueError: no answers, or an unknown ``version``.
    """
    if not answers:
        raise ValueError("vqa_score needs at least one answer")
    _check_version(version)
    if len(answers) == 1:
        return float(vqa_normalize(prediction) == vqa_normalize(answers[0]))
    pred, gts = vqa_prepare(prediction, answers, version)
    total = 0.0
    for i in range(len(gts)):
        matches = sum(1 for j, a in enumerate(gts) if j != i and a == pred)
        total += min(1.0, matches / min_matches)
    return total / len(gts)


def _vqa_full_credit(prediction: str, answers: Sequence[str], min_matches: int = 3,
                     version: str = "2016") -> bool:
    """The VQA paper's per-answer rule: at least ``min(min_matches, n)`` humans gave it."""
    if len(answers) == 1:
        return vqa_score(prediction, answers, min_matches, version) == 1.0
    pred, gts = vqa_prepare(prediction, answers, version)
    return sum(a == pred for a in gts) >= min(min_matches, len(gts))


class VQAAccuracy(Metric):
    """``vqa-accuracy``: the official 2016 VQA script, as LAVIS ships it (the InstructBLIP
    protocol): mean of :func:`vqa_score` with ``version="2016"`` over records (``reference`` = the
    human answers). Source: GT-Vision-Lab/VQA ``vqaEval.py`` @ 458a8b2 = LAVIS
    ``lavis/common/vqa_tools/vqa_eval.py``; arXiv 1505.00468.

    Options: ``min_matches`` (int, default 3). ``correct`` is True when at least
    ``min(min_matches, #answers)`` prepared human answers equal the prepared prediction (the
    paper's "100% accurate" rule before leave-one-out averaging). Raises :class:`MetricError` for
    a record without a string ``prediction`` or with no ``reference``, ``TypeError`` for an
    unknown option, ``ValueError`` for no records.
    """

    name = "vqa-accuracy"
    per_record = True
    options = ("min_matches",)
    #: Which official script :func:`vqa_prepare` follows.
    version = "2016"

    def compute(self, records, **options) -> Dict[str, float]:
        check_options(self.name, options, self.options)
        nonempty(self.name, records)
        k = int(options.get("min_matches", 3))
        scores = [vqa_score(get_prediction(r, self.name, i), get_references(r, self.name, i), k,
                            self.version)
                  for i, r in enumerate(records)]
        return {self.name: sum(scores) / len(scores)}

    def correct(self, record) -> Optional[bool]:
        return _vqa_full_credit(get_prediction(record, self.name),
                                get_references(record, self.name), version=self.version)


class VQAAccuracy2021(VQAAccuracy):
    """``vqa-accuracy-2021``: the current official VQA script, with the 2021 answer-processing
    fix (GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` @ a013f00): answers
    and prediction both normalised, and only when the answers disagree (:func:`vqa_prepare`).
    Same options, ``correct`` rule and errors as ``vqa-accuracy``; arXiv 1505.00468."""

    name = "vqa-accuracy-2021"
    version = "2021"


class ExactMatch(Metric):
    """``exact-match``: fraction of records whose stripped prediction equals one of the stripped
    references. Option ``ignore_case`` (bool, default False). Apply a post-processing (``vqa``,
    ``lower``, ...) before scoring for looser matching."""

    name = "exact-match"
    per_record = True
    options = ("ignore_case",)

    @staticmethod
    def _match(pred: str, refs: List[str], ignore_case: bool) -> bool:
        norm = (lambda s: s.strip().lower()) if ignore_case else (lambda s: s.strip())
        p = norm(pred)
        return any(p == norm(r) for r in refs)

    def compute(self, records, **options) -> Dict[str, float]:
        check_options(self.name, options, self.options)
        nonempty(self.name, records)
        ic = bool(options.get("ignore_case", False))
        hits = [self._match(get_prediction(r, self.name, i), get_references(r, self.name, i), ic)
                for i, r in enumerate(records)]
        return {self.name: sum(hits) / len(hits)}

    def correct(self, record) -> Optional[bool]:
        return self._match(get_prediction(record, self.name), get_references(record, self.name),
                           False)


def _canon(text: Any) -> str:
    return str(text).strip().lower()


def resolve_choice(record: Mapping[str, Any], metric: str = "mc-accuracy",
                   index: Optional[int] = None) -> Optional[int]:
    """Index into ``record["candidates"]`` that the record's answer picks, or None.

    The prediction is matched to a candidate by text (case- and space-insensitive) first, then as an
    option letter (``"B"``, ``"(b)"``, ``"The answer is B"`` -> candidate 1). Without a usable
    ``prediction`` the highest of ``scores`` wins (first on ties).
    """
    cands = record.get("candidates")
    if not isinstance(cands, (list, tuple)) or not cands:
        return None
    pred = record.get("prediction")
    if not isinstance(pred, str) or not pred.strip():
        scores = record.get("scores")
        if isinstance(scores, (list, tuple)) and len(scores) == len(cands):
            best = max(range(len(cands)), key=lambda j: (float(scores[j]), -j))
            return best
        return None
    for j, c in enumerate(cands):
        if _canon(c) == _canon(pred):
            return j
    letter = extract_option_letter(pred)
    if letter is not None and ord(letter) - ord("A") < len(cands):
        return ord(letter) - ord("A")
    return None


def gold_choice(record: Mapping[str, Any], metric: str = "mc-accuracy",
                index: Optional[int] = None) -> str:
    """The gold answer text: ``label`` when present (an int ``label`` indexes ``candidates``),
    else the (first) ``reference``."""
    label = record.get("label")
    if label is None:
        return get_references(record, metric, index)[0]
    if isinstance(label, int) and not isinstance(label, bool):
        cands = record.get("candidates") or []
        if not 0 <= label < len(cands):
            raise MetricError(f"{where(metric, index, record)}: integer label {label} does not "
                              f"index the {len(cands)} candidates")
        return str(cands[label])
    return str(label)


class MCAccuracy(Metric):
    """``mc-accuracy``: multiple-choice accuracy. A record is correct when its answer picks the gold
    candidate (``label``, else ``reference``): the prediction equals the gold text (ignoring case
    and outer spaces) or names its option letter (A = first candidate). Works for ``rank`` output
    (prediction = top-ranked candidate) and for generated letters (``option-letter``
    post-processing)."""

    name = "mc-accuracy"
    per_record = True

    def _is_correct(self, record, index: Optional[int] = None) -> bool:
        gold = _canon(gold_choice(record, self.name, index))
        j = resolve_choice(record, self.name, index)
        cands = record.get("candidates") or []
        if j is not None:
            return _canon(cands[j]) == gold
        pred = record.get("prediction")
        if not isinstance(pred, str):
            raise MetricError(f"{where(self.name, index, record)}: needs a string 'prediction' "
                              f"or candidates with scores")
        if _canon(pred) == gold:
            return True
        letter = extract_option_letter(pred)
        return letter is not None and len(gold) == 1 and letter.lower() == gold

    def compute(self, records, **options) -> Dict[str, float]:
        check_options(self.name, options, ())
        nonempty(self.name, records)
        hits = [self._is_correct(r, i) for i, r in enumerate(records)]
        return {self.name: sum(hits) / len(hits)}

    def correct(self, record) -> Optional[bool]:
        return self._is_correct(record)


class IVQAAccuracy(Metric):
    """``ivqa-accuracy``: iVQA's metric (Yang et al., "Just Ask", arXiv 2012.00451): with 5
    annotator answers, ``min(#answers equal to the prediction / 2, 1)`` (no leave-one-out);
    prediction and answers compared lower-cased and stripped. ``correct``: score == 1."""

    name = "ivqa-accuracy"
    per_record = True

    @staticmethod
    def score(prediction: str, answers: List[str]) -> float:
        p = prediction.strip().lower()
        return min(1.0, sum(1 for a in answers if a.strip().lower() == p) / 2)

    def compute(self, records, **options) -> Dict[str, float]:
        check_options(self.name, options, ())
        nonempty(self.name, records)
        s = [self.score(get_prediction(r, self.name, i), get_references(r, self.name, i))
             for i, r in enumerate(records)]
        return {self.name: sum(s) / len(s)}

    def correct(self, record) -> Optional[bool]:
        return self.score(get_prediction(record, self.name),
                          get_references(record, self.name)) == 1.0

"""Metrics (mmit.evaluation.metrics): hand-computed cases and agreement with the reference
packages (rouge-score, pycocoevalcap, scikit-learn) on the same predictions."""

import math
import random

import pytest

from mmit.evaluation.metrics import METRICS, MetricError, get_metric, vqa_score
from mmit.evaluation.metrics.coco_tokenizer import (java_available, python_ptb_tokenize,
                                                    tokenize_captions)
from mmit.registry import UnknownNameError

REQUIRED = ["vqa-accuracy", "exact-match", "mc-accuracy", "rouge-l", "bleu", "cider", "roc-auc",
            "mrr", "multiinstruct-aggregate", "instruction-sensitivity"]

CAPTIONS = [  # (prediction, references): short COCO-style captions
    ("a man riding a wave on top of a surfboard.",
     ["A man riding a wave on a surfboard.", "a surfer rides a big wave", "A person surfing."]),
    ("two dogs playing in the snow",
     ["Two dogs play in the snow.", "A pair of dogs running through snow.", "dogs in snow"]),
    ("a plate of food with broccoli and meat",
     ["A plate with meat and broccoli.", "Food on a white plate.", "broccoli, beef (cooked)"]),
    ("a cat sitting on a laptop keyboard",
     ["A cat lying on a laptop.", "The cat's sitting on the keyboard.", "a cat on a computer"]),
]


def test_registry_has_every_required_metric_with_its_contract():
    for name in REQUIRED:
        m = get_metric(name)
        assert m is METRICS.get(name) and m.name == name
        assert callable(m.compute) and callable(m.correct)
    with pytest.raises(UnknownNameError, match="did you mean: vqa-accuracy"):
        get_metric("vqa-acuracy")


# --- VQA accuracy --------------------------------------------------------------------------------
@pytest.mark.parametrize("n_match, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                               (10, 1.0)])
def test_vqa_score_leave_one_out(n_match, expected):
    # min(#matches/3, 1) averaged over the 10 subsets of 9 answers
    answers = ["yes"] * n_match + ["no"] * (10 - n_match)
    assert vqa_score("yes", answers) == pytest.approx(expected)


def test_vqa_score_normalises_the_prediction_and_disagreeing_answers():
    answers = ["2", "2", "2", "2", "two", "3", "3", "3", "3", "3"]
    assert vqa_score("Two.", answers) == pytest.approx(1.0)  # "Two." -> "2", 4 matches
    # disagreeing answers get processPunctuation only ("red." -> "red"), not lower-casing
    assert vqa_score("red", ["red."] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    assert vqa_score("red", ["Red"] * 3 + ["blue"] * 7) == 0.0
    # identical answers are left as they are (official script), so "Yes." never matches
    assert vqa_score("yes", ["Yes."] * 10) == 0.0


def test_vqa_single_answer_is_normalised_exact_match():
    assert vqa_score("The Table.", ["table"]) == 1.0
    assert vqa_score("chair", ["table"]) == 0.0


def test_vqa_accuracy_metric_and_correct():
    m = get_metric("vqa-accuracy")
    recs = [{"prediction": "yes", "reference": ["yes"] * 10},
            {"prediction": "2", "reference": ["two"] * 2 + ["3"] * 8},   # 'two' stays 'two': 0
            {"prediction": "3", "reference": ["3"] * 3 + ["4"] * 7}]     # 0.9
    assert m.compute(recs)["vqa-accuracy"] == pytest.approx((1.0 + 0.0 + 0.9) / 3)
    assert [m.correct(r) for r in recs] == [True, False, True]
    assert m.correct({"prediction": "4", "reference": ["4"] * 2 + ["5"] * 8}) is False
    assert m.compute(recs[2:], min_matches=1)["vqa-accuracy"] == pytest.approx(1.0)
    with pytest.raises(MetricError, match="record 0"):
        m.compute([{"prediction": "x"}])
    with pytest.raises(TypeError, match="min_match"):
        m.compute(recs, min_match=2)
    with pytest.raises(ValueError, match="no records"):
        m.compute([])


def test_ivqa_accuracy():
    m = get_metric("ivqa-accuracy")
    recs = [{"prediction": "Guitar", "reference": ["guitar", "guitar", "bass", "drum", "piano"]},
            {"prediction": "bass", "reference": ["guitar", "guitar", "bass", "drum", "piano"]},
            {"prediction": "flute", "reference": ["guitar", "guitar", "bass", "drum", "piano"]}]
    assert m.compute(recs)["ivqa-accuracy"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert [m.correct(r) for r in recs] == [True, False, False]


# --- exact match / multiple choice ---------------------------------------------------------------
def test_exact_match():
    m = get_metric("exact-match")
    recs = [{"prediction": " cat ", "reference": "cat"},
            {"prediction": "Dog", "reference": ["dog", "puppy"]},
            {"prediction": "bird", "reference": ["cat"]}]
    assert m.compute(recs)["exact-match"] == pytest.approx(1 / 3)
    assert m.compute(recs, ignore_case=True)["exact-match"] == pytest.approx(2 / 3)
    assert [m.correct(r) for r in recs] == [True, False, False]


def test_mc_accuracy_text_letters_and_ranked_output():
    m = get_metric("mc-accuracy")
    cands = ["red", "green", "blue"]
    recs = [
        {"prediction": "green", "candidates": cands, "label": "green"},            # rank output
        {"prediction": "B", "candidates": cands, "label": "green"},                # option letter
        {"prediction": "The answer is (c).", "candidates": cands, "label": "green"},  # wrong
        {"prediction": "", "candidates": cands, "scores": [-3.0, -1.0, -1.0], "label": 1},
        {"prediction": "Blue", "reference": "blue"},                               # no candidates
        {"prediction": "b", "reference": "(b)", "label": "b"},                     # letter gold
    ]
    assert [m.correct(r) for r in recs] == [True, True, False, True, True, True]
    assert m.compute(recs)["mc-accuracy"] == pytest.approx(5 / 6)
    with pytest.raises(MetricError, match="label 5"):
        m.correct({"prediction": "red", "candidates": cands, "label": 5})


# --- ROUGE-L -------------------------------------------------------------------------------------
def test_rouge_l_agrees_with_rouge_score():
    from rouge_score import rouge_scorer

    m = get_metric("rouge-l")
    recs = [{"prediction": p, "reference": refs} for p, refs in CAPTIONS]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    want = sum(max(scorer.score(r, p)["rougeL"].fmeasure for r in refs)
               for p, refs in CAPTIONS) / len(CAPTIONS)
    assert m.compute(recs)["rouge-l"] == pytest.approx(want)
    # hand case: LCS("the cat sat", "the cat ran") = 2 of 3 tokens -> P = R = F = 2/3
    assert m.compute([{"prediction": "the cat sat", "reference": "the cat ran"}])["rouge-l"] == \
        pytest.approx(2 / 3)
    assert m.correct(recs[0]) is None


# --- BLEU / CIDEr --------------------------------------------------------------------------------
def _coco_reference(records, tokenize):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {str(i): [tokenize(r) for r in refs] for i, (_, refs) in enumerate(records)}
    res = {str(i): [tokenize(p)] for i, (p, _) in enumerate(records)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return bleu, cider


def test_bleu_and_cider_agree_with_pycocoevalcap_on_python_tokens():
    recs = [{"prediction": p, "reference": refs} for p, refs in CAPTIONS]
    bleu_ref, cider_ref = _coco_reference(CAPTIONS, python_ptb_tokenize)
    got = get_metric("bleu").compute(recs, tokenizer="python")
    assert [got[f"bleu-{n}"] for n in (1, 2, 3, 4)] == pytest.approx(bleu_ref)
    assert got["bleu"] == got["bleu-4"]
    assert get_metric("cider").compute(recs, tokenizer="python")["cider"] == \
        pytest.approx(cider_ref)


def test_bleu_hand_computed_unigram_precision():
    # clipped unigram matches: the x2, cat, on, mat = 5 of 6; equal lengths -> no brevity penalty
    got = get_metric("bleu").compute([{"prediction": "the cat sat on the mat",
                                       "reference": ["the cat is on the mat"]}],
                                     tokenizer="python")
    assert got["bleu-1"] == pytest.approx(5 / 6, abs=1e-6)
    same = get_metric("bleu").compute([{"prediction": "a b c d e", "reference": "a b c d e"}],
                                      tokenizer="python")
    assert same["bleu-4"] == pytest.approx(1.0, abs=1e-6)


def test_cider_rewards_consensus():
    good = [{"prediction": refs[0], "reference": refs} for _, refs in CAPTIONS]
    bad = [{"prediction": "an unrelated sentence about trains", "reference": refs}
           for _, refs in CAPTIONS]
    c = get_metric("cider")
    assert c.compute(good, tokenizer="python")["cider"] > 1.0
    assert c.compute(bad, tokenizer="python")["cider"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.skipif(not java_available(), reason="java not installed (PTBTokenizer needs it)")
def test_python_tokenizer_matches_stanford_ptb():
    texts = [c for _, refs in CAPTIONS for c in refs] + [p for p, _ in CAPTIONS] + [
        "She said 'hello' to them.", "The U.S. flag [torn] waves; it's 3:30 pm!",
        "A black-and-white photo of 1,000 birds... flying", 'Two "happy" people -- smiling.']
    caps = {str(i): [t] for i, t in enumerate(texts)}
    assert tokenize_captions(caps, "ptb") == tokenize_captions(caps, "python")


@pytest.mark.skipif(not java_available(), reason="java not installed (PTBTokenizer needs it)")
def test_bleu_cider_with_java_tokenizer_agree_with_pycocoevalcap_pipeline():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({str(i): [{"caption": r} for r in refs]
                                   for i, (_, refs) in enumerate(CAPTIONS)})
    res = PTBTokenizer().tokenize({str(i): [{"caption": p}] for i, (p, _) in enumerate(CAPTIONS)})
    bleu_ref, cider_ref = _coco_reference(
        [(res[str(i)][0], gts[str(i)]) for i in range(len(CAPTIONS))], lambda s: s)
    recs = [{"prediction": p, "reference": refs} for p, refs in CAPTIONS]
    assert get_metric("bleu").compute(recs, tokenizer="ptb")["bleu-4"] == \
        pytest.approx(bleu_ref[3])
    assert get_metric("cider").compute(recs, tokenizer="ptb")["cider"] == pytest.approx(cider_ref)


def test_ptb_tokenizer_without_java_is_a_clear_error(monkeypatch):
    import mmit.evaluation.metrics.coco_tokenizer as ct

    monkeypatch.setattr(ct.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="java"):
        ct.tokenize_captions({"0": ["a cat"]}, "ptb")
    # auto falls back to the pure-Python tokenizer
    assert ct.tokenize_captions({"0": ["A cat."]}, "auto") == {"0": ["a cat"]}


def test_auto_tokenizer_falls_back_when_java_fails(monkeypatch):
    import mmit.evaluation.metrics.coco_tokenizer as ct

    def broken(captions):
        raise PermissionError("read-only site-packages")

    monkeypatch.setattr(ct.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(ct, "_ptb_tokenize", broken)
    assert ct.tokenize_captions({"0": ["A cat (red)."]}, "auto") == {"0": ["a cat -lrb- red -rrb-"]}
    with pytest.raises(RuntimeError, match="PTBTokenizer failed"):
        ct.tokenize_captions({"0": ["a cat"]}, "ptb")


def test_empty_predictions_are_scored_not_crashed():
    recs = [{"prediction": "", "reference": refs} for _, refs in CAPTIONS]
    assert get_metric("bleu").compute(recs)["bleu-1"] == pytest.approx(0.0, abs=1e-6)
    assert get_metric("cider").compute(recs)["cider"] == 0.0
    assert get_metric("rouge-l").compute(recs)["rouge-l"] == 0.0


# --- ROC-AUC -------------------------------------------------------------------------------------
def test_roc_auc_agrees_with_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = random.Random(0)
    recs, y, p = [], [], []
    for i in range(40):
        gold = rng.choice(["no", "yes"])
        s_no, s_yes = rng.gauss(0, 1), rng.gauss(0.8 if gold == "yes" else 0, 1)
        recs.append({"id": i, "candidates": ["no", "yes"], "scores": [s_no, s_yes], "label": gold,
                     "prediction": "yes" if s_yes > s_no else "no"})
        y.append(int(gold == "yes"))
        p.append(1 / (1 + math.exp(-(s_yes - s_no))))
    got = get_metric("roc-auc").compute(recs)["roc-auc"]
    assert got == pytest.approx(roc_auc_score(y, p))
    assert 0.5 < got < 1.0
    assert get_metric("roc-auc").correct(recs[0]) == (recs[0]["prediction"] == recs[0]["label"])


def test_roc_auc_hand_cases_and_errors():
    m = get_metric("roc-auc")
    perfect = [{"positive_score": 0.9, "label": 1}, {"positive_score": 0.2, "label": 0},
               {"positive_score": 0.7, "label": True}, {"positive_score": 0.1, "label": 0}]
    assert m.compute(perfect)["roc-auc"] == 1.0
    inverted = [dict(r, positive_score=1 - r["positive_score"]) for r in perfect]
    assert m.compute(inverted)["roc-auc"] == 0.0
    hateful = [{"candidates": ["not hateful", "hateful"], "scores": [-1.0, -2.0],
                "label": "hateful"},
               {"candidates": ["not hateful", "hateful"], "scores": [-1.0, -3.0],
                "label": "not hateful"}]
    assert m.compute(hateful, positive="hateful")["roc-auc"] == 1.0
    with pytest.raises(MetricError, match="positive class 'yes'"):
        m.compute(hateful)
    assert math.isnan(m.compute(perfect[:1])["roc-auc"])  # one class: undefined


# --- MRR -----------------------------------------------------------------------------------------
def test_mrr_hand_computed():
    cands = [f"answer {k}" for k in range(10)]
    recs = [
        {"candidates": cands, "scores": [9 - k for k in range(10)], "label": "answer 0"},  # rank 1
        {"candidates": cands, "scores": [9 - k for k in range(10)], "label": 1},           # rank 2
        {"candidates": cands, "scores": [9 - k for k in range(10)], "reference": "answer 3"},  # 4
        {"candidates": cands, "scores": [0.0] * 10, "label": "answer 5"},  # ties: stable -> 6
    ]
    got = get_metric("mrr").compute(recs)
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 6) / 4)
    assert got["r@1"] == 0.25 and got["r@5"] == 0.75 and got["r@10"] == 1.0
    assert got["mean-rank"] == pytest.approx((1 + 2 + 4 + 6) / 4)
    assert [get_metric("mrr").correct(r) for r in recs] == [True, False, False, False]
    with pytest.raises(MetricError, match="not among"):
        get_metric("mrr").compute([{"candidates": cands, "scores": [0] * 10, "label": "zzz"}])
    with pytest.raises(MetricError, match="aligned"):
        get_metric("mrr").compute([{"candidates": cands, "scores": [0] * 3, "label": 1}])


# --- MultiInstruct -------------------------------------------------------------------------------
ROWS = ([{"task": "visual_nli", "template": t, "score": s}
         for t, s in enumerate([0.5, 0.6, 0.7, 0.8, 0.9])]
        + [{"task": "text_vqa", "template": t, "score": 0.4} for t in range(5)])


def test_multiinstruct_aggregate_and_sensitivity_hand_computed():
    agg = get_metric("multiinstruct-aggregate").compute(ROWS)
    assert agg["multiinstruct-aggregate"] == pytest.approx((0.7 + 0.4) / 2)
    assert agg["multiinstruct-aggregate/visual_nli"] == pytest.approx(0.7)
    sens = get_metric("instruction-sensitivity")
    assert sens.higher_is_better is False
    got = sens.compute(ROWS)
    # visual_nli: population std of 0.5..0.9 = sqrt(0.02); / mean 0.7. text_vqa: 0.
    assert got["instruction-sensitivity/visual_nli"] == pytest.approx(math.sqrt(0.02) / 0.7)
    assert got["instruction-sensitivity/text_vqa"] == 0.0
    assert got["instruction-sensitivity"] == pytest.approx(math.sqrt(0.02) / 0.7 / 2)
    sample_std = sens.compute(ROWS, ddof=1)["instruction-sensitivity/visual_nli"]
    assert sample_std == pytest.approx(math.sqrt(0.025) / 0.7)


def test_multiinstruct_from_per_sample_records():
    # task A: template 0 all right, template 1 half right; task B scored with exact match
    recs = ([{"task": "A", "template": 0, "prediction": "yes", "reference": "yes"}] * 2
            + [{"task": "A", "template": 1, "prediction": p, "reference": "yes"}
               for p in ("yes", "no")]
            + [{"task": "B", "template": t, "prediction": "cat", "reference": "cat"}
               for t in (0, 1)])
    metric = {"A": "mc-accuracy", "B": "exact-match"}
    agg = get_metric("multiinstruct-aggregate").compute(recs, metric=metric)
    assert agg["multiinstruct-aggregate"] == pytest.approx((0.75 + 1.0) / 2)
    sens = get_metric("instruction-sensitivity").compute(recs, metric=metric)
    assert sens["instruction-sensitivity/A"] == pytest.approx(0.25 / 0.75)
    assert sens["instruction-sensitivity"] == pytest.approx((0.25 / 0.75 + 0.0) / 2)
    with pytest.raises(MetricError, match="metric=<name>"):
        get_metric("multiinstruct-aggregate").compute(recs)


def test_sensitivity_edge_cases():
    sens = get_metric("instruction-sensitivity")
    with pytest.raises(MetricError, match="at least 2"):
        sens.compute([{"task": "A", "template": 0, "score": 0.5}])
    zero = [{"task": "Z", "template": t, "score": 0.0} for t in range(5)]
    got = sens.compute(ROWS + zero)
    assert got["instruction-sensitivity/undefined-tasks"] == 1.0
    assert "instruction-sensitivity/Z" not in got
    assert got["instruction-sensitivity"] == pytest.approx(math.sqrt(0.02) / 0.7 / 2)
    with pytest.raises(MetricError, match="'task'"):
        sens.compute([{"template": 0, "score": 1.0}])

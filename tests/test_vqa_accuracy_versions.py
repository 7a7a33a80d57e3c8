"""The two VQA accuracy versions (mmit.evaluation.metrics.accuracy): ``vqa-accuracy`` follows the
2016 official script (GT-Vision-Lab/VQA ``vqaEval.py`` @ 458a8b2, the same as LAVIS's
``vqa_eval.py``), ``vqa-accuracy-2021`` the current one (@ a013f00, "Fixed processing answers bug").

Every expected number below is derived by hand from that version's rules:

* 2016: prediction -> processPunctuation -> processDigitArticle, always. Answers are taken as
  written (not stripped); only when they are not all identical, processPunctuation alone.
* 2021: answers and prediction: newlines/tabs -> spaces, strip. Only when the (stripped) answers
  are not all identical, both sides get processPunctuation -> processDigitArticle; otherwise
  neither does.
* Both: for each of the n leave-one-out subsets of n - 1 answers, min(#matches / 3, 1); the mean.
  With k of 10 answers matching: (k * min((k - 1) / 3, 1) + (10 - k) * min(k / 3, 1)) / 10, so
  k = 0, 1, 2, 3, >= 4 give 0, 0.3, 0.6, 0.9, 1.0.

processPunctuation: each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! is deleted when it touches
a space or when the text has a digit-comma-digit group, else replaced by a space; then periods not
followed by a digit are deleted (at most 32). processDigitArticle: lower-case, split, number words
none/zero..ten -> digits, drop a/an/the, restore contraction apostrophes (lower-case keys only).

When the fetched mirrors of GT-Vision-Lab/VQA and salesforce/LAVIS are present, the metrics are
also compared with the original scripts themselves on a few hundred generated answer sets.
"""

from __future__ import annotations

import copy
import os
import random
import re
import shutil
import subprocess
import types
import warnings
from pathlib import Path

import pytest

from mmit.evaluation.metrics import (METRICS, VQA_VERSIONS, MetricError, get_metric, vqa_prepare,
                                     vqa_score)


def ans(*groups):
    """``ans((3, "yes"), (7, "no"))`` -> 3 x "yes" + 7 x "no"."""
    return [a for n, a in groups for _ in range(n)]


# (id, prediction, answers, expected 2016, expected 2021); the comment under each derives them
CASES = [
    # --- punctuation ---------------------------------------------------------------------------
    ("punct-bang", "yes!", ans((3, "yes"), (7, "no")), 0.9, 0.9,
     # "!" touches no space -> space -> "yes " -> split -> "yes"; answers disagree and have no
     # punctuation. 3 matches -> 0.9 in both.
     ),
    ("punct-bang-identical", "yes!", ans((10, "yes")), 1.0, 0.0,
     # 2016: prediction -> "yes", answers untouched "yes": 10 matches -> 1.0.
     # 2021: answers identical -> no processing: "yes!" != "yes" -> 0.0.
     ),
    ("punct-slash-in-answers", "black white", ans((4, "black/white"), (6, "gray")), 1.0, 1.0,
     # answers disagree: "/" touches no space -> space -> "black white" (both versions); 4 -> 1.0.
     ),
    ("punct-touching-space", "yes !", ans((2, "yes"), (8, "no")), 0.6, 0.6,
     # " !" in text -> "!" deleted -> "yes " -> "yes"; 2 matches -> 0.6.
     ),
    ("punct-case-in-answers", "red", ans((3, "Red"), (7, "blue")), 0.0, 0.9,
     # 2016: answers only get processPunctuation, "Red" keeps its capital -> 0 matches.
     # 2021: answers lower-cased by processDigitArticle -> "red": 3 matches -> 0.9.
     ),
    # --- articles ------------------------------------------------------------------------------
    ("article-in-answers", "the cat", ans((4, "the cat"), (6, "dog")), 0.0, 1.0,
     # 2016: prediction -> "cat", answers keep "the cat" -> 0. 2021: answers -> "cat": 4 -> 1.0.
     ),
    ("article-in-prediction", "a cat", ans((3, "cat"), (7, "dog")), 0.9, 0.9,
     # prediction -> "cat" in both; 3 matches -> 0.9.
     ),
    # --- number words --------------------------------------------------------------------------
    ("number-word-identical", "Two", ans((10, "2")), 1.0, 0.0,
     # 2016: "Two" -> "two" -> "2" = all 10 answers -> 1.0.
     # 2021: answers identical -> no processing: "Two" != "2" -> 0.0.
     ),
    ("number-word-in-answers", "two", ans((3, "two"), (7, "3")), 0.0, 0.9,
     # 2016: prediction -> "2", answers keep "two" -> 0. 2021: answers "two" -> "2": 3 -> 0.9.
     ),
    ("number-word-mixed", "2", ans((2, "2"), (2, "two"), (6, "1")), 0.6, 1.0,
     # 2016: only the two literal "2" match -> 0.6. 2021: "two" -> "2" too: 4 matches -> 1.0.
     ),
    ("number-word-none", "none", ans((3, "0"), (7, "1")), 0.9, 0.9,
     # "none" -> "0" in both; 3 matches -> 0.9.
     ),
    # --- a.m. ----------------------------------------------------------------------------------
    ("am-in-prediction", "10 A.M.", ans((3, "10 am"), (7, "noon")), 0.9, 0.9,
     # both periods have no digit after them -> deleted -> "10 AM" -> lower "10 am"; 3 -> 0.9.
     ),
    ("am-in-answers", "10 am", ans((3, "10 a.m."), (7, "noon")), 0.9, 0.9,
     # answers disagree: processPunctuation strips the periods -> "10 am" (both); 3 -> 0.9.
     ),
    ("am-identical", "10 a.m.", ans((10, "10 a.m.")), 0.0, 1.0,
     # 2016: prediction -> "10 am", answers untouched "10 a.m." -> 0.0.
     # 2021: nothing normalised, "10 a.m." == "10 a.m." -> 1.0.
     ),
    # --- contractions --------------------------------------------------------------------------
    ("contraction-in-prediction", "dont", ans((3, "don't"), (7, "no")), 0.9, 0.9,
     # prediction "dont" -> "don't"; answers' apostrophe is kept by processPunctuation; 3 -> 0.9.
     ),
    ("contraction-in-answers", "don't", ans((4, "dont"), (6, "no")), 0.0, 1.0,
     # 2016: answers keep "dont" != "don't" -> 0. 2021: answers "dont" -> "don't": 4 -> 1.0.
     ),
    ("contraction-capital-key", "Im", ans((3, "im"), (7, "no")), 0.9, 0.9,
     # the table's key is "Im" but words are looked up lower-cased: "im" stays "im"; 3 -> 0.9.
     ),
    # --- thousands separators ------------------------------------------------------------------
    ("thousands-in-prediction", "1,000", ans((3, "1000"), (7, "500")), 0.9, 0.9,
     # digit-comma-digit -> the comma is deleted -> "1000"; 3 matches -> 0.9.
     ),
    ("thousands-drops-all-punct", "1,000 (approx)", ans((3, "1000 approx"), (7, "x")), 0.9, 0.9,
     # a digit-comma-digit group deletes every punctuation mark -> "1000 approx"; 3 -> 0.9.
     ),
    ("thousands-identical-both-written", "1,000", ans((10, "1,000")), 0.0, 1.0,
     # 2016: prediction -> "1000", answers untouched "1,000" -> 0.0. 2021: raw equal -> 1.0.
     ),
    ("thousands-identical", "1000", ans((10, "1,000")), 0.0, 0.0,
     # identical answers are never normalised in either version: "1000" != "1,000".
     ),
    # --- trailing periods, decimals ------------------------------------------------------------
    ("period-in-prediction", "yes.", ans((3, "yes"), (7, "no")), 0.9, 0.9,
     # "." not before a digit -> deleted -> "yes"; 3 -> 0.9.
     ),
    ("period-in-answers", "yes", ans((3, "yes."), (7, "no")), 0.9, 0.9,
     # answers disagree -> processPunctuation deletes their period in both; 3 -> 0.9.
     ),
    ("period-identical", "Yes.", ans((10, "yes")), 1.0, 0.0,
     # 2016: "Yes." -> "yes" -> 1.0. 2021: identical answers -> "Yes." != "yes" -> 0.0.
     ),
    ("period-identical-answers", "yes", ans((10, "Yes.")), 0.0, 0.0,
     # identical answers stay "Yes." in both; "yes" matches none.
     ),
    ("decimal-kept", "2.5", ans((3, "2.5"), (7, "25")), 0.9, 0.9,
     # the period is followed by a digit -> kept -> "2.5"; 3 -> 0.9.
     ),
    ("period-cap-32", "x" + "." * 33, ans((3, "x"), (7, "y")), 0.0, 0.0,
     # re.sub's count is re.UNICODE = 32: 33 periods leave one -> "x." != "x" -> 0.
     ),
    # --- whitespace ----------------------------------------------------------------------------
    ("answer-trailing-space", "yes", ans((3, "yes "), (7, "no")), 0.0, 0.9,
     # 2016: answers are not stripped, "yes " != "yes" -> 0. 2021: stripped -> 3 -> 0.9.
     ),
    ("prediction-newline", "yes\n", ans((10, "yes")), 1.0, 1.0,
     # both turn the newline into a space and strip the prediction -> "yes" -> 1.0.
     ),
]


@pytest.mark.parametrize("pred, answers, e2016, e2021",
                         [c[1:5] for c in CASES], ids=[c[0] for c in CASES])
def test_tricky_cases_by_the_rules_of_each_version(pred, answers, e2016, e2021):
    assert vqa_score(pred, answers) == pytest.approx(e2016)  # default: 2016
    assert vqa_score(pred, answers, version="2016") == pytest.approx(e2016)
    assert vqa_score(pred, answers, version="2021") == pytest.approx(e2021)
    rec = {"prediction": pred, "reference": answers}
    assert get_metric("vqa-accuracy").compute([rec])["vqa-accuracy"] == pytest.approx(e2016)
    assert get_metric("vqa-accuracy-2021").compute([rec])["vqa-accuracy-2021"] == \
        pytest.approx(e2021)


def test_the_versions_disagree_on_the_issue_example():
    # ten "2", prediction "Two": 2016 normalises the prediction to "2" (1.0); 2021 normalises
    # nothing when the answers agree, and "Two" != "2" (0.0).
    rec = {"prediction": "Two", "reference": ["2"] * 10}
    assert get_metric("vqa-accuracy").compute([rec]) == {"vqa-accuracy": 1.0}
    assert get_metric("vqa-accuracy-2021").compute([rec]) == {"vqa-accuracy-2021": 0.0}
    assert get_metric("vqa-accuracy").correct(rec) is True
    assert get_metric("vqa-accuracy-2021").correct(rec) is False
    assert sum(c[3] != c[4] for c in CASES) >= 8


@pytest.mark.parametrize("version", VQA_VERSIONS)
@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                         (7, 1.0), (10, 1.0)])
def test_leave_one_out_average(version, k, expected):
    # (k * min((k-1)/3, 1) + (10-k) * min(k/3, 1)) / 10; e.g. k = 3: (3 * 2/3 + 7 * 1) / 10 = 0.9.
    answers = ["yes"] * k + ["no", "maybe"] * ((10 - k) // 2) + ["no"] * ((10 - k) % 2)
    assert len(answers) == 10
    assert vqa_score("yes", answers, version=version) == pytest.approx(expected)


@pytest.mark.parametrize("version", VQA_VERSIONS)
def test_leave_one_out_other_sizes_and_min_matches(version):
    # 5 answers, 2 match: subsets without a match (2 of them) see 1 -> 1/3, the other 3 see 2 ->
    # 2/3: (2/3 + 2) / 5 = 8/15.
    assert vqa_score("cat", ["cat", "cat", "dog", "cow", "pig"], version=version) == \
        pytest.approx(8 / 15)
    # min_matches = 1, 1 of 10 matches: the subset without it sees 0, the 9 others 1 -> 0.9.
    assert vqa_score("cat", ["cat"] + ["dog"] * 9, 1, version) == pytest.approx(0.9)
    name = "vqa-accuracy" if version == "2016" else "vqa-accuracy-2021"
    rec = {"prediction": "cat", "reference": ["cat"] + ["dog"] * 9}
    assert get_metric(name).compute([rec], min_matches=1)[name] == pytest.approx(0.9)


def test_single_answer_uses_the_gqa_rule_in_both_versions():
    # a lone answer: exact match after full normalisation of both sides (LAVIS's GQA rule).
    for version in VQA_VERSIONS:
        assert vqa_score("The Table.", ["table"], version=version) == 1.0
        assert vqa_score("Two", ["2"], version=version) == 1.0
        assert vqa_score("chair", ["table"], version=version) == 0.0


def test_prepare_shows_what_each_version_compares():
    assert vqa_prepare("Two", ["2"] * 10, "2016") == ("2", ["2"] * 10)
    assert vqa_prepare("Two", ["2"] * 10, "2021") == ("Two", ["2"] * 10)
    assert vqa_prepare(" The cat\t", ["the cat ", "dog"], "2016") == ("cat", ["the cat ", "dog"])
    assert vqa_prepare(" The cat\t", ["the cat ", "dog"], "2021") == ("cat", ["cat", "dog"])


def test_registry_errors_and_mixed_records():
    assert METRICS.get("vqa-accuracy-2021").name == "vqa-accuracy-2021"
    assert get_metric("vqa-accuracy").version == "2016"
    assert get_metric("vqa-accuracy-2021").version == "2021"
    recs = [{"prediction": c[1], "reference": c[2]} for c in CASES]
    assert get_metric("vqa-accuracy").compute(recs)["vqa-accuracy"] == \
        pytest.approx(sum(c[3] for c in CASES) / len(CASES))
    assert get_metric("vqa-accuracy-2021").compute(recs)["vqa-accuracy-2021"] == \
        pytest.approx(sum(c[4] for c in CASES) / len(CASES))
    with pytest.raises(ValueError, match="2016, 2021"):
        vqa_score("yes", ["yes"] * 10, version="2019")
    with pytest.raises(ValueError, match="2016, 2021"):
        vqa_score("yes", ["yes"], version="latest")
    with pytest.raises(ValueError, match="at least one answer"):
        vqa_score("yes", [], version="2021")
    with pytest.raises(TypeError, match="vqa-accuracy-2021"):
        get_metric("vqa-accuracy-2021").compute(recs, version="2016")
    with pytest.raises(MetricError, match="vqa-accuracy-2021: record 0"):
        get_metric("vqa-accuracy-2021").compute([{"prediction": "x"}])
    with pytest.raises(ValueError, match="no records"):
        get_metric("vqa-accuracy-2021").compute([])


# --- comparison with the original scripts (fetched mirrors) --------------------------------------

MIRRORS = Path(os.environ.get("MMIT_MIRROR_ROOT", "/work/.mirror"))
VQA_FILE = "PythonEvaluationTools/vqaEvaluation/vqaEval.py"
REFERENCES = {  # name -> (mirror, commit, path)
    "official-2016": ("GT-Vision-Lab+VQA", "458a8b268b1a239dc388e0af4423f3fe7477b04f", VQA_FILE),
    "official-2021": ("GT-Vision-Lab+VQA", "a013f0043c1e2cdc995922dfe257f7149aa9af06", VQA_FILE),
    "lavis": ("salesforce+LAVIS", "506965b9c4a18c1e565bd32acaccabe0198433f7",
              "lavis/common/vqa_tools/vqa_eval.py"),
}
VERSION_OF = {"official-2016": "2016", "official-2021": "2021", "lavis": "2016"}


def load_reference(name):
    """The ``VQAEval`` class of a reference script, read from its mirror at the pinned commit. The
    official scripts are Python 2; only their two ``print "..."`` statements are made calls."""
    mirror, commit, path = REFERENCES[name]
    repo = MIRRORS / mirror / "repo"
    if not repo.is_dir() or shutil.which("git") is None:
        pytest.skip(f"{name}: the mirror {repo} (or git) is absent; fetch github:"
                    f"{mirror.replace('+', '/')} to compare with the original script")
    out = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"{name}: {commit[:7]}:{path} not in {repo}: {out.stderr.strip()}")
    src = re.sub(r'^(\s*)print (".*")\s*$', r"\1print(\2)", out.stdout, flags=re.M)
    module = types.ModuleType(f"vqa_eval_{name.replace('-', '_')}")
    with warnings.catch_warnings():  # "\d" in non-raw strings
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        exec(compile(src, f"{name}/{path}", "exec"), module.__dict__)
    return module.VQAEval


class _QA:
    """The two attributes VQAEval reads from its ``vqa`` / ``vqaRes`` objects."""

    def __init__(self, qa):
        self.qa = qa

    def getQuesIds(self):
        return list(self.qa)


def reference_scores(vqa_eval_cls, cases):
    """Per-case accuracy (fraction) from the original ``VQAEval.evaluate``."""
    gts = {q: {"question_type": "what", "answer_type": "other",
               "answers": [{"answer": a, "answer_id": j + 1, "answer_confidence": "yes"}
                           for j, a in enumerate(answers)]}
           for q, (_, answers) in enumerate(cases)}
    res = {q: {"question_id": q, "answer": pred} for q, (pred, _) in enumerate(cases)}
    ev = vqa_eval_cls(_QA(copy.deepcopy(gts)), _QA(res), n=12)
    ev.evaluate()
    return [ev.evalQA[q] / 100 for q in range(len(cases))]


POOL = ["2", "two", "Two", "2.", "two.", "TWO", "3", "three", "none", "0", "zero", "10",
        "yes", "Yes", "yes.", "Yes.", "yes ", " yes", "yes!", "yes !", "no", "No.", "nope",
        "dont", "don't", "Dont", "cant", "can't", "its", "it's", "Im", "im", "I'm",
        "1,000", "1000", "1 000", "1,000.", "10,000 (approx)", "2.5", "2,5", "3.0", "3",
        "10 a.m.", "10 am", "10 AM", "10:30 a.m.", "10:30 am", "noon",
        "the cat", "a cat", "cat", "Cat.", "an apple", "apple", "the", "a",
        "black/white", "black and white", "black white", "black-white", "red, white", "red,white",
        "red", "Red", "RED", "left", "(left)", "left?", "x-ray", "x ray", "x_ray", "tennis racket",
        "tennis\tracket", "tennis racket\n", "oclock", "o'clock", "5 oclock", "5 o'clock"]


def generated_cases(n=300, seed=11):
    """Answer sets of 10 with few distinct answers (so matches happen) and often all identical
    (where the versions differ most); predictions from the pool or an answer in another form."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        if rng.random() < 0.3:
            answers = [rng.choice(POOL)] * 10
        else:
            base = rng.sample(POOL, rng.randint(2, 4))
            answers = [rng.choice(base) for _ in range(10)]
        r = rng.random()
        if r < 0.4:
            pred = rng.choice(answers)
        elif r < 0.7:
            pred = rng.choice([str.upper, str.title, lambda s: s + ".", lambda s: " " + s + "\n",
                               lambda s: "the " + s, lambda s: s.replace("'", "")])(
                rng.choice(answers))
        else:
            pred = rng.choice(POOL)
        cases.append((pred, answers))
    return cases


@pytest.mark.parametrize("name", list(REFERENCES))
def test_agrees_with_the_original_scripts_on_generated_cases(name, capsys):
    cls = load_reference(name)
    cases = generated_cases() + [(c[1], c[2]) for c in CASES]
    want = reference_scores(cls, cases)
    capsys.readouterr()  # the scripts print progress
    version = VERSION_OF[name]
    metric = get_metric("vqa-accuracy" if version == "2016" else "vqa-accuracy-2021")
    bad = []
    for (pred, answers), w in zip(cases, want):
        got = metric.compute([{"prediction": pred, "reference": answers}])[metric.name]
        if abs(got - w) > 1e-9:
            bad.append((pred, answers, got, w))
    assert not bad, f"{len(bad)} of {len(cases)} differ from {name}, e.g. {bad[:3]}"
    # the hand-derived expectations agree with the script of their version too
    hand = want[-len(CASES):]
    assert hand == pytest.approx([c[3] if version == "2016" else c[4] for c in CASES])


def test_the_generated_cases_separate_the_versions():
    cases = generated_cases()
    differ = sum(vqa_score(p, a, version="2016") != vqa_score(p, a, version="2021")
                 for p, a in cases)
    assert differ >= 30, differ  # the comparison above exercises both sides of every rule

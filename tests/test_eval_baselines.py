"""Honest baselines: majority (constant-answer) score, cluster-bootstrap intervals, the table and
chart that show them, and the procedural suite's balanced labels."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from mmit.evaluation.metrics import get_metric
from mmit.evaluation.metrics.baselines import (bootstrap_distribution, majority_baseline, percentile_interval,
                                               wilson_interval)


def _mc(labels, preds, templates=1):
    """Ranked multiple-choice records over 4 counts; sample i has ``templates`` prompts."""
    cands = ["1", "2", "3", "4"]
    recs = []
    for i, (y, p) in enumerate(zip(labels, preds)):
        for t in range(templates):
            recs.append({"task": "t", "id": f"s{i}", "template": t, "candidates": cands, "label": y,
                         "prediction": p, "reference": y,
                         "scores": [0.0 if c == p else -1.0 for c in cands]})
    return recs


def test_majority_is_the_most_frequent_label_not_uniform_chance():
    labels = ["1"] * 71 + ["2"] * 15 + ["3"] * 9 + ["4"] * 5  # color-count's old skew
    recs = _mc(labels, ["2"] * 100)
    value, answer = majority_baseline(get_metric("mc-accuracy"), recs)
    assert answer == "1" and value == pytest.approx(0.71)
    # vqa-accuracy: the constant that most humans gave wins; leave-one-out scoring applies
    vqa = [{"id": i, "prediction": "x", "reference": ["yes"] * 7 + ["no"] * 3} for i in range(4)]
    v, a = majority_baseline(get_metric("vqa-accuracy"), vqa)
    assert a == "yes" and v == pytest.approx(1.0)
    # corpus metrics have no per-record value: no majority baseline
    assert majority_baseline(get_metric("cider"), vqa) == (None, None)


def test_bootstrap_interval_resamples_samples_not_prompts_and_is_deterministic():
    rng = random.Random(0)
    labels = [rng.choice("1234") for _ in range(60)]
    preds = [y if rng.random() < 0.6 else "1" for y in labels]
    m = get_metric("mc-accuracy")
    one = _mc(labels, preds, templates=1)
    five = _mc(labels, preds, templates=5)  # the same answers repeated: no new information
    acc = m.compute(one)["mc-accuracy"]
    d1, d5 = bootstrap_distribution(m, one), bootstrap_distribution(m, five)
    assert d1.shape == (1000,) and np.array_equal(d1, bootstrap_distribution(m, one))  # fixed seed
    lo, hi = percentile_interval(d1)
    assert lo < acc < hi and hi - lo > 0.1
    # clustering by sample id: five identical templates give the same interval as one
    assert percentile_interval(d5) == pytest.approx(percentile_interval(d1))
    # the interval agrees with Wilson's binomial interval on independent records (within 0.05)
    w = wilson_interval(sum(m.correct(r) for r in one), len(one))
    assert abs(lo - w[0]) < 0.05 and abs(hi - w[1]) < 0.05
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_corpus_metric_interval_is_recomputed_only_when_cheap():
    recs = [{"id": i, "candidates": ["yes", "no"], "scores": [-float(i % 3), -1.0], "label": "yes" if i % 2 else "no",
             "prediction": "yes"} for i in range(30)]
    d = bootstrap_distribution(get_metric("roc-auc"), recs, n_boot=20)
    assert d.shape == (20,) and d.std() > 0
    caps = [{"id": i, "prediction": "a dog", "reference": ["a cat on a mat"]} for i in range(3)]
    assert bootstrap_distribution(get_metric("bleu"), caps) is None  # a tokenizer run per resample: skipped


def test_table_and_results_show_majority_and_interval(tmp_path):
    from mmit.evaluation.config import TaskConfig
    from mmit.evaluation.report import format_table, plot_results
    from mmit.evaluation.runner import honest_baselines, split_summary

    labels = ["1"] * 14 + ["2"] * 3 + ["3"] * 2 + ["4"]
    recs = _mc(labels, ["2"] * 20, templates=2)
    cfg = TaskConfig.__new__(TaskConfig)
    cfg.name, cfg.metrics = "t", ["mc-accuracy"]
    entry = {"split": "held-out", "n": 20, "n_prompts": 40, "metric": "mc-accuracy", "chance": 0.25,
             "mc-accuracy": get_metric("mc-accuracy").compute(recs)["mc-accuracy"]}
    entry.update(honest_baselines(cfg, recs))
    assert entry["majority"] == pytest.approx(0.7) and entry["majority_answer"] == "1"
    lo, hi = entry["ci95"]
    assert entry["mc-accuracy"] == pytest.approx(0.15) and lo <= 0.15 <= hi
    results = {"suite": "s", "tasks": {"t": entry}}
    results["splits"] = split_summary(results["tasks"], recs, {"t": cfg})
    sp = results["splits"]["held-out"]
    assert sp["majority"] == pytest.approx(0.7) and sp["ci95"] == pytest.approx(entry["ci95"])
    table = format_table(results)
    header = table.splitlines()[1]
    assert "majority" in header and "95% CI" in header and "chance" in header
    row = next(line for line in table.splitlines() if line.startswith("t "))
    assert "70.0" in row and "25.0" in row and f"{100 * lo:.1f}-{100 * hi:.1f}" in row
    # the chart draws one error bar per bar (the majority line differs from the chance one)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    seen = {}
    orig = plt.Axes.bar

    def spy(self, *a, **k):
        seen["yerr"] = k.get("yerr")
        return orig(self, *a, **k)

    plt.Axes.bar = spy
    try:
        assert plot_results(results, tmp_path / "p.png").stat().st_size > 1000
    finally:
        plt.Axes.bar = orig
    below, above = seen["yerr"]
    assert below[0] == pytest.approx(entry["mc-accuracy"] - lo) and above[0] == pytest.approx(hi - entry["mc-accuracy"])


@pytest.mark.parametrize("name", ["color-count", "color-exists", "shape", "count"])
def test_procedural_labels_are_balanced_and_deterministic(name):
    from mmit.evaluation.procedural import TASKS
    from mmit.evaluation.procedural.build import task_samples

    task = TASKS[name]
    got = [s.meta["label"] for s in task_samples(task, 30, seed=1)]
    counts = Counter(got)
    k = len(task.options)
    assert set(counts) == set(task.options) and max(counts.values()) - min(counts.values()) <= 1
    assert max(counts.values()) <= -(-30 // k)  # the majority baseline is chance (up to one sample)
    assert got == [s.meta["label"] for s in task_samples(task, 30, seed=1)]
    assert got != [s.meta["label"] for s in task_samples(task, 30, seed=2)]
    # the unbalanced generator is what it was (color-count: mostly "1")
    if name == "color-count":
        raw = Counter(s.meta["label"] for s in task_samples(task, 100, seed=1, balanced=False))
        assert raw["1"] > 50


def test_make_with_answer_rejects_foreign_answers():
    from mmit.evaluation.procedural import TASKS

    with pytest.raises(ValueError, match="not one of"):
        TASKS["count"].make_with_answer(random.Random(0), "5")
    with pytest.raises(ValueError, match="no scene with answer '4'"):
        TASKS["color-count"].make_with_answer(random.Random(0), "4", max_tries=1)

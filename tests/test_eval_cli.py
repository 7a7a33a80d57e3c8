"""``mmit eval`` end to end on a tiny trained checkpoint: results.json / predictions.jsonl shapes and counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmit.evaluation.procedural import TASKS

from conftest import DEMO_IMAGES, DEMO_JSON, tiny_run_config

N = 3  # samples per task


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step tiny LLaVA checkpoint trained on held-in procedural shards + procedural eval shards."""
    from mmit.evaluation.procedural.build import build_eval, build_train
    from mmit.evaluation.procedural.tasks import tasks_of_split
    from mmit.training.trainer import train

    root = tmp_path_factory.mktemp("eval_e2e")
    build_train(str(root / "train"), tasks_of_split("held-in"), 4, seed=0)
    build_eval(str(root / "eval"), [TASKS["color"], TASKS["color-count"]], 5, seed=1)
    cfg = tiny_run_config(root, max_steps=2, batch_size=4)
    cfg.data.format, cfg.data.path, cfg.data.media_root = "shards", str(root / "train"), None
    cfg.data.shuffle_buffer = 0
    run = train(cfg)
    return root, run


def _suite(root: Path) -> str:
    tpl = TASKS["color"].templates
    (root / "color.yaml").write_text(
        "name: color\nsplit: held-in\ndata: {format: shards, path: " + str(root / "eval" / "color") + "}\n"
        "templates: " + json.dumps(list(tpl)) + "\noutput: rank\nmetrics: [mc-accuracy]\n")
    (root / "color-count.yaml").write_text(
        "name: color-count\nsplit: held-out\ndata: {format: shards, path: " + str(root / "eval" / "color-count") + "}\n"
        'templates: ["How many {color} shapes are there?", "Count the {color} objects."]\n'
        "output: rank\nrank: {reduction: mean}\nmetrics: [mc-accuracy, exact-match]\n")
    # a generate task read straight from a source format (the bundled LLaVA records)
    (root / "llava-gen.yaml").write_text(
        f"name: llava-gen\nsplit: held-out\ndata: {{format: llava, path: {DEMO_JSON}, media_root: {DEMO_IMAGES}}}\n"
        "output: generate\ngenerate: {max_new_tokens: 4}\nmetrics: [exact-match, rouge-l]\npostprocess: lower\n")
    (root / "suite.yaml").write_text("name: e2e\ntasks: [color.yaml, color-count.yaml, llava-gen.yaml]\n"
                                     "batch_size: 4\n")
    return str(root / "suite.yaml")


def test_mmit_eval_end_to_end(trained, capsys):
    from mmit.cli import main

    root, run = trained
    out = root / "out"
    rc = main(["eval", "--config_path", _suite(root), "--checkpoint", str(run), "--output", str(out),
               f"--max_samples={N}", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"suite", "tasks", "splits", "config_hash", "checkpoint"}
    assert res["checkpoint"] == str(run / "final") and len(res["config_hash"]) == 16
    tasks = res["tasks"]
    assert list(tasks) == ["color", "color-count", "llava-gen"]
    assert tasks["color"]["split"] == "held-in" and tasks["color-count"]["split"] == "held-out"
    assert tasks["color"]["n"] == N and tasks["color"]["n_prompts"] == 5 * N
    assert tasks["color-count"]["n_prompts"] == 2 * N
    assert tasks["color"]["chance"] == pytest.approx(0.25)
    assert sorted(tasks["color"]["per_template"]) == ["0", "1", "2", "3", "4"]
    assert "per_template" not in tasks["llava-gen"]  # one template: no per-template breakdown
    # llava-gen: the first N readable records; the reader's skip is counted only when reached
    assert tasks["llava-gen"]["n"] == N and set(tasks["llava-gen"]) >= {"exact-match", "rouge-l", "metric"}

    lines = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == sum(t["n_prompts"] for t in tasks.values())
    for name, t in tasks.items():
        mine = [l for l in lines if l["task"] == name]
        assert len(mine) == t["n_prompts"]
        assert all({"id", "template", "prompt", "prediction", "reference"} <= set(l) for l in mine)
        if name != "llava-gen":
            for l in mine:
                assert len(l["candidates"]) == len(l["scores"]) == 4
                assert l["prediction"] == l["candidates"][max(range(4), key=lambda k: (l["scores"][k], -k))]
                assert l["correct"] == (l["prediction"] == l["label"])
            # the headline figure is the mean of the per-line correctness, per template too
            assert t["mc-accuracy"] == pytest.approx(sum(l["correct"] for l in mine) / len(mine))
            for k, v in t["per_template"].items():
                sub = [l for l in mine if l["template"] == int(k)]
                assert v["mc-accuracy"] == pytest.approx(sum(l["correct"] for l in sub) / len(sub))
    assert res["splits"]["held-in"]["tasks"] == ["color"]
    assert res["splits"]["held-out"]["mean"] == pytest.approx(
        (tasks["color-count"]["mc-accuracy"] + tasks["llava-gen"]["exact-match"]) / 2)
    assert (out / "heldin_vs_heldout.png").stat().st_size > 1000
    assert "chance" in printed and "color-count" in printed and "25.0" in printed
    # honest baselines: the constant-answer score and a 95% interval beside every figure
    from collections import Counter

    assert "majority" in printed and "95% CI" in printed and "bootstrap" in res["ci_method"]
    for name in ("color", "color-count"):
        t, mine = tasks[name], [l for l in lines if l["task"] == name]
        assert t["majority"] == pytest.approx(Counter(l["label"] for l in mine).most_common(1)[0][1] / len(mine))
        lo, hi = t["ci95"]
        assert 0 <= lo <= t["mc-accuracy"] <= hi <= 1
    assert res["splits"]["held-in"]["majority"] == pytest.approx(tasks["color"]["majority"])


def test_mmit_eval_reports_bad_config(tmp_path, capsys):
    from mmit.cli import main

    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nsplit: held-out\ndata: {path: y}\nnum_beams: 5\n")
    rc = main(["eval", "--config_path", str(p), "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "num_beams" in err

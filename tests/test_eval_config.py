"""Eval task / suite YAML: shipped configs parse, mistakes give errors naming the file and the field."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from mmit.evaluation.config import config_hash, load_suite, load_task

ROOT = Path(__file__).resolve().parents[1]
TASK = """\
name: demo
split: held-out
data:
  format: shards
  path: somewhere
templates: ["{question}", "Q: {question} A:"]
output: rank
rank: {reduction: mean, candidates: ["yes", "no"]}
metrics: [mc-accuracy]
"""


def _write(p: Path, text: str) -> str:
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "configs" / "eval" / "**" / "*.yaml"), recursive=True)))
def test_every_shipped_eval_config_parses(path):
    suite, tasks = load_suite(path)
    assert tasks and all(t.name and t.split in ("held-in", "held-out") for _, t in tasks)


def test_procedural_suite_shape():
    suite, tasks = load_suite(str(ROOT / "configs" / "eval" / "procedural.yaml"))
    assert suite.name == "procedural" and len(tasks) == 9
    splits = [t.split for _, t in tasks]
    assert splits.count("held-in") == 5 and splits.count("held-out") == 4
    assert all(len(t.templates) == 5 and t.output == "rank" for _, t in tasks)


def test_task_fields_and_overrides(tmp_path):
    t = load_task(_write(tmp_path / "t.yaml", TASK))
    assert (t.name, t.split, t.output, t.rank.reduction, t.rank.candidates) == ("demo", "held-out", "rank", "mean",
                                                                                ["yes", "no"])
    assert t.generate.num_beams == 1 and t.max_samples is None
    suite_p = _write(tmp_path / "s.yaml", "name: s\ntasks: [t.yaml]\nbatch_size: 4\n")
    suite, tasks = load_suite(suite_p, ["--batch_size=3", "--max_samples=7"])
    assert (suite.batch_size, suite.max_samples) == (3, 7)
    assert tasks[0][0] == str(tmp_path / "t.yaml")  # relative to the suite file
    # a single task file runs as a one-task suite
    suite1, tasks1 = load_suite(str(tmp_path / "t.yaml"))
    assert suite1.name == "demo" and len(tasks1) == 1


@pytest.mark.parametrize("text, needle", [
    (TASK + "temperature: 0.7\n", "temperature"),                          # unknown key
    (TASK.replace("reduction: mean", "reducton: mean"), "reducton"),      # typo in a nested section
    (TASK.replace("held-out", "heldout"), "split must be one of"),
    (TASK.replace("output: rank", "output: classify"), "output must be one of"),
    (TASK.replace("[mc-accuracy]", "[mc-acuracy]"), "mc-accuracy"),       # close match suggested
    (TASK.replace("reduction: mean", "reduction: max"), "rank.reduction"),
    (TASK.replace('"Q: {question} A:"', '"Q: {question A:"'), "templates[1]"),
    (TASK.replace("name: demo\n", ""), "'name' is required"),
    (TASK.replace('["yes", "no"]', "[yes, no]"), "rank.candidates[0] reads as the boolean"),
    (TASK.replace("  path: somewhere\n", ""), "data.path is required"),
])
def test_bad_task_files_name_the_file_and_the_field(tmp_path, text, needle):
    p = _write(tmp_path / "bad_task.yaml", text)
    with pytest.raises((ValueError, KeyError)) as e:
        load_task(p)
    assert "bad_task.yaml" in str(e.value) and needle in str(e.value)


def test_bad_suites(tmp_path):
    _write(tmp_path / "t.yaml", TASK)
    with pytest.raises(ValueError, match="s1.yaml.*lists no task"):
        load_suite(_write(tmp_path / "s1.yaml", "name: s\ntasks: []\n"))
    with pytest.raises(ValueError, match="appears twice"):
        load_suite(_write(tmp_path / "s2.yaml", "tasks: [t.yaml, t.yaml]\n"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_suite(_write(tmp_path / "s3.yaml", "tasks: [nope.yaml]\n"))
    with pytest.raises(ValueError, match="s4.yaml.*bogus"):
        load_suite(_write(tmp_path / "s4.yaml", "tasks: [t.yaml]\nbogus: 1\n"))


def test_config_hash_tracks_what_is_scored(tmp_path):
    p = _write(tmp_path / "t.yaml", TASK)
    h1 = config_hash(*load_suite(p))
    assert h1 == config_hash(*load_suite(p))
    _write(tmp_path / "t.yaml", TASK.replace("Q: {question} A:", "Question: {question} Answer:"))
    assert config_hash(*load_suite(p)) != h1

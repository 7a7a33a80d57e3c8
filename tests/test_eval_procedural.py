"""The procedural suite: answers checked from the pixels, determinism, the split, shipped YAMLs in sync."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from mmit.evaluation.procedural import TASKS, tasks_of_split
from mmit.evaluation.procedural.build import build_eval, build_train, make_sample, task_yaml
from mmit.evaluation.procedural.scenes import POSITIONS, cell_colors, cell_fill_ratio

ROOT = Path(__file__).resolve().parents[1]


def _shape_from_pixels(img, position):
    r = cell_fill_ratio(img, position)
    assert r > 0.3, f"no shape at {position}"
    return "square" if r > 0.95 else ("circle" if r > 0.68 else "triangle")


def _answer_from_pixels(task: str, img, fields) -> str:
    """Recompute a sample's answer from the image alone (palette colours per cell, fill ratios)."""
    cells = cell_colors(img)
    present = {p: c for p, c in cells.items() if c is not None}
    if task in ("color", "shape", "position"):
        assert len(present) == 1
        (pos, col), = present.items()
        return {"color": col, "shape": _shape_from_pixels(img, pos), "position": pos}[task]
    if task == "count":
        return str(len(present))
    if task == "color-exists":
        return "yes" if fields["color"] in present.values() else "no"
    if task == "color-count":
        return str(sum(1 for c in present.values() if c == fields["color"]))
    if task == "color-at-position":
        return present[fields["position"]]
    at = [p for p, c in present.items() if c == fields["color"]]
    assert len(at) == 1
    if task == "shape-of-color":
        return _shape_from_pixels(img, at[0])
    if task == "position-of-color":
        return at[0]
    raise AssertionError(task)


@pytest.mark.parametrize("name", list(TASKS))
def test_answers_are_correct_from_the_pixels(name):
    task = TASKS[name]
    rng = random.Random(123)
    answers = set()
    for i in range(60):
        s = make_sample(task, rng, i)
        img = Image.open(io.BytesIO(s.media[0].data)).convert("RGB")
        assert img.size == (64, 64)
        assert s.turns[0].role == "system" and s.turns[0].content == ""
        ans = s.turns[2].content
        assert ans == s.meta["label"] and s.meta["answers"] == [ans] and ans in s.meta["options"]
        assert _answer_from_pixels(name, img, s.meta["fields"]) == ans, (s.id, s.meta)
        assert s.turns[1].content == "<image>\n" + task.templates[s.meta["template"]].format(**s.meta["fields"])
        answers.add(ans)
    assert len(answers) >= 2  # not a constant answer


def test_the_split_recombines_held_in_skills():
    held_in, held_out = tasks_of_split("held-in"), tasks_of_split("held-out")
    assert len(held_in) + len(held_out) == len(TASKS) >= 8
    seen = {s for t in held_in for s in t.skills}
    for t in held_out:
        assert len(t.skills) >= 2 and set(t.skills) <= seen, t.name
        assert all(set(t.skills) != set(h.skills) for h in held_in)
    for t in TASKS.values():
        assert len(set(t.templates)) == 5 and len(set(t.options)) == len(t.options)
    with pytest.raises(ValueError, match="split must be"):
        tasks_of_split("train")


def test_shipped_task_yamls_match_the_tasks():
    for t in TASKS.values():
        path = ROOT / "configs" / "eval" / "procedural" / f"{t.name}.yaml"
        assert path.read_text() == task_yaml(t, "demo_out/procedural_eval"), (
            f"{path} is stale: python -m mmit.evaluation.procedural --write-configs configs/eval")


def test_shards_are_deterministic_and_complete(tmp_path):
    from mmit.data.shards import iter_shards

    tasks = [TASKS["count"], TASKS["color-count"]]
    build_eval(str(tmp_path / "a"), tasks, 12, seed=5)
    build_eval(str(tmp_path / "b"), tasks, 12, seed=5)
    build_eval(str(tmp_path / "c"), tasks, 12, seed=6)
    a = (tmp_path / "a" / "count" / "00000.tar").read_bytes()
    assert a == (tmp_path / "b" / "count" / "00000.tar").read_bytes()
    assert a != (tmp_path / "c" / "count" / "00000.tar").read_bytes()
    got = list(iter_shards(str(tmp_path / "a" / "color-count"), split_by_node=False, split_by_worker=False))
    assert len(got) == 12 and {s.task for s in got} == {"color-count"}


def test_train_shards_mix_in_other_shards(tmp_path):
    import json

    from mmit.data.shards import iter_shards

    build_eval(str(tmp_path / "real"), [TASKS["color-count"]], 3, seed=0)  # stands in for converted real data
    stats = build_train(str(tmp_path / "train"), tasks_of_split("held-in"), 4, seed=0,
                        mix=[str(tmp_path / "real" / "color-count") + ":3"], shard_size=7)
    assert stats["written"] == 5 * 4 + 3 * 3 and stats["mixed"] == 9
    on_disk = json.loads((tmp_path / "train" / "_stats.json").read_text())
    assert on_disk["written"] == on_disk["records_in"] == 29 and on_disk["shards"] == 5
    got = list(iter_shards(str(tmp_path / "train"), split_by_node=False, split_by_worker=False))
    assert len(got) == 29 and len({s.id for s in got}) == 29
    from collections import Counter

    per_task = Counter(s.task for s in got)
    assert per_task == {**{t.name: 4 for t in tasks_of_split("held-in")}, "color-count": 9}
    with pytest.raises(ValueError, match="repeats"):
        build_train(str(tmp_path / "t2"), [TASKS["color"]], 1, 0, mix=[str(tmp_path / "real") + ":0"])


def test_positions_cover_all_cells():
    rng = random.Random(0)
    seen = {make_sample(TASKS["position"], rng, i).turns[-1].content for i in range(80)}
    assert seen == set(POSITIONS)

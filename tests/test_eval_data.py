"""Eval samples -> prompts: templates, fields, task filter, skip counts, MultiInstruct's own templates."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import SHARED_SAMPLES
from mmit.data.sample import Media, Sample, Turn
from mmit.evaluation.config import EvalDataConfig, TaskConfig
from mmit.evaluation.data import load_items, prompt_fields, render_template, sample_items


def _png(tmp_path, name="x.png"):
    p = tmp_path / name
    Image.new("RGB", (8, 8), (1, 2, 3)).save(p)
    return str(p)


def _sample(img, sid="s1", **meta):
    return Sample(id=sid, turns=[Turn("user", "<image>\nIs it red?"), Turn("assistant", "no")],
                  media=[Media("image", path=img)], task="t", meta=meta)


def test_templates_fields_and_references(tmp_path):
    img = _png(tmp_path)
    s = _sample(img, options=["red", "blue"], label="blue", answers=["no", "nope"], fields={"thing": "ball"})
    task = TaskConfig(name="t", output="rank", templates=["{question} ({thing})", "<image> Options: {lettered_options}"],
                      data=EvalDataConfig(path="x"))
    items = sample_items(task, s, "t.yaml")
    assert [it.template for it in items] == [0, 1]
    assert items[0].prompt == "<image>\nIs it red? (ball)"          # <image>\n put first
    assert items[1].prompt == "<image> Options: (a) red (b) blue"   # kept where the template puts it
    assert items[0].candidates == ["red", "blue"] and items[0].label == "blue"
    assert items[0].reference == ["no", "nope"]                      # meta["answers"] wins
    assert items[0].images[0].size == (8, 8) and items[0].images is items[1].images  # decoded once
    assert prompt_fields(s, "<image>\nIs it red?")["options"] == "red, blue"
    with pytest.raises(ValueError, match=r"t.yaml: template .*'colour'.*\['question'"):
        render_template("{colour}", {"question": "q"}, 1, "t.yaml")
    # rank without candidates anywhere is a counted error
    bare = _sample(img, sid="s2")
    task.templates = []
    with pytest.raises(Exception, match="neither rank.candidates nor meta"):
        sample_items(task, bare, "t.yaml")
    task.rank.candidates = ["yes", "no"]
    assert sample_items(task, bare, "t.yaml")[0].candidates == ["yes", "no"]


def test_load_items_counts_skips_and_filters_tasks(tmp_path):
    from mmit.data.shards import write_shard

    img = _png(tmp_path)
    good = [_sample(img, sid=f"g{i}", options=["a", "b"]) for i in range(4)]
    for s in good:
        s.media[0].data = open(img, "rb").read()
    bad = _sample(img, sid="bad", options=["a", "b"])
    bad.media[0].data = b"not an image"
    other = _sample(img, sid="o", options=["a", "b"])
    other.task, other.media[0].data = "other", good[0].media[0].data
    write_shard(good[:2] + [bad, other] + good[2:], tmp_path / "00000.tar")
    task = TaskConfig(name="t", output="rank", data=EvalDataConfig(path=str(tmp_path), tasks=["t"]))
    items, n, skips = load_items(task)
    assert n == 4 and len(items) == 4 and skips.as_dict() == {"undecodable-image": 1}
    items, n, skips = load_items(task, max_samples=2)
    assert n == 2 and [it.sample_id for it in items] == ["g0", "g1"]
    task.data.missing_media = "error"
    with pytest.raises(Exception, match="bad"):
        load_items(task)


@pytest.mark.skipif(not (SHARED_SAMPLES / "multiinstruct" / "test.jsonl").is_file(), reason="no shared samples")
def test_multiinstruct_unseen_tasks_use_their_own_five_templates(tmp_path):
    from mmit.evaluation.config import load_task

    (tmp_path / "raw_datasets").mkdir()
    _png(tmp_path / "raw_datasets")
    with open(tmp_path / "test.jsonl", "w") as f:
        for line in open(SHARED_SAMPLES / "multiinstruct" / "test.jsonl"):
            d = json.loads(line)
            d["image_path"] = "./raw_datasets/x.png"
            f.write(json.dumps(d) + "\n")
    cfg = load_task("configs/eval/multiinstruct/grounded_VQA.yaml")
    cfg.data.path = str(tmp_path / "test.jsonl")
    items, n, skips = load_items(cfg)
    assert n == 1 and len(items) == 5 and not skips
    assert len({it.prompt for it in items}) == 5 and all(it.prompt.startswith("<image>\n") for it in items)
    assert items[0].candidates == ["3 8 43 537", "347 453 410 580", "2 490 351 598", "144 358 318 598"]
    assert items[0].reference == "144 358 318 598"

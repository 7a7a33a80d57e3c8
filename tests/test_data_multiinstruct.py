"""MultiInstruct reader, templates and task splits (mmit.data.sources.multiinstruct)."""

import io
import json
import os
import re
import shutil
import subprocess
import types
import warnings
from pathlib import Path

import pytest
from PIL import Image

from mmit.data.sample import SampleError
from mmit.data.sources import available_formats, get_reader
from mmit.data.sources.multiinstruct import (instruction_templates, match_template, parse_boxes,
                                             read_multiinstruct, render_instruction, rerender,
                                             task_split, training_tasks, unseen_tasks)
from mmit.data.stats import SkipCounter

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "multiinstruct"
# a bare git mirror of VT-NLP/MultiInstruct (the `fetch` tool's layout); tests using it skip without
MIRRORS = Path(os.environ.get("MMIT_MIRROR_ROOT", "/work/.mirror"))
MI_MIRROR = MIRRORS / "VT-NLP+MultiInstruct" / "repo"

REC = {"unique_id": "VQA_object_presence_10026521", "task_name": "VQA_object_presence",
       "image_path": "./raw_datasets/MSCOCO2014/train2014/COCO_train2014_000000005277.jpg",
       "question": "Are there any couches in the photo?", "target_txt": "no", "options": ["no", "yes"],
       "prompt": "This task asks you to identify if an object appears in the image. Are there any "
                 "couches in the photo?\n\n[Options]: no||||yes", "target": "no"}


def jpeg(seed=0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), (seed % 256, 10, 20)).save(buf, format="JPEG")
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def real_records(name):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    return [json.loads(line) for line in (SAMPLES / name).read_text().splitlines() if line.strip()]


def fake_media_for(records, root: Path):
    """Write a distinct small JPEG where each record's image would live in a MultiInstruct
    checkout: relative paths as written, the authors' absolute paths under raw_datasets/."""
    files = {}
    for i, r in enumerate(records):
        p = r["image_path"]
        if p.startswith("/"):
            tail = p.split("/seen_data/")[-1] if "/seen_data/" in p else p.split("/mata_data/")[-1] \
                if "/mata_data/" in p else p.split("/pretrain/")[-1]
            rel = "raw_datasets/" + tail
        else:
            rel = p[2:] if p.startswith("./") else p
        files[i] = put(root, rel, jpeg(i))
    return files


# -- real files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,n", [("train.jsonl", 59), ("test.jsonl", 11)])
def test_real_files_without_images_every_record_counted(name, n):
    real_records(name)
    stats = SkipCounter()
    out = list(read_multiinstruct(SAMPLES / name, stats=stats))
    assert out == [] and stats.as_dict() == {"missing-media": n}


@pytest.mark.parametrize("name,n", [("train.jsonl", 59), ("test.jsonl", 11)])
def test_real_files_with_images(tmp_path, name, n):
    records = real_records(name)
    assert len(records) == n
    files = fake_media_for(records, tmp_path)
    stats = SkipCounter()
    out = list(read_multiinstruct(SAMPLES / name, media_root=tmp_path, stats=stats,
                                  load_bytes=True))
    assert len(out) + stats.total == n and stats.total == 0
    for i, (s, r) in enumerate(zip(out, records)):
        s.validate()
        assert s.media[0].data == files[i].read_bytes() and s.media[0].ext == "jpg"
        assert s.turns[0].content == "<image>\n" + r["prompt"].strip()  # LLaVA strips
        assert s.turns[1].content == r["target"] and s.task == r["task_name"]
        assert s.meta["template_id"] is not None, r["task_name"]
        if "options" in r:
            assert s.meta["options"] == r["options"]
            if r["target"] in r["options"]:
                assert r["target"] in s.meta["options"]
        # re-rendering with the template that built the prompt reproduces it exactly
        assert rerender(s, s.meta["template_id"]).turns[0].content == s.turns[0].content
    splits = {s.meta["split"] for s in out}
    assert splits == ({"train"} if name == "train.jsonl" else {"unseen"})
    if name == "test.jsonl":
        assert {s.task for s in out} == set(unseen_tasks())


def test_real_absolute_paths_are_rerooted(tmp_path):
    records = real_records("train.jsonl")
    absolute = [r for r in records if r["image_path"].startswith("/projects/")]
    assert len(absolute) == 3
    fake_media_for(absolute, tmp_path)
    p = write_jsonl(tmp_path / "abs.jsonl", absolute)
    out = list(read_multiinstruct(p, media_root=tmp_path, missing="error"))
    assert [s.media[0].meta["resolved_by"] for s in out] == ["alternative"] * 3
    assert all(s.media[0].path.startswith(str(tmp_path / "raw_datasets")) for s in out)


def test_wikihow_step_order_options_come_from_prompt():
    records = [r for r in real_records("train.jsonl") if r["task_name"].endswith("step_order")]
    assert records and all("options" not in r for r in records)
    for r in records:
        opts = r["prompt"].rsplit("[Options]: ", 1)[1].split("||||")
        assert sorted(opts) == ["next", "previous"]
        assert match_template(dict(r, options=opts)) is not None


# -- templates and splits --------------------------------------------------------------------------

def test_task_splits_match_the_paper():
    train, unseen = training_tasks(), unseen_tasks()
    assert len(train) == 53 and len(set(train)) == 53
    assert len(unseen) == 11 and not set(train) & set(unseen)
    assert {"commonsense_VQA", "visual_nli", "visual_spatial_reasoning",
            "natural_language_visual_reasoning", "text_vqa", "grounded_VQA",
            "visual_text_extraction", "visual_dialog", "medic_disaster_types"} <= set(unseen)
    assert task_split("image_caption") == "train" and task_split("visual_nli") == "unseen"
    assert task_split("image_generation") is None


def test_every_task_has_at_least_five_templates():
    for task in training_tasks() + unseen_tasks():
        t = instruction_templates(task)
        assert len(t) >= 5, task
    assert instruction_templates("image_caption")[1] == "What is the caption of the image?"
    with pytest.raises(KeyError, match="image_caption"):
        instruction_templates("image_captions")


def test_render_each_template_of_an_instance():
    prompts = [render_instruction(REC, i) for i in range(5)]
    assert prompts[1] == REC["prompt"] and match_template(REC) == 1
    assert prompts[0] == "Are there any couches in the photo?\n\n[Options]: no||||yes"
    assert len(set(prompts)) == 5 and all(p.endswith("no||||yes") for p in prompts)
    with pytest.raises(IndexError):
        render_instruction(REC, 5)
    with pytest.raises(ValueError, match="question"):
        render_instruction({"task_name": "VQA_color", "options": ["red"]}, 0)


# test.jsonl line 5 @ 772af24 (../shared/samples/multiinstruct), verbatim: the prompt is template 0.
VCR_REC = {
    "unique_id": "vcr_val-0", "image_source": "vcr", "task_name": "commonsense_VQA",
    "image_path": "raw_datasets/VCR/vcr1images/lsmdc_1054_Harry_Potter_and_the_prisoner_of_azkaban/"
                  "1054_Harry_Potter_and_the_prisoner_of_azkaban_00.01.46.736-00.01.50.168@0.jpg",
    "target_txt": "person 1 is upset and disgusted .", "question": "How is person 1 feeling ?",
    "options": ["person 1 is feeling uncomfortable with person 3 .",
                "person 1 is feeling very scared .", "person 1 is upset and disgusted .",
                "person 1 is feeling amused ."],
    "meta_data": {"object_regions": {
        "person 1": ["955.7418212890625 52.329559326171875 1551.5677490234375 789.0325927734375"],
        "person 3": ["902.0066528320312 111.65625 1035.2879638671875 701.32861328125"]}},
    "prompt": "How is person 1 feeling ? person 1 is in 955.7418212890625 52.329559326171875 "
              "1551.5677490234375 789.0325927734375. person 3 is in 902.0066528320312 111.65625 "
              "1035.2879638671875 701.32861328125.\n\n[Options]: person 1 is feeling uncomfortable "
              "with person 3 .||||person 1 is feeling very scared .||||person 1 is upset and "
              "disgusted .||||person 1 is feeling amused .",
    "target": "person 1 is upset and disgusted ."}
COORD = re.compile(r"\d+\.\d+")  # VCR boxes are float pixel coordinates


def test_commonsense_vqa_templates_match_the_released_prompts(tmp_path):
    """build_dataset.py calls build_instruction without instruction_id (default -1), so its
    ``instruction_id >= 2`` branch ("person 1" -> "the person 1 in x1 y1 x2 y2") never runs: the
    question stays as written under every template, and only templates 0 and 1 name the regions,
    through region_info = ' '.join(f"{k} is in {v[0]}.")."""
    if SAMPLES.is_dir():  # the embedded record is the real one
        assert [r for r in real_records("test.jsonl")
                if r["task_name"] == "commonsense_VQA"] == [VCR_REC]
    q = VCR_REC["question"]
    regs = VCR_REC["meta_data"]["object_regions"]
    region_info = ("person 1 is in " + regs["person 1"][0] + ". person 3 is in "
                   + regs["person 3"][0] + ".")
    opts = "\n\n[Options]: " + "||||".join(VCR_REC["options"])
    expected = [  # build_instruction's five f-strings with instruction_id = -1
        f"{q} {region_info}{opts}",
        f"The region information: {region_info}\nBased on the region information and the image, "
        f"{q}{opts}",
        f"{q}{opts}",
        f"Look at the image and the regions in the question, {q}{opts}",
        f"Based on the image, answer {q}{opts}",
    ]
    got = [render_instruction(VCR_REC, i) for i in range(5)]
    assert got == expected
    assert got[0] == VCR_REC["prompt"] and match_template(VCR_REC) == 0
    for i, text in enumerate(got):
        assert q in text and "the person 1 in" not in text, i  # the question is never rewritten
        if i >= 2:  # the original has no region information here: no coordinates at all
            assert COORD.search(text) is None, i
        else:  # coordinates only inside region_info
            assert region_info in text and COORD.search(text.replace(region_info, "")) is None, i
    # the same through the reader: rerender of the read sample gives these prompts after <image>
    put(tmp_path, VCR_REC["image_path"], jpeg())
    (s,) = read_multiinstruct(write_jsonl(tmp_path / "t.jsonl", [VCR_REC]), missing="error")
    assert s.meta["template_id"] == 0
    assert [rerender(s, i).turns[0].content for i in range(5)] == ["<image>\n" + e
                                                                   for e in expected]


def test_commonsense_vqa_equals_the_original_build_instruction():
    """Every template of the real record against VT-NLP/MultiInstruct's own build_instruction,
    loaded from a fetched mirror (skipped when absent), with its random.shuffle made a no-op and
    random.choice made to pick template i."""
    if not MI_MIRROR.is_dir() or shutil.which("git") is None:
        pytest.skip(f"the MultiInstruct mirror {MI_MIRROR} (or git) is absent")
    src = subprocess.run(["git", "-C", str(MI_MIRROR), "show", "772af24:instruction_templates.py"],
                         capture_output=True, text=True)
    if src.returncode != 0:
        pytest.skip(f"commit 772af24 not in {MI_MIRROR}: {src.stderr.strip()}")
    module = types.ModuleType("multiinstruct_instruction_templates")
    with warnings.catch_warnings():  # the original has an invalid "\A" escape
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", SyntaxWarning)
        exec(compile(src.stdout, "instruction_templates.py", "exec"), module.__dict__)

    class PickTemplate:
        def __init__(self, i):
            self.i = i

        def shuffle(self, items):  # keep the record's option order
            pass

        def choice(self, items):
            return items[self.i]

    for i in range(5):
        module.random = PickTemplate(i)
        prompt, target = module.build_instruction(
            "commonsense_VQA", options=list(VCR_REC["options"]), question=VCR_REC["question"],
            meta_data=VCR_REC["meta_data"], target=VCR_REC["target_txt"])
        assert render_instruction(VCR_REC, i) == prompt, i
        assert target == VCR_REC["target"]
    assert render_instruction(VCR_REC, 0) == VCR_REC["prompt"]


def test_malformed_template_inputs_do_not_stop_reading(tmp_path):
    put(tmp_path, "raw_datasets/a.jpg", jpeg())
    recs = [{"unique_id": "1", "task_name": "visual_dialog", "image_path": "raw_datasets/a.jpg",
             "question": "is it red", "meta_data": "oops", "prompt": "is it red?", "target": "no"},
            {"unique_id": "2", "task_name": "visual_dialog", "image_path": "raw_datasets/a.jpg",
             "question": "is it red", "meta_data": {"dialog_hist": [{"q": "hi"}]},
             "prompt": "is it red?", "target": "no"},
            {"unique_id": "3", "task_name": "brand_new_task", "image_path": "raw_datasets/a.jpg",
             "prompt": "Describe.", "target": "x"}]
    out = list(read_multiinstruct(write_jsonl(tmp_path / "m.jsonl", recs), missing="error"))
    assert [s.meta["template_id"] for s in out] == [None, None, None]
    assert out[2].meta["split"] is None and out[2].task == "brand_new_task"
    with pytest.raises(ValueError, match="visual_dialog"):
        render_instruction(recs[1], 0)


def test_rerender_keeps_media_target_and_options(tmp_path):
    put(tmp_path, "raw_datasets/MSCOCO2014/train2014/COCO_train2014_000000005277.jpg", jpeg())
    (s,) = read_multiinstruct(write_jsonl(tmp_path / "t.jsonl", [REC]), media_root=tmp_path)
    variants = [rerender(s, i) for i in range(5)]
    assert [v.meta["template_id"] for v in variants] == list(range(5))
    for v in variants:
        v.validate()
        assert v.turns[0].content.startswith("<image>\n") and v.turns[1].content == "no"
        assert v.media == s.media and v.meta["options"] == ["no", "yes"]
    assert variants[4].turns[0].content == "<image>\nQuestion: Are there any couches in the photo? " \
        "look at the image and answer the question.\n\n[Options]: no||||yes"


# -- hand-made edge cases --------------------------------------------------------------------------

def test_regions_become_boxes():
    assert parse_boxes(["57.79 177.34 491.2 629.53", "6 386 332 498"], "r") == [
        [57.79, 177.34, 491.2, 629.53], [6.0, 386.0, 332.0, 498.0]]
    for bad in (["1 2 3"], "1 2 3 4", ["a b c d"]):
        with pytest.raises(SampleError) as e:
            parse_boxes(bad, "rec 4")
        assert e.value.reason == "invalid-record" and "rec 4" in str(e.value)


def test_both_prefixes_root_variants_and_coco_2017(tmp_path):
    put(tmp_path, "raw_datasets/a/x.jpg", jpeg(1))
    put(tmp_path, "raw_datasets/MSCOCO2014/train2017/000000000009.jpg", jpeg(2))
    recs = [dict(REC, unique_id="1", image_path="./raw_datasets/a/x.jpg"),
            dict(REC, unique_id="2", image_path="raw_datasets/a/x.jpg"),
            dict(REC, unique_id="3",
                 image_path="raw_datasets/MSCOCO2014/train2014/COCO_train2014_000000000009.jpg"),
            dict(REC, unique_id="4", image_path="raw_datasets/a/missing.jpg",
                 region=["1 2 30 40"], task_name="GC", prompt="What is the content of 1 2 30 40?",
                 target="a cat")]
    p = write_jsonl(tmp_path / "train.jsonl", recs)
    stats = SkipCounter()
    out = list(read_multiinstruct(p, stats=stats))  # default media root: the file's folder
    assert [s.id for s in out] == ["VQA_object_presence/1", "VQA_object_presence/2",
                                   "VQA_object_presence/3"]
    assert out[0].media[0].path == out[1].media[0].path == str(tmp_path / "raw_datasets/a/x.jpg")
    assert out[2].media[0].meta["resolved_by"] == "coco-name"
    assert stats.as_dict() == {"missing-media": 1} and len(out) + stats.total == len(recs)
    # media_root may also be the raw_datasets folder itself
    out2 = list(read_multiinstruct(p, media_root=tmp_path / "raw_datasets", stats=SkipCounter()))
    assert [s.media[0].path for s in out2[:2]] == [str(tmp_path / "raw_datasets/a/x.jpg")] * 2
    put(tmp_path, "raw_datasets/a/missing.jpg", jpeg(3))
    (gc,) = [s for s in read_multiinstruct(p) if s.task == "GC"]
    assert gc.meta["boxes"] == [[1.0, 2.0, 30.0, 40.0]] and gc.meta["box_format"] == "xyxy_abs"
    assert gc.meta["template_id"] == 1


def test_invalid_records_and_error_policy(tmp_path):
    put(tmp_path, "raw_datasets/MSCOCO2014/train2014/COCO_train2014_000000005277.jpg", jpeg())
    recs = [REC, {k: v for k, v in REC.items() if k != "target"},
            dict(REC, options="no yes"), dict(REC, region=["1 2"]), [1, 2],
            dict(REC, image_path="raw_datasets/none.jpg")]
    p = write_jsonl(tmp_path / "bad.jsonl", recs)
    stats = SkipCounter()
    out = list(read_multiinstruct(p, stats=stats))
    assert len(out) == 1 and stats.as_dict() == {"invalid-record": 4, "missing-media": 1}
    assert len(out) + stats.total == len(recs)
    with pytest.raises(SampleError) as e:
        list(read_multiinstruct(p, missing="error"))
    assert "line 2" in str(e.value) and str(p) in str(e.value) and "target" in str(e.value)
    with pytest.raises(FileNotFoundError):
        read_multiinstruct(tmp_path / "nope.jsonl")


def test_registered():
    assert get_reader("multiinstruct") is read_multiinstruct
    assert "multiinstruct" in available_formats()


def test_convert_round_trip_real_test_file(tmp_path):
    from mmit.data.convert import convert
    from mmit.data.shards import iter_shards

    records = real_records("test.jsonl")
    fake_media_for(records, tmp_path / "mi")
    stats = convert("multiinstruct", str(SAMPLES / "test.jsonl"), str(tmp_path / "out"),
                    media_root=str(tmp_path / "mi"), progress=False)
    assert stats["records_in"] == 11 and stats["written"] == 11 and stats["skipped"] == {}
    back = {b.id: b for b in iter_shards(str(tmp_path / "out"), split_by_node=False,
                                         split_by_worker=False)}
    for s in read_multiinstruct(SAMPLES / "test.jsonl", media_root=tmp_path / "mi",
                                load_bytes=True):
        b = back[s.id]
        assert b.turns == s.turns and b.media[0].data == s.media[0].data
        assert b.meta.get("options") == s.meta.get("options")
        assert b.meta.get("boxes") == s.meta.get("boxes")


def test_match_template_finds_the_first_template_that_renders_the_prompt():
    """``match_template`` skips templates whose literal start the prompt lacks; it must still return
    the first template whose rendering equals the prompt, as trying every template does: checked on
    the real records, each re-prompted with every one of its task's templates, and on prompts no
    template gives."""
    from mmit.data.sources.multiinstruct import render_instruction

    def brute(record):
        for i in range(len(instruction_templates(record["task_name"]))):
            try:
                if render_instruction(record, i) == record["prompt"]:
                    return i
            except (ValueError, IndexError):
                continue
        return None

    records = [REC, VCR_REC]
    if SAMPLES.is_dir():
        records += real_records("train.jsonl") + real_records("test.jsonl")
    checked = found = 0
    for r in records:
        for tid in range(len(instruction_templates(r["task_name"]))):
            try:
                prompt = render_instruction(r, tid)
            except (ValueError, IndexError, KeyError):
                continue
            for variant in (dict(r, prompt=prompt), dict(r, prompt=prompt + " x"), dict(r, prompt="x" + prompt)):
                want = brute(variant)
                assert match_template(variant) == want, (r["task_name"], tid)
                checked += 1
                found += want is not None
    assert checked > 10 and 0 < found < checked


def _fields_made_up_front(task, record):
    """The template fields as they were made before they were made on demand (the reference)."""
    from mmit.data.sources.multiinstruct_templates import _TASK_FIELDS, _join, _task_fields
    md = record.get("meta_data") or {}
    if not isinstance(md, dict):
        raise TypeError("meta_data")
    regs = md.get("object_regions") or {}
    region = list(record.get("region") or [])
    fields = {"question": record.get("question"), "text": record.get("text"),
              "context": record.get("context"), "answer": record.get("answer"),
              "options": _join(record.get("options") or []), "regions": _join(region),
              "region": region, "relation": md.get("relation"), "method": md.get("method")}
    if isinstance(regs, dict):
        for key, name in (("subject", "subject_regions"), ("object", "object_regions"),
                          ("given_region", "given_region")):
            if key in regs:
                fields[name] = _join(regs[key])
    if task in _TASK_FIELDS:  # (made up front in both: the code under test is the on-demand part)
        fields.update(_task_fields(task, record, md, regs))
    return {k: v for k, v in fields.items() if v is not None}


def test_template_fields_made_on_demand_equal_those_made_up_front():
    """``match_template`` makes a record's template fields when a template names them; the
    values, the absent ones and the failures on malformed records are those of making them all
    up front, on the real records and on broken variants of them."""
    from mmit.data.sources.multiinstruct_templates import _Fields, _template_fields

    def outcome(make, task, record):
        try:
            return make(task, record)
        except Exception as e:  # noqa: BLE001 - the kind of failure is what is compared
            return type(e)

    records = [REC, VCR_REC]
    if SAMPLES.is_dir():
        records += real_records("train.jsonl") + real_records("test.jsonl")
    broken = [{"meta_data": 3}, {"meta_data": {"object_regions": {"a": []}}}, {"region": 5},
              {"region": "12 3 4 5"}, {"context": 7}, {"context": [1, 2]},
              {"meta_data": {"dialog_hist": [{"q": "x"}]}}, {"options": "a"}, {"question": None},
              {"meta_data": {"object_regions": {"subject": ["1 2 3 4"], "object": 5}}}]
    checked = 0
    for r in records:
        for task in (r["task_name"], "wikihow_next_step", "commonsense_VQA", "visual_dialog"):
            for change in [{}] + broken:
                variant = dict(r, **change)
                want = outcome(_fields_made_up_front, task, variant)
                assert outcome(_template_fields, task, variant) == want, (task, change)
                lazy = outcome(_Fields.of, task, variant)
                if isinstance(want, dict):
                    for name, value in want.items():
                        assert lazy[name] == value, (task, change, name)
                    for name in ("question", "options", "subject_regions", "steps", "nope"):
                        if name not in want:
                            with pytest.raises(KeyError):
                                lazy[name]
                else:
                    assert lazy == want, (task, change)  # the same failure, when made
                checked += 1
    assert checked == len(records) * 4 * (1 + len(broken))  # every variant was compared

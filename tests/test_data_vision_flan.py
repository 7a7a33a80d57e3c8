"""Vision-Flan reader (mmit.data.sources.vision_flan): the three layouts, real and hand-made."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmit.data.sample import SampleError
from mmit.data.sources import available_formats, get_reader
from mmit.data.sources.vision_flan import read_vision_flan
from mmit.data.stats import SkipCounter

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "vision_flan"


def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    return SAMPLES


def png(color=(1, 2, 3)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def n_records(path: Path) -> int:
    d = json.loads(path.read_text())
    if isinstance(d, list):
        return len(d)
    return sum(len(x) if isinstance(x, list) else 1 for x in d["data"])


# -- real files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,n,found", [("tasks_web.json", 205, 30), ("tasks.json", 205, 30),
                                         ("data.json", 36, 6)])
def test_real_files_every_record_accounted(name, n, found):
    path = samples() / name
    assert n_records(path) == n
    stats = SkipCounter()
    out = list(read_vision_flan(path, stats=stats, load_bytes=True))
    assert len(out) == found and stats.as_dict() == {"missing-media": n - found}
    assert len(out) + stats.total == n
    for s in out:
        s.validate()
        m = s.media[0]
        assert m.data == Path(m.path).read_bytes() and m.path.startswith(str(SAMPLES / "imgs"))
        assert s.turns[0].content.startswith("<image>\n") and s.num_placeholders() == 1
        assert s.task and s.source == "vision-flan"
    if name == "tasks_web.json":  # written ./task_imgs/..., found under imgs/ by file name
        assert all(s.media[0].meta["resolved_by"] == "alternative" for s in out)


def test_real_prefix_and_suffix_image_tokens_are_normalised():
    path = samples() / "tasks_web.json"
    raw = json.loads(path.read_text())
    suffix = [r for r in raw if r["conversations"][0]["value"].rstrip().endswith("<image>")]
    prefix = [r for r in raw if r["conversations"][0]["value"].startswith("<image>")]
    assert len(suffix) == 118 and len(prefix) == 87
    by_id = {s.id: s for s in read_vision_flan(path)}
    moved = [r for r in suffix if r["id"] in by_id]
    assert moved
    for r in moved:
        text = r["conversations"][0]["value"].replace("<image>", "").strip()
        assert by_id[r["id"]].turns[0].content == "<image>\n" + text


def test_real_flattened_matches_release_layout():
    web = list(read_vision_flan(samples() / "tasks_web.json"))
    flat = list(read_vision_flan(samples() / "tasks.json"))
    assert [(s.task, s.turns[0].content, s.turns[1].content, s.media[0].path) for s in web] == \
        [(s.task, s.turns[0].content, s.turns[1].content, s.media[0].path) for s in flat]


def test_real_raw_instances_keep_options():
    out = list(read_vision_flan(samples() / "data.json", missing="skip"))
    raw = [r for x in json.loads((samples() / "data.json").read_text())["data"] for r in x]
    ids = [r["instance_id"] for r in raw]
    assert [s.id for s in out] == [i for i in ids if i in {s.id for s in out}]
    for s in out:
        assert s.meta["layout"] == "raw" and "raw_output" in s.meta and "dataset_name" in s.meta


# -- hand-made -------------------------------------------------------------------------------------

RAW = {"instance_id": "GEOMETRY3K+geometry_question_answer+386",
       "img_path": "./imgs/GEOMETRY3K+geometry_question_answer_4_img_diagram.png",
       "options": ["63", "7", "21\\sqrt{3}", "7\\sqrt{3}"], "input_text": "If x = 7\\sqrt{3}, find y.",
       "raw_output": "21\\sqrt{3}",
       "instruction": "I will give you a figure. Answer the question.\n\nIf x = 7\\sqrt{3}, find y.\n"
                      "Options: (a) 63 (b) 7 (c) 21\\sqrt{3} (d) 7\\sqrt{3}",
       "output": "(c) 21\\sqrt{3}", "dataset_name": "GEOMETRY3K",
       "task_name": "GEOMETRY3K+geometry_question_answer"}


def test_raw_instance_options_and_release_image_folder(tmp_path):
    img = put(tmp_path, "images_191task_1k/GEOMETRY3K+geometry_question_answer_4_img_diagram.png",
              png())
    p = tmp_path / "data.json"
    p.write_text(json.dumps({"data": [[RAW], [dict(RAW, instance_id="x2", raw_output="none of these")]]}))
    a, b = read_vision_flan(p, load_bytes=True)
    assert a.meta["options"] == RAW["options"] and a.meta["answer_index"] == 2
    assert "answer_index" not in b.meta
    assert a.media[0].path == str(img) and a.media[0].data == img.read_bytes()
    assert a.turns[0].content == "<image>\n" + RAW["instruction"] and a.turns[1].content == RAW["output"]


def test_jsonl_of_raw_instances_and_names_with_dots_spaces_plus(tmp_path):
    name = "ImageNet-A+image_classification_472_0.002072_Rottweiler _ barn_0.7930856.jpg"
    img = put(tmp_path, "imgs/" + name, png())
    p = tmp_path / "raw.jsonl"
    p.write_text(json.dumps(dict(RAW, img_path="./imgs/" + name, options=None)) + "\n")
    (s,) = read_vision_flan(p, load_bytes=True)
    assert s.media[0].path == str(img) and s.media[0].ext == "png" and s.meta["options"] is None


def test_bad_records_counted_and_error_names_position(tmp_path):
    put(tmp_path, "imgs/a.png", png())
    ok = {"img_path": "./imgs/a.png", "prompt": "<image>\nq", "target": "a", "task_name": "t"}
    recs = [ok, dict(ok, prompt="<image> and <image>"), {"img_path": "./imgs/a.png", "task_name": "t"},
            dict(ok, task_name=None), dict(ok, img_path="./imgs/gone.png"), "oops",
            dict(RAW, img_path="./imgs/a.png", options="63 7")]
    p = tmp_path / "tasks.json"
    p.write_text(json.dumps({"data": recs}))
    stats = SkipCounter()
    out = list(read_vision_flan(p, stats=stats))
    assert [s.id for s in out] == ["0"]
    assert stats.as_dict() == {"image-count-mismatch": 1, "invalid-record": 4, "missing-media": 1}
    assert len(out) + stats.total == len(recs)
    with pytest.raises(SampleError) as e:
        list(read_vision_flan(p, missing="error"))
    assert e.value.reason == "image-count-mismatch" and "data[1]" in str(e.value)


def test_registered():
    assert "vision-flan" in available_formats() and get_reader("vision-flan") is read_vision_flan


def test_convert_round_trip_keeps_text_and_bytes(tmp_path):
    from mmit.data.convert import convert
    from mmit.data.shards import iter_shards

    path = samples() / "tasks_web.json"
    stats = convert("vision-flan", str(path), str(tmp_path / "out"), progress=False)
    assert stats["records_in"] == 205 and stats["written"] == 30
    assert stats["skipped"] == {"missing-media": 175}
    src = {s.id: s for s in read_vision_flan(path, load_bytes=True)}
    back = list(iter_shards(str(tmp_path / "out"), split_by_node=False, split_by_worker=False))
    assert sorted(b.id for b in back) == sorted(src)
    for b in back:
        s = src[b.id]
        assert b.turns == s.turns and b.task == s.task
        assert [m.data for m in b.media] == [m.data for m in s.media]

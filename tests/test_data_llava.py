"""LLaVA reader (mmit.data.sources.llava) and the normalisation rules (mmit.data.normalize)."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmit.data.normalize import move_placeholder_to_front, place_image_placeholders
from mmit.data.sample import SampleError, Turn
from mmit.data.sources import FORMATS, available_formats, get_reader
from mmit.data.sources.llava import read_llava
from mmit.data.stats import SkipCounter
from mmit.registry import UnknownNameError

SAMPLES = Path(__file__).parents[1] / ".." / "shared" / "samples"

# First records of llava_v1_5_mix665k.json / blip_laion_cc_sbu_558k.json as quoted in DATASETS.md §5.
MIX665K_0 = {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
    {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
    {"from": "gpt", "value": "The bus in the image is white and red."},
    {"from": "human", "value": "What feature can be seen on the back of the bus?"},
    {"from": "gpt", "value": "The back of the bus features an advertisement."}]}
MIX665K_1 = {"id": "000000052846", "image": "coco/train2017/000000052846.jpg", "conversations": [
    {"from": "human", "value": "Where is the cat positioned in the image?\n<image>"},
    {"from": "gpt", "value": "The cat is positioned on top of the back of the couch."}]}
PRETRAIN_0 = {"id": "004539375", "image": "00453/004539375.jpg", "conversations": [
    {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
    {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"}]}


def png_bytes(color=(0, 128, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def root(tmp_path):
    """Media root holding the images the records above refer to."""
    for rel in ("coco/train2017/000000033471.jpg", "coco/train2017/000000052846.jpg",
                "00453/004539375.jpg", "a.png", "b.png"):
        p = tmp_path / "media" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_bytes())  # PNG bytes even where the name says .jpg
    return tmp_path / "media"


def write(tmp_path, records, name="data.json", jsonl=False) -> Path:
    p = tmp_path / name
    if jsonl:
        p.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        p.write_text(json.dumps(records, indent=1))
    return p


def read(path, root=None, **kw):
    return list(read_llava(path, media_root=root, **kw))


def conv(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


# -- real record shapes ----------------------------------------------------------------------------

def test_mix665k_records_normalised(tmp_path, root):
    s0, s1, s2 = read(write(tmp_path, [MIX665K_0, MIX665K_1, PRETRAIN_0]), root)
    assert [t.role for t in s0.turns] == ["user", "assistant", "user", "assistant"]
    assert s0.turns[0].content == "<image>\nWhat are the colors of the bus in the image?"
    assert s0.id == "000000033471" and s0.source == "llava" and s0.task is None
    assert s0.media[0].kind == "image"
    assert s0.media[0].path == str(root / "coco/train2017/000000033471.jpg")
    assert s0.media[0].meta["original_path"] == "coco/train2017/000000033471.jpg"
    assert s0.media[0].data is None
    # suffix form -> LLaVA preprocess_multimodal puts it first
    assert s1.turns[0].content == "<image>\nWhere is the cat positioned in the image?"
    assert s2.turns[0].content == "<image>\nRender a clear and concise summary of the photo."
    assert s2.turns[1].content.startswith("select luxury furniture")


def test_placeholder_rules():
    assert move_placeholder_to_front("Where is the cat?\n<image>") == "<image>\nWhere is the cat?"
    assert move_placeholder_to_front("Look at <image> this") == "<image>\nLook at  this"
    t = place_image_placeholders([Turn("user", "Describe it."), Turn("assistant", "ok")], 1)
    assert t[0].content == "<image>\nDescribe it."
    t = place_image_placeholders([Turn("user", "Compare."), Turn("assistant", "ok")], 2)
    assert t[0].content == "<image>\n<image>\nCompare."
    keep = [Turn("user", "<image> vs <image>?"), Turn("assistant", "same")]
    assert place_image_placeholders(keep, 2)[0].content == "<image> vs <image>?"


def test_image_without_placeholder_gets_one(tmp_path, root):
    rec = {"id": "x", "image": "a.png", "conversations": conv(("human", "Describe."), ("gpt", "Blue."))}
    (s,) = read(write(tmp_path, [rec]), root)
    assert s.turns[0].content == "<image>\nDescribe."


def test_text_only_record_and_int_id(tmp_path):
    recs = [{"id": 33471, "conversations": conv(("human", "Hi"), ("gpt", "Hello"))},
            {"conversations": conv(("human", "No id"), ("gpt", "ok")), "model": ""}]
    a, b = read(write(tmp_path, recs))
    assert a.id == "33471" and isinstance(a.id, str) and a.media == []
    assert b.id == "1" and b.meta == {"model": ""}


def test_role_content_turns_system_and_task(tmp_path, root):
    rec = {"id": "r", "image": "a.png", "task_name": "VQA-E",
           "conversations": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "What colour?"},
                             {"role": "assistant", "content": "Blue."}]}
    (s,) = read(write(tmp_path, [rec]), root)
    assert [t.role for t in s.turns] == ["system", "user", "assistant"]
    assert s.turns[1].content == "<image>\nWhat colour?" and s.task == "VQA-E"


def test_multi_image_list(tmp_path, root):
    rec = {"id": "m", "image": ["a.png", "b.png"],
           "conversations": conv(("human", "<image> and <image>: same?"), ("gpt", "Yes."))}
    (s,) = read(write(tmp_path, [rec]), root)
    assert [m.meta["original_path"] for m in s.media] == ["a.png", "b.png"]
    assert s.turns[0].content == "<image> and <image>: same?"


# -- errors and skip accounting -------------------------------------------------------------------

def test_roles_not_alternating(tmp_path):
    bad = {"id": "bad1", "conversations": conv(("human", "a"), ("human", "b"), ("gpt", "c"))}
    p = write(tmp_path, [bad])
    with pytest.raises(SampleError) as e:
        read(p, missing="error")
    assert e.value.reason == "roles-not-alternating"
    assert str(p) in str(e.value) and "bad1" in str(e.value)
    stats = SkipCounter()
    assert read(p, stats=stats) == [] and stats.as_dict() == {"roles-not-alternating": 1}


def test_leading_assistant_turn_is_an_error(tmp_path):
    rec = {"id": "lead", "conversations": conv(("gpt", "hello"), ("human", "hi"), ("gpt", "ok"))}
    with pytest.raises(SampleError) as e:
        read(write(tmp_path, [rec]), missing="error")
    assert e.value.reason == "first-turn-not-user" and "lead" in str(e.value)


def test_unknown_role(tmp_path):
    rec = {"id": "r", "conversations": conv(("human", "a"), ("robot", "b"))}
    with pytest.raises(SampleError) as e:
        read(write(tmp_path, [rec]), missing="error")
    assert e.value.reason == "bad-role" and "robot" in str(e.value)


def test_image_count_mismatch(tmp_path, root):
    recs = [{"id": "two", "image": ["a.png", "b.png"],
             "conversations": conv(("human", "<image> only one"), ("gpt", "x"))},
            {"id": "txt", "conversations": conv(("human", "<image> but no image"), ("gpt", "x"))}]
    p = write(tmp_path, recs)
    with pytest.raises(SampleError) as e:
        read(p, root, missing="error")
    assert e.value.reason == "image-count-mismatch" and "two" in str(e.value)
    stats = SkipCounter()
    assert read(p, root, stats=stats) == []
    assert stats.as_dict() == {"image-count-mismatch": 2}


def test_missing_image_skip_vs_error(tmp_path, root):
    recs = [MIX665K_0, {"id": "gone", "image": "coco/train2017/missing.jpg",
                        "conversations": conv(("human", "<image>\nq"), ("gpt", "a"))}, MIX665K_1]
    p = write(tmp_path, recs)
    stats = SkipCounter()
    out = read(p, root, stats=stats)
    assert [s.id for s in out] == ["000000033471", "000000052846"]
    assert stats.as_dict() == {"missing-media": 1} and stats.total == 1 and bool(stats)
    assert "missing.jpg" in stats.examples["missing-media"][0]
    with pytest.raises(SampleError) as e:
        read(p, root, missing="error")
    assert e.value.reason == "missing-media"
    assert str(root / "coco/train2017/missing.jpg") in str(e.value)


def test_invalid_records(tmp_path):
    recs = [{"id": "ok", "conversations": conv(("human", "a"), ("gpt", "b"))},
            5, {"id": "noconv", "image": "a.png"}, {"id": "badimg", "image": 7,
                                                    "conversations": conv(("human", "a"))}]
    p = write(tmp_path, recs)
    stats = SkipCounter()
    assert [s.id for s in read(p, stats=stats)] == ["ok"]
    assert stats.as_dict() == {"invalid-record": 3}
    with pytest.raises(SampleError) as e:
        read(p, missing="error")
    assert str(p) in str(e.value) and "record 1" in str(e.value)
    with pytest.raises(SampleError) as e:
        read(write(tmp_path, recs[2:3], "b.json"), missing="error")
    assert "noconv" in str(e.value) and "conversations" in str(e.value)


def test_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('[\n {"id": "a", "conversations": []},\n {"id": "b" "conversations": []}\n]\n')
    with pytest.raises(ValueError) as e:
        read(p)
    assert str(p) in str(e.value) and "line 3" in str(e.value)
    q = tmp_path / "broken.jsonl"
    q.write_text('{"id": "a", "conversations": []}\n{"id": "b", \n')
    with pytest.raises(ValueError) as e:
        read(q)
    assert str(q) in str(e.value) and "line 2" in str(e.value)


def test_jsonl_input(tmp_path, root):
    p = write(tmp_path, [MIX665K_0, PRETRAIN_0], name="data.jsonl", jsonl=True)
    assert [s.id for s in read(p, root)] == ["000000033471", "004539375"]


def test_missing_annotation_file_raises_at_call(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_llava(tmp_path / "nope.json")
    with pytest.raises(ValueError):
        read_llava(tmp_path / "nope.json", missing="blank")


def test_load_bytes_sniffs_content(tmp_path, root):
    (s,) = read(write(tmp_path, [MIX665K_0]), root, load_bytes=True)
    assert s.media[0].data == (root / "coco/train2017/000000033471.jpg").read_bytes()
    assert s.media[0].ext == "png"  # named .jpg, PNG inside


def test_default_media_root_is_annotation_folder(tmp_path, root):
    p = write(root, [{"id": "a", "image": "a.png", "conversations": conv(("human", "q"), ("gpt", "a"))}])
    (s,) = read(p)
    assert s.media[0].path == str(root / "a.png")


# -- registry -------------------------------------------------------------------------------------

def test_registry():
    assert "llava" in available_formats() and "llava" in FORMATS
    assert get_reader("llava") is read_llava
    with pytest.raises(UnknownNameError, match="llava"):
        get_reader("lava")


# -- real files -----------------------------------------------------------------------------------

def test_real_coco_image_resolves(tmp_path):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    rec = {"id": "000000319154", "image": "coco/train2017/000000319154.jpg", "conversations": conv(
        ("human", "<image>\nWhat color is the dog in the image?"),
        ("gpt", "The dog in the image is brown."))}
    (s,) = read(write(tmp_path, [rec]), SAMPLES / "llava", load_bytes=True)
    assert s.media[0].ext == "jpg" and len(s.media[0].data) == 96099


def test_real_vision_flan_every_record_accounted():
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    path = SAMPLES / "vision_flan" / "tasks_web.json"
    n = len(json.loads(path.read_text()))
    stats = SkipCounter()
    out = list(read_llava(path, media_root=SAMPLES / "vision_flan", stats=stats))
    # paths say ./task_imgs/... but the files are under imgs/: all images are missing here
    assert n == 205 and out == [] and stats.as_dict() == {"missing-media": 205}


def test_real_vision_flan_with_fixed_image_folder(tmp_path):
    if not SAMPLES.is_dir():
        pytest.skip("../shared/samples not present")
    (tmp_path / "task_imgs").symlink_to((SAMPLES / "vision_flan" / "imgs").resolve())
    ann = SAMPLES / "vision_flan" / "tasks_web.json"
    stats = SkipCounter()  # the symlinked folder leads out of media_root: refused by default
    assert list(read_llava(ann, media_root=tmp_path, stats=stats)) == []
    assert stats.as_dict() == {"media-outside-root": 30, "missing-media": 175}
    stats = SkipCounter()
    out = list(read_llava(ann, media_root=tmp_path, stats=stats, allow_absolute=True))
    assert len(out) == 30 and stats.as_dict() == {"missing-media": 175}
    assert all(s.turns[0].content.startswith("<image>\n") for s in out)
    assert all(s.num_placeholders() == 1 and s.task for s in out)
    assert all(s.media[0].meta["original_path"].startswith("./task_imgs/") for s in out)

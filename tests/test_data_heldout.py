"""Held-out evaluation readers (mmit.data.sources.heldout_*): real VSR / ScienceQA split files from
../shared/samples (skipped when absent) and hand-made fixtures in each dataset's documented layout
(DATASETS.md §9)."""

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmit.data.sample import SampleError
from mmit.data.sources import available_formats, get_reader
from mmit.data.stats import SkipCounter
from mmit.evaluation.metrics import get_metric

from conftest import SHARED_SAMPLES

EVAL = SHARED_SAMPLES / "instructblip_eval"
VSR_FILES = [EVAL / "vsr" / "random_test.head30.jsonl", EVAL / "vsr" / "zeroshot_test.head30.jsonl"]
PID_SPLITS = EVAL / "scienceqa" / "pid_splits.json"
needs_samples = pytest.mark.skipif(not EVAL.is_dir(), reason="../shared/samples not present")

# a real clip (readers probe videos with PyAV; an ftyp header alone is undecodable-video)
MP4 = (Path(__file__).resolve().parents[1] / "demo_data" / "videos" / "yoga.mp4").read_bytes()


def jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())
    return path


def read(fmt, path, **kw):
    stats = SkipCounter()
    out = list(get_reader(fmt)(path, stats=stats, **kw))
    return out, stats


# --- VSR (real files) ----------------------------------------------------------------------------
@needs_samples
@pytest.mark.parametrize("vsr_file", VSR_FILES, ids=lambda p: p.name)
def test_vsr_real_split_files(vsr_file, tmp_path):
    lines = [json.loads(l) for l in vsr_file.read_text().splitlines() if l.strip()]
    assert len(lines) == 30
    # no COCO images here: every record is a counted missing-media skip
    samples, stats = read("heldout-vsr", vsr_file, media_root=tmp_path)
    assert samples == [] and stats.as_dict() == {"missing-media": 30}
    # images present (except one): 29 samples + 1 skip
    for rec in lines[1:]:
        jpeg(tmp_path / rec["image"])
    samples, stats = read("heldout-vsr", vsr_file, media_root=tmp_path, load_bytes=True)
    missing = sum(1 for r in lines if r["image"] == lines[0]["image"])
    assert len(samples) + stats.total == 30 and stats.as_dict() == {"missing-media": missing}
    for s in samples:  # ids are "<image stem>-<line index>" (captions repeat across images)
        rec = lines[int(s.id.rsplit("-", 1)[1])]
        assert s.id.startswith(rec["image"][:-4])
        assert s.turns[0].content == ('<image>\nBased on the image, is this statement true or '
                                      f'false? "{rec["caption"]}" Answer:')
        assert s.turns[1].content == ["false", "true"][rec["label"]] == s.meta["label"]
        assert s.meta["options"] == ["false", "true"] and s.task == "vsr"
        assert s.meta["relation"] == rec["relation"]
        assert s.meta["vote_true_validator_id"] == json.loads(rec["vote_true_validator_id"])
        assert s.media[0].ext == "jpg" and s.media[0].data is not None


@needs_samples
def test_vsr_first_real_record_fields(tmp_path):
    jpeg(tmp_path / "000000451431.jpg")
    samples, _ = read("heldout-vsr", VSR_FILES[0], media_root=tmp_path)
    s = samples[0]
    assert s.id == "000000451431-0"
    assert s.meta["fields"] == {"caption": "The person is inside the refrigerator.",
                                "relation": "inside"}
    assert s.meta["vote_true_validator_id"] == [2, 9] and s.meta["vote_false_validator_id"] == [3]
    assert s.meta["label"] == "true"


def test_vsr_bad_records_are_counted_or_raised(tmp_path):
    f = tmp_path / "test.jsonl"
    jpeg(tmp_path / "a.jpg")
    f.write_text(json.dumps({"image": "a.jpg", "caption": "The cat is on the mat.", "label": 2})
                 + "\n" + json.dumps({"image": "a.jpg", "caption": "x", "label": "1"}) + "\n")
    samples, stats = read("heldout-vsr", f)
    assert len(samples) == 1 and samples[0].meta["label"] == "true"
    assert stats.as_dict() == {"invalid-record": 1}
    with pytest.raises(SampleError, match=r"test.jsonl: line 1.*label must be 0 or 1"):
        list(get_reader("heldout-vsr")(f, missing="error"))


# --- ScienceQA (real pid_splits.json + hand-made problems.json) ------------------------------------
def scienceqa_problems():
    return {
        "4": {"question": "Which figure of speech is used in this text?",
              "choices": ["chiasmus", "apostrophe"], "answer": 1,
              "hint": "Sing, O goddess, the anger of Achilles.", "image": "image.png",
              "task": "closed choice", "grade": "grade11", "subject": "language science",
              "topic": "figurative-language", "category": "Literary devices",
              "skill": "Classify the figure of speech", "lecture": "...", "solution": "...",
              "split": "test"},
        "5": {"question": "What is the capital of Utah?", "choices": ["Denver", "Salt Lake City",
              "Boise"], "answer": 1, "hint": "", "image": None, "grade": "grade4",
              "subject": "social science", "split": "test"},
        "11": {"question": "Which animal's feet are also adapted for swimming?",
               "choices": ["blue-footed booby", "tokay gecko"], "answer": 0, "hint": "",
               "image": "image.png", "subject": "natural science", "split": "test"},
        "1": {"question": "Which of these states is farthest north?",
              "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"], "answer": 0,
              "hint": "", "image": "image.png", "split": "train"},
    }


@pytest.fixture
def sqa_dir(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps(scienceqa_problems()))
    for split, pid in [("test", "4"), ("test", "11"), ("train", "1")]:
        jpeg(tmp_path / "images" / split / pid / "image.png")
    return tmp_path


@needs_samples
def test_scienceqa_with_real_pid_splits(sqa_dir):
    n_test = len(json.loads(PID_SPLITS.read_text())["test"])
    assert n_test == 4241
    samples, stats = read("heldout-scienceqa", sqa_dir / "problems.json", splits_path=PID_SPLITS)
    assert [s.id for s in samples] == ["4", "11"]  # pid_splits order: 4, 5, 11, ...
    assert stats.as_dict() == {"missing-problem": n_test - 3, "no-image": 1}
    assert len(samples) + stats.total == n_test
    s = samples[0]
    assert s.turns[0].content == (
        "<image>\nContext: Sing, O goddess, the anger of Achilles. Question: Which figure of "
        "speech is used in this text? Options: (a) chiasmus (b) apostrophe. Answer:")
    assert s.turns[1].content == "apostrophe" == s.meta["label"]
    assert s.meta["options"] == ["chiasmus", "apostrophe"]
    assert s.meta["answer_letter"] == "b" and s.meta["subject"] == "language science"
    assert s.meta["fields"]["options_lettered"] == "(a) chiasmus (b) apostrophe"
    assert s.media[0].path == str(sqa_dir / "images" / "test" / "4" / "image.png")
    # empty hint: no "Context:" part
    assert samples[1].turns[0].content == (
        "<image>\nQuestion: Which animal's feet are also adapted for swimming? Options: "
        "(a) blue-footed booby (b) tokay gecko. Answer:")
    # the whole test split, text-only problems included
    samples, stats = read("heldout-scienceqa", sqa_dir / "problems.json", splits_path=PID_SPLITS,
                          image_only=False)
    assert [s.id for s in samples] == ["4", "5", "11"] and samples[1].media == []
    assert samples[1].turns[0].content.startswith("Question: What is the capital of Utah?")
    with pytest.raises(ValueError, match="no split 'testt'"):
        list(get_reader("heldout-scienceqa")(sqa_dir / "problems.json", splits_path=PID_SPLITS,
                                             split="testt"))


def test_scienceqa_split_field_without_pid_splits(sqa_dir):
    samples, stats = read("heldout-scienceqa", sqa_dir / "problems.json", split="train")
    assert [s.id for s in samples] == ["1"] and not stats
    assert samples[0].meta["options"][0] == samples[0].meta["label"] == "West Virginia"
    (sqa_dir / "images" / "test" / "11" / "image.png").unlink()
    samples, stats = read("heldout-scienceqa", sqa_dir / "problems.json")
    assert [s.id for s in samples] == ["4"]
    assert stats.as_dict() == {"missing-media": 1, "no-image": 1}


def test_scienceqa_bad_answer_index(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps(
        {"9": {"question": "q", "choices": ["a"], "answer": 3, "image": None, "split": "test"}}))
    with pytest.raises(SampleError, match=r"problem '9'.*not an index"):
        list(get_reader("heldout-scienceqa")(tmp_path / "problems.json", missing="error",
                                             image_only=False))


# --- fixtures for the other formats (layouts of DATASETS.md §9) -----------------------------------
def make_vizwiz(d: Path):
    jpeg(d / "VizWiz_val_00000000.jpg")
    jpeg(d / "VizWiz_val_00000001.jpg")
    recs = [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?",
             "answers": [{"answer": a, "answer_confidence": "yes"} for a in
                         ["soup"] * 6 + ["tomato soup"] * 3 + ["unanswerable"]],
             "answer_type": "other", "answerable": 1},
            {"image": "VizWiz_val_00000001.jpg", "question": "What color is this?"},  # test-like
            {"image": "VizWiz_val_00000002.jpg", "question": "Missing image?",
             "answers": [{"answer": "no"}] * 10}]
    (d / "val.json").write_text(json.dumps(recs))
    return d / "val.json", {}, 1, {"no-answer": 1, "missing-media": 1}


def make_textvqa(d: Path):
    jpeg(d / "0054c91397f2fe05.jpg")
    data = {"dataset_name": "textvqa", "data": [
        {"question": "what is the brand of phone?", "image_id": "0054c91397f2fe05",
         "question_id": 0, "answers": ["nokia"] * 9 + ["nokia lumia"], "set_name": "val",
         "ocr_tokens": ["NOKIA", "Lumia"]},
        {"question": "what time is it?", "image_id": "absent", "question_id": 1,
         "answers": ["3:30"] * 10}]}
    (d / "TextVQA_0.5.1_val.json").write_text(json.dumps(data))
    return d / "TextVQA_0.5.1_val.json", {}, 1, {"missing-media": 1}


def make_gqa(d: Path):
    jpeg(d / "2415801.jpg")
    data = {"201307251": {"question": "Is it overcast?", "imageId": "2415801", "answer": "no",
                          "fullAnswer": "No, it is clear.", "types": {"structural": "verify"}},
            "201307252": {"question": "What is it?", "imageId": "999", "answer": "cat"}}
    (d / "testdev_balanced_questions.json").write_text(json.dumps(data))
    return d / "testdev_balanced_questions.json", {}, 1, {"missing-media": 1}


def make_hatefulmemes(d: Path):
    jpeg(d / "img" / "42953.png")
    jpeg(d / "img" / "23058.png")
    lines = [{"id": 42953, "img": "img/42953.png", "label": 0,
              "text": "its their character not their color that matters"},
             {"id": 23058, "img": "img/23058.png", "label": "1", "text": "a hateful text"},
             {"id": 1, "img": "img/1.png", "text": "no label in test"}]
    (d / "dev_seen.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return d / "dev_seen.jsonl", {}, 2, {"no-label": 1}


def make_flickr30k(d: Path):
    jpeg(d / "flickr30k-images" / "1007129816.jpg")
    recs = [{"image": "flickr30k-images/1007129816.jpg",
             "caption": ["The man with pierced ears is wearing glasses.", "A man with glasses.",
                         "A man wearing an orange hat.", "A man in an orange hat.",
                         "A man with gauges and glasses."]},
            {"image": "flickr30k-images/1007129816.jpg", "caption": []}]
    (d / "flickr30k_test.json").write_text(json.dumps(recs))
    return d / "flickr30k_test.json", {}, 1, {"no-answer": 1}


def make_nocaps(d: Path):
    jpeg(d / "0013ea2087020901.jpg")
    data = {"images": [{"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "in-domain"},
                       {"id": 1, "file_name": "absent.jpg", "domain": "out-domain"}],
            "annotations": [{"image_id": 0, "caption": "A baby is eating a cake.", "id": 0},
                            {"image_id": 0, "caption": "A child with a cake.", "id": 1},
                            {"image_id": 1, "caption": "A jellyfish.", "id": 2}]}
    (d / "nocaps_val_4500_captions.json").write_text(json.dumps(data))
    return d / "nocaps_val_4500_captions.json", {}, 1, {"missing-media": 1}


def make_visdial(d: Path):
    jpeg(d / "VisualDialog_val2018_000000185565.jpg")
    answers = ["yes", "no", "2", "a red one", "maybe"]
    questions = ["is the photo in color", "how many people", "is it sunny"]
    dialog = {"image_id": 185565, "caption": "a man riding a wave on a surfboard", "dialog": [
        {"question": 0, "answer": 0, "answer_options": [1, 0, 4, 3], "gt_index": 1},
        {"question": 1, "answer": 2, "answer_options": [2, 3, 0, 1], "gt_index": 0},
        {"question": 2, "answer_options": [0, 1, 2, 3]}]}  # no gt_index
    top = {"version": "1.0", "split": "val2018",
           "data": {"questions": questions, "answers": answers, "dialogs": [dialog]}}
    (d / "visdial_1.0_val.json").write_text(json.dumps(top))
    return d / "visdial_1.0_val.json", {}, 2, {"no-label": 1}


def make_iconqa(d: Path):
    jpeg(d / "test" / "choose_txt" / "12" / "image.png")
    jpeg(d / "test" / "fill_in_blank" / "13" / "image.png")
    recs = [{"image": "test/choose_txt/12/image.png", "question": "How many dots are there?",
             "choices": ["5", "7", "6"], "answer": 2, "question_id": "12",
             "ques_type": "choose_txt"},
            {"image": "test/fill_in_blank/13/image.png", "question": "How many sides?",
             "answer": "4", "question_id": "13", "ques_type": "fill_in_blank"},
            {"image": "test/choose_img/14/image.png", "question": "Which is a circle?",
             "choices": ["choice_0.png", "choice_1.png"], "answer": 0, "question_id": "14"}]
    (d / "annotations_test.json").write_text(json.dumps(recs))
    return d / "annotations_test.json", {}, 2, {"image-choices": 1}


def make_msrvtt(d: Path):
    (d / "video7010.mp4").write_bytes(MP4)
    (d / "vid1.mp4").write_bytes(MP4)
    recs = [{"answer": "sing", "id": 0, "question": "what is a man doing?", "video_id": 7010},
            {"video": "vid1.mp4", "question": "who is talking?", "answer": "man",
             "question_id": 5},
            {"answer": "x", "question": "where?", "video_id": 99}]  # missing video
    (d / "qa_test.json").write_text(json.dumps(recs))
    (d / "ans2label.json").write_text(json.dumps({"man": 1, "sing": 0, "woman": 2}))
    return d / "qa_test.json", {"answer_list": d / "ans2label.json"}, 2, {"missing-media": 1}


def make_msvd(d: Path):
    (d / "vid1.avi").write_bytes(MP4)  # the type comes from the content, not the name
    recs = [{"video": "vid1.avi", "question": "what is the cat doing?", "answer": "play",
             "question_id": 0},
            {"answer": "x", "question": "where?", "video_id": 99}]  # no pattern for MSVD ids
    (d / "qa_test.json").write_text(json.dumps(recs))
    return d / "qa_test.json", {}, 1, {"invalid-record": 1}


def make_ivqa(d: Path):
    (d / "abc_10_20.mp4").write_bytes(MP4)
    with open(d / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "start", "end", "question", "answer1", "answer2", "answer3",
                    "answer4", "answer5"])
        w.writerow(["abc", "10", "20", "what is the man holding?", "guitar", "guitar", "bass",
                    "guitar", ""])
        w.writerow(["zzz", "0", "5", "what animal?", "dog", "dog", "dog", "dog", "dog"])
    return d / "test.csv", {}, 1, {"missing-media": 1}


def make_vqav2(d: Path):
    jpeg(d / "COCO_val2014_000000262148.jpg")
    qs = {"data_subtype": "val2014", "questions": [
        {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
        {"image_id": 262148, "question": "Unannotated?", "question_id": 262148001}]}
    anns = {"annotations": [
        {"question_id": 262148000, "image_id": 262148, "multiple_choice_answer": "down",
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in
                     enumerate(["down"] * 4 + ["at table"] * 5 + ["skateboard"])],
         "answer_type": "other", "question_type": "where is"}]}
    (d / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(qs))
    (d / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(anns))
    return d / "v2_OpenEnded_mscoco_val2014_questions.json", {}, 1, {"no-answer": 1}


FIXTURES = {"heldout-vizwiz": make_vizwiz, "heldout-textvqa": make_textvqa,
            "heldout-gqa": make_gqa, "heldout-hatefulmemes": make_hatefulmemes,
            "heldout-flickr30k": make_flickr30k, "heldout-nocaps": make_nocaps,
            "heldout-visdial": make_visdial, "heldout-iconqa": make_iconqa,
            "heldout-msrvtt-qa": make_msrvtt, "heldout-msvd-qa": make_msvd,
            "heldout-ivqa": make_ivqa, "heldout-vqav2": make_vqav2}


def test_every_heldout_format_has_a_fixture_here():
    names = {f for f in available_formats() if f.startswith("heldout-")}
    assert names == set(FIXTURES) | {"heldout-vsr", "heldout-scienceqa"}


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_eval_sample_convention(fmt, tmp_path):
    path, kw, n_ok, skips = FIXTURES[fmt](tmp_path)
    samples, stats = read(fmt, path, load_bytes=True, **kw)
    assert len(samples) == n_ok and stats.as_dict() == skips
    for s in samples:
        s.validate()
        assert [t.role for t in s.turns] == ["user", "assistant"]
        kind = s.media[0].kind
        assert len(s.media) == 1 and s.media[0].data is not None
        assert s.turns[0].content.startswith({"image": "<image>\n", "video": "<video>\n"}[kind])
        assert isinstance(s.meta["fields"], dict) and s.task and s.source == fmt
        if "options" in s.meta:
            assert s.meta["label"] in s.meta["options"] and s.turns[1].content == s.meta["label"]
        if "answers" in s.meta:
            assert s.turns[1].content in s.meta["answers"]
    # the error policy names the file
    with pytest.raises(SampleError, match=Path(path).name):
        list(get_reader(fmt)(path, missing="error", **kw))


@pytest.mark.parametrize("fmt", sorted(FIXTURES) + ["heldout-vsr", "heldout-scienceqa"])
def test_absent_file_and_bad_policy(fmt, tmp_path):
    with pytest.raises(FileNotFoundError, match=fmt):
        get_reader(fmt)(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="missing must be"):
        get_reader(fmt)(tmp_path / "x.json", missing="blank")


def test_vizwiz_answers_and_vqa_accuracy(tmp_path):
    path, *_ = make_vizwiz(tmp_path)
    (s,), _ = read("heldout-vizwiz", path)
    assert s.id == "VizWiz_val_00000000"
    assert s.turns[0].content == "<image>\nQuestion: What is this? Short answer:"
    assert s.turns[1].content == "soup" and len(s.meta["answers"]) == 10
    m = get_metric("vqa-accuracy")
    rec = {"prediction": "Tomato soup.", "reference": s.meta["answers"]}
    assert m.compute([rec])["vqa-accuracy"] == pytest.approx(0.9)


def test_textvqa_ocr_prompt_and_gqa_layouts(tmp_path):
    path, *_ = make_textvqa(tmp_path)
    (s,), _ = read("heldout-textvqa", path)
    assert s.id == "0" and s.turns[0].content == (
        "<image>\nOCR tokens: NOKIA, Lumia. Question: what is the brand of phone? Short answer:")
    path, *_ = make_gqa(tmp_path)
    (s,), _ = read("heldout-gqa", path)
    assert s.id == "201307251" and s.meta["answers"] == ["no"]
    assert s.meta["fullAnswer"] == "No, it is clear."
    lavis = tmp_path / "gqa_list.json"
    lavis.write_text(json.dumps([{"image": "2415801.jpg", "question": "Is it overcast?",
                                  "answer": "no", "question_id": 7}]))
    (s,), _ = read("heldout-gqa", lavis)
    assert s.id == "7" and s.turns[1].content == "no"


def test_hatefulmemes_prompt_and_roc_auc(tmp_path):
    path, *_ = make_hatefulmemes(tmp_path)
    samples, _ = read("heldout-hatefulmemes", path)
    assert samples[0].turns[0].content == (
        '<image>\nThis is an image with: "its their character not their color that matters" '
        'written on it. Is it hateful? Answer:')
    assert [s.meta["label"] for s in samples] == ["no", "yes"]
    recs = [{"candidates": s.meta["options"], "scores": sc, "label": s.meta["label"]}
            for s, sc in zip(samples, ([-0.5, -2.0], [-1.0, -0.2]))]
    assert get_metric("roc-auc").compute(recs)["roc-auc"] == 1.0


def test_captions_layouts(tmp_path):
    path, *_ = make_flickr30k(tmp_path)
    (s,), _ = read("heldout-flickr30k", path)
    assert s.turns[0].content == "<image>\nA short image description:"
    assert s.turns[1].content == "The man with pierced ears is wearing glasses."
    assert len(s.meta["answers"]) == 5
    path, *_ = make_nocaps(tmp_path)
    (s,), _ = read("heldout-nocaps", path)
    assert s.id == "0" and s.meta["domain"] == "in-domain"
    assert s.meta["answers"] == ["A baby is eating a cake.", "A child with a cake."]


def test_visdial_rounds_history_and_mrr(tmp_path):
    path, *_ = make_visdial(tmp_path)
    samples, _ = read("heldout-visdial", path)
    assert [s.id for s in samples] == ["185565-1", "185565-2"]
    first, second = samples
    assert first.meta["options"] == ["no", "yes", "maybe", "a red one"]
    assert first.meta["label"] == "yes" and first.meta["round"] == 1
    assert first.turns[0].content == ("<image>\nDialog history: a man riding a wave on a "
                                      "surfboard.\n Question: is the photo in color? Short answer:")
    assert second.meta["fields"]["history"] == ("a man riding a wave on a surfboard. is the photo "
                                                "in color? yes.")
    assert second.meta["label"] == "2"
    rec = {"candidates": first.meta["options"], "scores": [0.0, -1.0, -0.5, -3.0],
           "label": first.meta["label"]}
    assert get_metric("mrr").compute([rec])["mrr"] == pytest.approx(1 / 3)


def test_iconqa_and_videoqa_details(tmp_path):
    path, *_ = make_iconqa(tmp_path)
    samples, _ = read("heldout-iconqa", path)
    assert samples[0].turns[0].content == (
        "<image>\nQuestion: How many dots are there? Options: (a) 5 (b) 7 (c) 6. Short answer:")
    assert samples[0].meta["label"] == "6" and "options" not in samples[1].meta
    (tmp_path / "msrvtt").mkdir()
    path, kw, *_ = make_msrvtt(tmp_path / "msrvtt")
    samples, _ = read("heldout-msrvtt-qa", path, **kw)
    assert samples[0].media[0].path.endswith("video7010.mp4")
    assert samples[0].meta["options"] == ["sing", "man", "woman"]
    assert samples[0].turns[0].content == "<video>\nQuestion: what is a man doing? Short answer:"
    assert samples[1].id == "5"


def test_ivqa_answers(tmp_path):
    path, *_ = make_ivqa(tmp_path)
    (s,), _ = read("heldout-ivqa", path)
    assert s.id == "abc-0" and s.meta["answers"] == ["guitar", "guitar", "bass", "guitar"]
    assert s.turns[1].content == "guitar" and s.meta["start"] == "10"


def test_media_content_is_checked_with_load_bytes(tmp_path):
    path, kw, *_ = make_msrvtt(tmp_path)
    (tmp_path / "video7010.mp4").write_text("<html>not found</html>")
    samples, stats = read("heldout-msrvtt-qa", path, load_bytes=True, **kw)
    assert stats.as_dict() == {"missing-media": 1, "undecodable-video": 1}
    assert len(samples) == 1


def test_vqav2_questions_and_annotations(tmp_path):
    path, *_ = make_vqav2(tmp_path)
    (s,), stats = read("heldout-vqav2", path)
    assert stats.as_dict() == {"no-answer": 1}
    assert s.id == "262148000" and s.turns[1].content == "down"  # multiple_choice_answer
    assert s.meta["answers"].count("at table") == 5 and s.meta["question_type"] == "where is"
    assert s.media[0].path.endswith("COCO_val2014_000000262148.jpg")
    (tmp_path / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(FileNotFoundError, match="annotations"):
        get_reader("heldout-vqav2")(path)

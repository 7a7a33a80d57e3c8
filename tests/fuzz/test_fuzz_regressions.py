"""The crashes the fuzz suite found (issue 16), each kept as a fixed case: the format's valid
dataset from :mod:`fuzz.cases` with the one change that broke the reader, run through
``mmit convert`` with every invariant of :mod:`fuzz.runner` checked. Each test says what happened
before the fix ("old:") and which seeded case found it.
"""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fuzz.cases import BIGINT, CASE, Gen, Raw, make_case, secret_bytes
from fuzz.runner import run_case


def case_where(fmt, pred=lambda layout: True, flags=()):
    """The unmutated case of ``fmt`` whose layout satisfies ``pred`` (builders draw variants)."""
    for i in range(200):
        c = make_case(fmt, f"regression-{i}", mutations=[], flags=list(flags))
        if pred(c.layout):
            return c
    raise AssertionError(f"no {fmt} layout matches")


def records(case):
    return [c[k] for c, k in case.layout.records]


def run(case, tmp_path):
    o = run_case(case, tmp_path / "case")
    assert not o.violations, o.report()
    return o


def converted(case, tmp_path, skipped=None, written=None):
    o = run(case, tmp_path)
    assert o.code == 0, o.report()
    if skipped is not None:
        assert o.stats["skipped"] == skipped, (o.stats["skipped"], o.stats["skip_examples"])
    if written is not None:
        assert o.stats["written"] == written
    return o


def one_line_error(case, tmp_path, names):
    o = run(case, tmp_path)
    assert o.code == 2 and names in o.error_line, o.report()
    return o


# -- a lone surrogate in a skip message ------------------------------------------------------------

def test_lone_surrogate_in_a_skip_message(tmp_path):
    # old (heldout-flickr30k-4, heldout-nocaps-17): the record was counted, but its skip message
    # quoted the path "x\udfffy" (a JSON escape) and _stats.json could not be encoded: every shard
    # was written, then the run failed with "'utf-8' codec can't encode character '\udfff'" and
    # no _stats.json (exit 2, no file named)
    case = case_where("heldout-flickr30k")
    records(case)[0]["image"] = "x\udfffy.jpg"
    o = converted(case, tmp_path, {"missing-media": 1}, written=2)
    assert "\\udfff" in o.stats["skip_examples"]["missing-media"][0]


def test_lone_surrogate_in_an_id(tmp_path):
    # old (heldout-nocaps-17): an image id "\ud800" stopped the run the same way
    case = case_where("heldout-nocaps")
    records(case)[0]["id"] = "\ud800"
    converted(case, tmp_path)


# -- integers longer than Python converts -----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_integer_of_5000_digits_in_a_record(suffix, tmp_path):
    # old (llava, sharegpt4v-10, vision-flan-16, multiinstruct-13): json.loads raised "Exceeds the
    # limit (4300 digits) for integer string conversion", a plain ValueError: the whole conversion
    # stopped with that line, naming no file
    case = case_where("llava", lambda L: L.input.endswith(suffix))
    records(case)[1]["extra"] = BIGINT
    o = converted(case, tmp_path, {"number-too-large": 1}, written=2)
    assert "ann" + suffix in o.stats["skip_examples"]["number-too-large"][0]


def test_integer_of_5000_digits_in_an_mmc4_line(tmp_path):
    case = case_where("mmc4", lambda L: L.input.endswith(".jsonl"))
    records(case)[0]["url"] = BIGINT
    converted(case, tmp_path, {"number-too-large": 1}, written=2)


def test_integer_of_5000_digits_in_a_whole_file_document(tmp_path):
    # old (heldout-iconqa-3, heldout-flickr30k-14): the same message without a file name
    case = case_where("heldout-iconqa")
    records(case)[0]["answer"] = BIGINT
    one_line_error(case, tmp_path, "annotations_test.json")


# -- wrong types in the held-out readers ----------------------------------------------------------------

def test_nocaps_ids_that_are_objects_or_lists(tmp_path):
    # old (heldout-nocaps-1, -23): TypeError: unhashable type: 'dict' / 'list' (a traceback)
    case = case_where("heldout-nocaps")
    recs = records(case)
    recs[0]["id"] = {"a": {"b": None}}
    recs[3]["image_id"] = [1]  # an annotation of image 0
    o = converted(case, tmp_path)
    assert o.stats["written"] == 2 and sum(o.stats["skipped"].values()) == 1


def test_scienceqa_image_that_is_a_number(tmp_path):
    # old (heldout-scienceqa-11): TypeError in os.path.join (a traceback)
    case = case_where("heldout-scienceqa", lambda L: "data/pid_splits.json" not in L.files)
    records(case)[1]["image"] = 1.5
    converted(case, tmp_path, {"invalid-record": 1}, written=2)


def test_scienceqa_split_file_of_the_wrong_shape(tmp_path):
    case = case_where("heldout-scienceqa", lambda L: "data/pid_splits.json" in L.files)
    # old: TypeError: 'int' object is not iterable (a traceback)
    case.layout.files["data/pid_splits.json"].value = {"train": [], "test": 5}
    one_line_error(case, tmp_path, "pid_splits.json")


def test_visdial_round_that_is_not_an_object(tmp_path):
    # old (heldout-visdial-21): AttributeError: 'str' object has no attribute 'get' (a traceback)
    case = case_where("heldout-visdial")
    dialogs = records(case)[4]["dialogs"]
    dialogs[0]["dialog"][0] = "record"
    dialogs[1]["dialog"][1]["answer_options"] = 5  # old: TypeError: 'int' object is not iterable
    converted(case, tmp_path, {"invalid-record": 3}, written=1)


def test_textvqa_answers_that_are_a_number(tmp_path):
    # old (heldout-textvqa-102): TypeError: 'int' object is not iterable (a traceback)
    case = case_where("heldout-textvqa")
    records(case)[2]["answers"] = -1
    converted(case, tmp_path, {"invalid-record": 1}, written=2)


def test_vizwiz_answers_that_are_a_bool(tmp_path):
    # old (heldout-vizwiz-307): TypeError: 'bool' object is not iterable (a traceback)
    case = case_where("heldout-vizwiz")
    records(case)[1]["answers"] = True
    converted(case, tmp_path, {"invalid-record": 1}, written=2)


@pytest.mark.parametrize("value", [True, float("nan")])
def test_iconqa_choices_that_are_not_a_list(value, tmp_path):
    # old (heldout-iconqa-175, -201): TypeError: 'bool' / 'float' object is not iterable
    case = case_where("heldout-iconqa")
    records(case)[0]["choices"] = value
    converted(case, tmp_path, {"invalid-record": 1}, written=2)


def test_vqav2_question_ids_that_are_objects(tmp_path):
    # old (heldout-vqav2-204): TypeError: unhashable type: 'dict' (a traceback), in the questions
    # and, before any record was read, in the annotations
    case = case_where("heldout-vqav2")
    recs = records(case)
    recs[0]["question_id"] = {"a": {"b": None}}
    recs[4]["question_id"] = [1]  # the annotation of question 1: it has none now
    o = converted(case, tmp_path, written=1)
    assert sum(o.stats["skipped"].values()) == 2


# -- instructpix2pix ------------------------------------------------------------------------------------

def test_truncated_parquet_names_the_file(tmp_path):
    # old (instructpix2pix-11, -21): "mmit convert: error: Parquet magic bytes not found in
    # footer. ..." without the file's name
    case = case_where("instructpix2pix", lambda L: L.input.endswith(".parquet"))
    case.layout.files[case.layout.input].post.append(lambda b: b[: len(b) // 2])
    one_line_error(case, tmp_path, "train-00000-of-00001.parquet")


def test_parquet_string_that_is_not_utf8(tmp_path):
    # pyarrow does not check UTF-8 when it reads: old, the first row with a bad edit prompt stopped
    # the run with a UnicodeDecodeError naming no file; now that row is a bad-encoding skip
    g = Gen(__import__("random").Random(0))
    imgs = [g.image("JPEG") for _ in range(4)]
    table = pa.table({"input_image": pa.array(imgs[:2], pa.binary()),
                      "edit_prompt": pa.array(["make it QQQQ", "make it red"], pa.string()),
                      "edited_image": pa.array(imgs[2:], pa.binary())})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none", use_dictionary=False)
    data = buf.getvalue().replace(b"QQQQ", b"Q\xffQQ")
    case = case_where("instructpix2pix", lambda L: L.input.endswith(".parquet"))
    case.layout.files[case.layout.input] = Raw(data)
    converted(case, tmp_path, {"bad-encoding": 1}, written=1)


def test_seed_folder_name_with_a_nul_byte(tmp_path):
    # old (instructpix2pix-50): ValueError: embedded null byte from os.path.realpath: the run
    # stopped naming no file
    case = case_where("instructpix2pix", lambda L: L.input in ("data", "data/seeds.json"))
    seeds = records(case)[-2:]
    seeds[0][0] = "a\x00b"
    converted(case, tmp_path, {"invalid-record": 2}, written=1)


# -- mimic-it ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,code", [(["--missing", "error"], 2), ([], 0)])
def test_truncated_base64_image_names_the_instruction_file(flags, code, tmp_path):
    # old (mimic-it-70): the header check ran only while the shard was built, where the error
    # could name the sample id but not the file ("inline image (sample 'XX_INS_00000', media 0)")
    case = case_where("mimic-it", lambda L: "data/XX.json" in L.files, flags)
    slot = case.layout.slots[0]
    slot.set(slot.get()[:-3])  # XX_IMG_0 loses its end-of-image marker
    o = run(case, tmp_path)
    assert o.code == code
    if code == 2:
        assert "XX_instructions.json" in o.error_line and "XX_IMG_0" in o.error_line
    else:
        assert o.stats["skipped"] == {"undecodable-image": 2}  # XX_IMG_0 is in two samples


def test_parquet_base64_cell_that_is_not_utf8(tmp_path):
    # old (mimic-it-91): UnicodeDecodeError from pyarrow's as_py() stopped the run naming no file
    g = Gen(__import__("random").Random(1))
    import base64
    cells = [base64.b64encode(g.image("JPEG")).decode() for _ in range(3)]
    ids = [f"XX_IMG_{i}" for i in range(3)]
    table = pa.table({"base64": pa.array(cells, pa.string()), "__index_level_0__": pa.array(ids)})
    meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": []}
    table = table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none", use_dictionary=False)
    part = cells[1][-80:-40].encode()  # unique to image 1 (every JPEG's base64 starts alike)
    data = buf.getvalue().replace(part, b"\xff" + part[1:])  # the value and its page statistics
    assert data != buf.getvalue()
    case = case_where("mimic-it", lambda L: "data/XX.parquet" in L.files)
    case.layout.files["data/XX.parquet"] = Raw(data)
    o = converted(case, tmp_path, {"bad-base64": 1})
    assert o.stats["written"] >= 1
    assert "XX_IMG_1" in o.stats["skip_examples"]["bad-base64"][0]


# -- mmc4 --------------------------------------------------------------------------------------------

def _flip_middle(b: bytes) -> bytes:
    i = len(b) // 2
    return b[:i] + bytes([b[i] ^ 0x5A]) + b[i + 1:]


@pytest.mark.parametrize("wrap,damage", [("gz", lambda b: b[: len(b) * 2 // 3]),
                                         ("zip", _flip_middle)])
def test_damaged_archive_names_the_file(wrap, damage, tmp_path):
    # old (mmc4-30): EOFError: Compressed file ended before the end-of-stream marker was reached
    # (a traceback) for a cut .jsonl.gz; a damaged .zip member raised BadZipFile ("Bad CRC-32")
    # or zlib.error the same way
    case = case_where("mmc4", lambda L: L.input.endswith(f".jsonl.{wrap}"))
    case.layout.files[case.layout.input].post.append(damage)
    one_line_error(case, tmp_path, f"docs.jsonl.{wrap}")


# -- the oracle itself ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["llava", "webvid", "mimic-it"])
def test_the_runner_sees_a_leak(fmt, tmp_path):
    """With --allow-absolute-media the reader may read the planted secret; the runner must then
    report it (the invariant is not vacuous)."""
    case = case_where(fmt, lambda L: bool(L.paths), ["--allow-absolute-media"])
    ref = case.layout.paths[0]
    ref.set(f"{CASE}/outside/secret{ref.ext}")
    case.layout.files[f"outside/secret{ref.ext}"] = Raw(secret_bytes(ref.kind))
    o = run_case(case, tmp_path / "case")
    assert o.code == 0 and any("outside the media root" in v for v in o.violations), o.report()

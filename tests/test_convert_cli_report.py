"""`mmit convert` tells the user why records were skipped (issue 15): the top skip reasons with one
example each (record id and message) on stderr, and exit status 2 with a one-line error naming the
input and the flag to set when nothing was written (e.g. no --media-root)."""

import json
import shutil

from conftest import DEMO_IMAGES, DEMO_JSON
from mmit.data.convert import main


def conv(q="<image>\nWhat is it?", a="A photo."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def run(argv, capsys):
    code = main(argv + ["--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_no_media_root_exits_2_naming_the_flag_and_an_example(tmp_path, capsys):
    # today's code: exit 0 after skipping every record, the reasons only in _stats.json
    shutil.copytree(DEMO_IMAGES, tmp_path / "images")
    recs = [{"id": f"r{i}", "image": p.name, "conversations": conv()}
            for i, p in enumerate(sorted(DEMO_IMAGES.glob("*.jpg")))]
    (tmp_path / "ann.json").write_text(json.dumps(recs))  # paths relative to images/, not here
    code, out, err = run(["convert", "--format", "llava", "--input", str(tmp_path / "ann.json"),
                          "--output", str(tmp_path / "o")], capsys)
    stats = json.loads((tmp_path / "o" / "_stats.json").read_text())
    assert stats["written"] == 0 and stats["skipped"] == {"missing-media": len(recs)}
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("mmit convert: error:")]
    assert len(errors) == 1 and "--media-root" in errors[0] and "ann.json" in errors[0]
    assert "nothing was written" in errors[0]
    (reason_line,) = [line for line in err.splitlines() if line.startswith("  missing-media:")]
    assert f"{len(recs)} (100%)" in reason_line and "e.g. r0:" in reason_line
    assert recs[0]["image"] in reason_line  # the example names the file that was looked for
    assert out.count("\n") == 1 and "0 written" in out  # the summary line is still printed
    code, _, err = run(["convert", "--format", "llava", "--input", str(tmp_path / "ann.json"),
                        "--media-root", str(tmp_path / "images"), "--output",
                        str(tmp_path / "o2")], capsys)
    assert code == 0 and err == ""  # with the flag: everything written, nothing on stderr


def test_top_reasons_with_one_example_each_and_exit_0_when_something_was_written(tmp_path,
                                                                                 capsys):
    shutil.copytree(DEMO_IMAGES, tmp_path / "images")
    good = {"id": "good", "image": "extreme_ironing.jpg", "conversations": conv()}
    recs = [good, dict(good, id="good2")]
    recs += [dict(good, id=f"gone{i}", image=f"nope{i}.jpg") for i in range(4)]  # missing-media x4
    recs += [dict(good, id=f"mute{i}", conversations=conv(a=" ")) for i in range(3)]  # empty x3
    recs += [dict(good, id="twice", conversations=conv(q="<image> <image>"))]  # count mismatch
    recs += [dict(good, id="roles", conversations=[conv()[1], conv()[0]])]  # roles
    recs += [{"id": "noconv", "image": "extreme_ironing.jpg"}]  # invalid-record
    (tmp_path / "images" / "cut.jpg").write_bytes((DEMO_IMAGES / "dog_running.jpg").read_bytes()[:999])
    recs += [dict(good, id="cut", image="cut.jpg")]  # undecodable-image, found in the shard builder
    (tmp_path / "ann.json").write_text(json.dumps(recs))
    code, out, err = run(["--format", "llava", "--input", str(tmp_path / "ann.json"),
                          "--media-root", str(tmp_path / "images"), "--output",
                          str(tmp_path / "o")], capsys)
    stats = json.loads((tmp_path / "o" / "_stats.json").read_text())
    assert code == 0 and stats["written"] == 2 and len(stats["skipped"]) == 6, stats["skipped"]
    lines = err.splitlines()
    assert lines[0].startswith(f"mmit convert: {len(recs) - 2} of {len(recs)} records skipped")
    listed = [line.split(":")[0].strip() for line in lines[1:6]]
    counts = [stats["skipped"][r] for r in listed]
    assert counts == sorted(counts, reverse=True) and listed[:2] == ["missing-media", "empty-answer"]
    assert "e.g. gone0:" in lines[1] and "nope0.jpg" in lines[1]
    assert "e.g. mute0:" in lines[2]
    assert lines[6].strip().startswith("... 1 other reason(s): 1 record(s)")
    assert len(lines) == 7 and "error" not in err and out.count("\n") == 1


def test_every_record_left_out_by_the_sample_rate_is_an_error_too(tmp_path, capsys):
    code, _, err = run(["--format", "llava", "--input", str(DEMO_JSON), "--media-root",
                        str(DEMO_IMAGES), "--output", str(tmp_path / "o"), "--sample-rate", "0"],
                       capsys)
    assert code == 2 and "left out by --sample-rate" in err and "--sample-rate" in \
        err.splitlines()[-1]

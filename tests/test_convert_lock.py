"""`mmit convert` holds an exclusive lock on its output folder (two conversions never mix), takes
over the stale lock of a dead process, refuses a foreign host's lock, releases it on every exit,
and per-shard stats always describe the tar on disk (issue 16, point 1)."""

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmit.data.convert as convert_mod
from mmit.data.convert import convert, main
from mmit.data.sample import Media, Sample, Turn
from mmit.data.distribute import LOCK_FILE, OutputLock, OutputLockedError, pid_alive
from mmit.data.shards import ShardWriter, iter_shards
from mmit.data.sources import available_formats

ROOT = Path(__file__).resolve().parents[1]


def jpeg(seed):
    arr = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def llava_input(tmp, name, n):
    """An input of ``n`` LLaVA records with ids ``<name>-<i>`` over 3 images."""
    root = tmp / "media"
    root.mkdir(exist_ok=True)
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(jpeg(i))
    recs = [{"id": f"{name}-{i}", "image": f"{i % 3}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\n{name} question {i}?"},
        {"from": "gpt", "value": f"{name} answer {i}."}]} for i in range(n)]
    ann = tmp / f"{name}.json"
    ann.write_text(json.dumps(recs))
    return ann


@pytest.fixture
def data(tmp_path):
    return {"a": llava_input(tmp_path, "a", 40), "b": llava_input(tmp_path, "b", 30),
            "root": tmp_path / "media", "out": tmp_path / "out", "tmp": tmp_path}


def run(data, which="a", out=None, **kw):
    kw.setdefault("shard_size", 8)
    kw.setdefault("progress", False)
    return convert("llava", str(data[which]), str(out or data["out"]),
                   media_root=str(data["root"]), **kw)


def cli_args(data, which):
    return ["convert", "--format", "llava", "--input", str(data[which]), "--media-root",
            str(data["root"]), "--output", str(data["out"]), "--shard-size", "8", "--no-progress"]


def check_folder(out, prefix):
    """Every record of every shard comes from one input; stats describe the files on disk."""
    ids = [s.id for s in iter_shards(str(out))]
    assert ids and all(i.startswith(prefix + "-") for i in ids), sorted(set(ids))[:5]
    run_stats = json.loads((out / "_stats.json").read_text())
    assert run_stats["written"] == len(ids) == len(set(ids))
    for tar in sorted(out.glob("*.tar")):
        st = json.loads((out / f"{tar.stem}_stats.json").read_text())
        with tarfile.open(tar) as tf:
            names = tf.getnames()
        assert st["bytes"] == os.path.getsize(tar), tar.name
        assert st["members"] == len(names), tar.name
        assert st["written"] == sum(n.endswith(".json") for n in names), tar.name
    assert not (out / LOCK_FILE).exists()


# A conversion in a child process that stops inside its first shard until the parent says "go"
# (or kills it): the parent then acts while the child really holds the folder.
CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import mmit.data.convert as cm
    ann, root, out, gate = sys.argv[1:5]
    real = cm.build_shard
    def build_shard(task):
        if task.index == 1:
            Path(gate, "ready").write_text(str(os.getpid()))
            while not Path(gate, "go").exists():
                time.sleep(0.02)
        return real(task)
    cm.build_shard = build_shard
    sys.exit(cm.main(["--format", "llava", "--input", ann, "--media-root", root,
                      "--output", out, "--shard-size", "8", "--no-progress"]))
""")


def start_child(data, which, gate):
    gate.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", CHILD, str(data[which]), str(data["root"]),
                             str(data["out"]), str(gate)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_ready(proc, gate, timeout=60):
    t0 = time.monotonic()
    while not (gate / "ready").exists():
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode()[-3000:])
        assert time.monotonic() - t0 < timeout, "child never reached its hook"
        time.sleep(0.02)


@pytest.mark.parametrize("second", ["b", "a"], ids=["other-input", "same-input"])
def test_second_conversion_into_a_busy_folder_fails_naming_the_holder(data, capsys, second):
    gate = data["tmp"] / "gate"
    child = start_child(data, "a", gate)
    wait_ready(child, gate)  # the child is inside shard 1: shard 0 is written, the lock held
    holder = json.loads((data["out"] / LOCK_FILE).read_text())
    assert holder["pid"] == child.pid and holder["host"] == socket.gethostname()
    before = {p.name: p.stat().st_mtime_ns for p in data["out"].iterdir()}

    t0 = time.monotonic()
    assert main(cli_args(data, second)) == 2
    assert time.monotonic() - t0 < 5, "the second run must fail at once"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmit convert: error: ")
    assert f"pid {child.pid}" in err and socket.gethostname() in err
    assert holder["since"] in err and LOCK_FILE in err
    assert {p.name: p.stat().st_mtime_ns for p in data["out"].iterdir()} == before

    (gate / "go").write_text("")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()[-3000:]
    assert b"40 records: 40 written" in out
    check_folder(data["out"], "a")


def test_racing_conversions_exactly_one_wins(data, monkeypatch):
    """Four threads start at one barrier with different inputs; the winner waits inside its first
    shard until every other thread has returned, so all of them really overlap."""
    inputs = ["a", "b"] + [llava_input(data["tmp"], n, 20).stem for n in ("c", "d")]
    data.update({"c": data["tmp"] / "c.json", "d": data["tmp"] / "d.json"})
    barrier, lost = threading.Barrier(len(inputs)), threading.Semaphore(0)
    results, real = {}, convert_mod.build_shard

    def build_shard(task):
        if task.index == 0:
            for _ in range(len(inputs) - 1):
                assert lost.acquire(timeout=30), "the other conversions did not fail"
        return real(task)

    def go(which):
        barrier.wait()
        try:
            results[which] = run(data, which)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[which] = e
            lost.release()

    available_formats()  # load the reader registry first: its lazy loading is not thread-safe
    monkeypatch.setattr(convert_mod, "build_shard", build_shard)
    threads = [threading.Thread(target=go, args=(w,)) for w in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [w for w, r in results.items() if isinstance(r, dict)]
    assert len(winners) == 1, results
    for w, r in results.items():
        if w != winners[0]:
            assert isinstance(r, OutputLockedError), r
            assert f"pid {os.getpid()}" in str(r)
    check_folder(data["out"], winners[0])


def test_lock_is_held_during_the_run_and_released_after(data, monkeypatch):
    seen, real = [], convert_mod.build_shard

    def build_shard(task):
        seen.append(json.loads((data["out"] / LOCK_FILE).read_text()))
        return real(task)

    monkeypatch.setattr(convert_mod, "build_shard", build_shard)
    run(data)
    assert len(seen) == 5 and all(h["pid"] == os.getpid() for h in seen)
    assert len({h["token"] for h in seen}) == 1
    check_folder(data["out"], "a")


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_lock_released_on_exceptions(data, monkeypatch, exc):
    def build_shard(task):
        raise exc("boom")

    monkeypatch.setattr(convert_mod, "build_shard", build_shard)
    with pytest.raises(exc):
        run(data)
    assert not (data["out"] / LOCK_FILE).exists()
    monkeypatch.undo()
    check_folder(Path(run(data)["output"]), "a")


def test_sigterm_releases_the_lock_and_the_run_resumes(data):
    gate = data["tmp"] / "gate"
    child = start_child(data, "a", gate)
    wait_ready(child, gate)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM
    assert not (data["out"] / LOCK_FILE).exists()
    assert run(data)["reused_shards"] == 1
    check_folder(data["out"], "a")


def test_lock_of_a_killed_run_is_taken_over_and_the_run_resumes(data, caplog):
    gate = data["tmp"] / "gate"
    child = start_child(data, "a", gate)
    wait_ready(child, gate)
    child.kill()  # SIGKILL: the lock stays behind
    child.communicate(timeout=60)
    stale = json.loads((data["out"] / LOCK_FILE).read_text())
    assert stale["pid"] == child.pid and not pid_alive(child.pid, stale["proc_start"])
    with caplog.at_level(logging.WARNING, logger="mmit.data.convert"):
        again = run(data)
    assert again["reused_shards"] == 1
    assert any("stale lock" in r.getMessage() and f"pid {child.pid}" in r.getMessage()
               for r in caplog.records)
    check_folder(data["out"], "a")
    ref = run(data, out=data["tmp"] / "ref")
    for tar in sorted(data["out"].glob("*.tar")):
        assert tar.read_bytes() == (Path(ref["output"]) / tar.name).read_bytes()


def test_stale_lock_of_a_dead_pid_or_a_reused_pid_is_taken_over(data, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    data["out"].mkdir()
    lock = data["out"] / LOCK_FILE
    for pid, start in ((dead.pid, None), (os.getpid(), "1")):  # "1": not this process's start
        lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "proc_start": start,
                                    "since": "2020-01-01T00:00:00Z", "token": "x"}))
        with caplog.at_level(logging.WARNING, logger="mmit.data.convert"):
            run(data)
        assert "taking over the stale lock" in caplog.text and f"pid {pid} " in caplog.text
        caplog.clear()
        check_folder(data["out"], "a")


def test_zombie_counts_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    t0 = time.monotonic()
    while pid_alive(proc.pid) and time.monotonic() - t0 < 30:  # exits, not yet reaped
        time.sleep(0.02)
    assert not pid_alive(proc.pid)
    proc.wait()


def test_lock_from_another_host_is_refused(data, capsys):
    data["out"].mkdir()
    lock = data["out"] / LOCK_FILE
    content = json.dumps({"pid": 1, "host": "gpu-node-7.example", "proc_start": None,
                          "since": "2026-01-02T03:04:05Z", "token": "t"})
    lock.write_text(content)
    with pytest.raises(OutputLockedError, match="gpu-node-7.example") as e:
        run(data)
    msg = str(e.value)
    assert "pid 1" in msg and "2026-01-02T03:04:05Z" in msg and "never taken over" in msg
    assert f"delete {lock}" in msg
    assert main(cli_args(data, "a")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpu-node-7.example" in err
    assert lock.read_text() == content and sorted(os.listdir(data["out"])) == [LOCK_FILE]


def test_unreadable_lock_is_refused(data):
    data["out"].mkdir()
    (data["out"] / LOCK_FILE).write_text("not json")
    with pytest.raises(OutputLockedError, match="cannot be read"):
        run(data)


def test_lock_in_this_process_is_not_reentrant(tmp_path):
    with OutputLock(str(tmp_path)):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            OutputLock(str(tmp_path)).acquire()
    assert not (tmp_path / LOCK_FILE).exists()


def test_per_shard_stats_match_the_files(data):
    for workers in (1, 2):
        out = data["tmp"] / f"w{workers}"
        run(data, out=out, workers=workers)
        check_folder(out, "a")


def sample(i):
    return Sample(id=f"s{i}", turns=[Turn("user", "<image>\nq?"), Turn("assistant", "a.")],
                  media=[Media("image", data=jpeg(i), ext="jpg")], source="t")


@pytest.mark.parametrize("first_to_finish", ["older", "newer"])
def test_shard_writer_refuses_a_file_another_writer_touched(tmp_path, first_to_finish):
    """Two writers of one shard (what two conversions into one folder did): the one whose file
    was replaced fails instead of writing stats for bytes it did not write."""
    tar = tmp_path / "00000.tar"
    older = ShardWriter(tar)
    for i in range(3):
        older.write(sample(i), i)
    newer = ShardWriter(tar)
    newer.write(sample(7), 7)
    if first_to_finish == "newer":
        stats = newer.finish()
    with pytest.raises(RuntimeError, match="another"):
        older.finish()
    older.abort()
    if first_to_finish == "older":
        stats = newer.finish()
    assert stats["bytes"] == os.path.getsize(tar) and stats["written"] == 1
    assert stats["members"] == 2 == len(tarfile.open(tar).getnames())
    assert [s.id for s in iter_shards(str(tar))] == ["s7"]
    assert json.loads((tmp_path / "00000_stats.json").read_text()) == stats
    assert not list(tmp_path.glob("*.tmp"))

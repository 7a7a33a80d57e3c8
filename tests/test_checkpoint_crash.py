"""Checkpoint pruning never leaves a half-deleted checkpoint that looks complete, and a run killed
(SIGKILL) while writing a checkpoint and while pruning one resumes to bit-identical weights."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmit.training.checkpoint as ck
from conftest import tiny_run_config
from mmit.training.checkpoint import (STATE_FILE, latest_checkpoint, list_checkpoints,
                                      prune_checkpoints)
from mmit.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def fake_checkpoint(run: Path, step: int) -> Path:
    """A complete step checkpoint as save_checkpoint lays it out (marker written last)."""
    d = run / "checkpoints" / f"step-{step:07d}"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.yaml").write_text("family: llava\n")
    save_file({"w": torch.full((2,), float(step))}, str(d / "model.safetensors"))
    (d / "tokenizer" / "tokenizer.json").write_text("{}")
    torch.save({"state": {}}, d / "optimizer.pt")
    (d / "rng.json").write_text("{}")
    (d / STATE_FILE).write_text(json.dumps({"step": step}))
    return d


def test_interrupted_pruning_leaves_a_folder_that_is_skipped(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for step in (2, 4, 6):
        fake_checkpoint(run, step)
    real_rmtree = shutil.rmtree

    def dying_rmtree(path, *args, **kwargs):
        """Deletes two files of the folder (in whatever order the OS lists them, the marker last
        if it is still there), then dies like a killed process would."""
        names = sorted(os.listdir(path), key=lambda n: n == STATE_FILE)
        for name in names[:2]:
            p = Path(path) / name
            real_rmtree(p) if p.is_dir() else p.unlink()
        raise KeyboardInterrupt("killed while pruning")

    monkeypatch.setattr(ck.shutil, "rmtree", dying_rmtree)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(run, keep=1)
    monkeypatch.setattr(ck.shutil, "rmtree", real_rmtree)
    half = run / "checkpoints" / "step-0000002"
    assert half.is_dir() and len(os.listdir(half)) > 0, "the simulated kill left files behind"
    assert not (half / STATE_FILE).exists(), "the completion marker must be deleted first"
    assert [s for s, _ in list_checkpoints(run)] == [4, 6]
    # the next pruning deletes the leftover along with the checkpoints it prunes
    prune_checkpoints(run, keep=1)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000006"]


def test_latest_checkpoint_skips_incomplete_folders(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run, 2)
    newest = fake_checkpoint(run, 4)
    (newest / STATE_FILE).unlink()  # half-deleted (or never finished): not a checkpoint
    assert latest_checkpoint(run).name == "step-0000002"
    fake_checkpoint(run, 6)
    (run / "checkpoints" / "step-0000006" / "model.safetensors").unlink()
    assert latest_checkpoint(run).name == "step-0000002"
    (run / "checkpoints" / "step-0000008.tmp").mkdir()  # a checkpoint being written
    assert [s for s, _ in list_checkpoints(run)] == [2]


# -- a real training run killed with SIGKILL -------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, shutil, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import tiny_run_config
    import mmit.training.checkpoint as ck
    from mmit.training.trainer import train

    base, hook, resume = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"

    def park():  # tell the parent where we are, then wait for its SIGKILL
        (base / "ready").write_text(hook)
        time.sleep(600)

    if hook == "write":  # kill while step 4 is being written (its weights are on disk already)
        real_save_weights = ck.save_weights
        def save_weights(model, path, *a, **k):
            real_save_weights(model, path, *a, **k)
            if Path(path).parent.name == "step-0000004.tmp":
                park()
        ck.save_weights = save_weights
    elif hook == "prune":  # kill while step 2 is being pruned, after one of its files is gone
        real_rmtree = shutil.rmtree
        def rmtree(path, *a, **k):
            if Path(path).name == "step-0000002":
                (Path(path) / "model.safetensors").unlink()
                park()
            return real_rmtree(path, *a, **k)
        shutil.rmtree = rmtree
    cfg = tiny_run_config(base, max_steps=6, save_steps=2, save_total_limit=1)
    cfg.train.resume = resume
    train(cfg)
""").format(tests=str(ROOT / "tests"))


def start(base: Path, hook: str, resume: bool) -> subprocess.Popen:
    base.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", CHILD, str(base), hook, "1" if resume else "0"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when_parked(proc: subprocess.Popen, base: Path, timeout: float = 120) -> None:
    ready = base / "ready"
    t0 = time.monotonic()
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child ended (rc {proc.returncode}) before its hook: "
                                 f"{proc.stderr.read().decode()[-3000:]}")
        assert time.monotonic() - t0 < timeout, "child never reached its hook"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: nothing runs in the child after this
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()
    ready.unlink()


def test_kill_during_checkpoint_write_and_pruning_resumes_bit_identical(tmp_path):
    """Child 1 is killed while writing step 4; child 2 resumes from step 2 and is killed while
    pruning step 2; the last resume (in this process) must give the uninterrupted run's weights.
    The uninterrupted reference trains here while child 1 starts up (2 cores)."""
    ref, crash = tmp_path / "ref", tmp_path / "crash"
    first = start(crash, "write", resume=False)
    reference = train(tiny_run_config(ref, max_steps=6, save_steps=2, save_total_limit=1))
    kill_when_parked(first, crash)
    ckpts = crash / "run" / "checkpoints"
    assert [s for s, _ in list_checkpoints(crash / "run")] == [2]
    assert (ckpts / "step-0000004.tmp" / "model.safetensors").exists()  # killed mid-write

    second = start(crash, "prune", resume=True)  # resumes at step 2, dies pruning step 2
    kill_when_parked(second, crash)
    assert (ckpts / "step-0000002").is_dir() and not (ckpts / "step-0000002" / STATE_FILE).exists()
    assert [s for s, _ in list_checkpoints(crash / "run")] == [4]
    assert latest_checkpoint(crash / "run").name == "step-0000004"

    cfg = tiny_run_config(crash, max_steps=6, save_steps=2, save_total_limit=1)
    cfg.train.resume = True
    resumed = train(cfg)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000006"]
    a = load_file(str(reference / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run: {different[:5]}"

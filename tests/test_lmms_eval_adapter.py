"""``lmms-eval --model mmit --model_args checkpoint=DIR`` on a local task scores what ``mmit eval`` scores.

The real lmms-eval CLI runs in a subprocess on the local tasks of ``tests/lmms_eval_tasks/`` (a JSONL
dataset read with ``datasets``' ``json`` builder, no hub): greedy generation scored by exact match,
and multiple choice by loglikelihood. ``mmit eval`` scores the same images and questions (a LLaVA
JSON file) with ``generate`` / ``rank``; scores, predictions and per-option log-likelihoods agree.
The model is found through lmms-eval's entry-point group ``lmms_eval.models``: when the installed
mmit does not declare it yet, a throw-away ``*.dist-info`` on ``PYTHONPATH`` declares it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from conftest import ROOT, tiny_run_config  # noqa: E402

TASKS_DIR = ROOT / "tests" / "lmms_eval_tasks"
N = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny trained LLaVA checkpoint and N procedural 'color' items as JSONL (lmms-eval) and LLaVA JSON (mmit)."""
    from mmit.evaluation.procedural import TASKS
    from mmit.evaluation.procedural.build import task_samples
    from mmit.training.trainer import train

    root = tmp_path_factory.mktemp("lmms")
    run = train(tiny_run_config(root, stage="full", max_steps=3, lr=3e-3))
    data = root / "data"
    data.mkdir()
    t = TASKS["color"]
    rows, llava = [], []
    for s in task_samples(t, N, seed=3):
        (data / f"{s.id}.png").write_bytes(s.media[0].data)
        q = t.templates[0]
        rows.append({"id": s.id, "image": f"{s.id}.png", "question": q, "answer": s.meta["label"], "options": list(t.options)})
        llava.append({"id": s.id, "image": f"{s.id}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": s.meta["label"]}]})
    (data / "mmit_local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "llava.json").write_text(json.dumps(llava))
    return root, run, data, list(t.options)


def _mmit_eval(root: Path, run: Path, data: Path, options):
    from mmit.evaluation.runner import run_suite

    src = f"data: {{format: llava, path: {data / 'llava.json'}, media_root: {data}}}\n"
    (root / "gen.yaml").write_text("name: gen\nsplit: held-out\n" + src +
                                   "output: generate\ngenerate: {max_new_tokens: 4}\nmetrics: [exact-match]\n")
    (root / "mc.yaml").write_text("name: mc\nsplit: held-out\n" + src + "output: rank\nrank: {reduction: sum, candidates: "
                                  + json.dumps(options) + "}\nmetrics: [mc-accuracy]\n")
    (root / "suite.yaml").write_text("name: s\ntasks: [gen.yaml, mc.yaml]\nbatch_size: 1\n")
    res = run_suite(str(root / "suite.yaml"), str(run), str(root / "mmit_out"), progress=False, plot=False)
    preds = [json.loads(l) for l in (root / "mmit_out" / "predictions.jsonl").read_text().splitlines()]
    return res, preds


def _lmms_env(root: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(root / "hf_datasets"), "HF_HOME": str(root / "hf_home")}
    if not any(ep.name == "mmit" for ep in entry_points(group="lmms_eval.models")):
        info = root / "ep" / "mmit_lmms_entry-0.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmit-lmms-entry\nVersion: 0\n")
        (info / "entry_points.txt").write_text("[lmms_eval.models]\nmmit = mmit.integrations.lmms:manifest\n")
        env["PYTHONPATH"] = os.pathsep.join([str(root / "ep"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def scored(setup):
    root, run, data, options = setup
    return _mmit_eval(root, run, data, options)


def _lmms_eval(root: Path, data: Path, out: Path, model: str, model_args: str, tasks: str) -> dict:
    """Run the lmms-eval CLI in ``data``; returns its ``results`` section."""
    cli = Path(sys.executable).with_name("lmms-eval")
    cmd = [str(cli), "--model", model, "--model_args", model_args, "--tasks", tasks, "--include_path", str(TASKS_DIR),
           "--batch_size", "1", "--output_path", str(out), "--log_samples"]
    p = subprocess.run(cmd, cwd=data, env=_lmms_env(root), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(next(out.rglob("*_results.json")).read_text())["results"]


def _generated(out: Path, task: str) -> list:
    rows = sorted((json.loads(l) for l in next(out.rglob(f"*_samples_{task}.jsonl")).read_text().splitlines()),
                  key=lambda r: r["doc_id"])
    texts = []
    for r in rows:
        got = r["filtered_resps"]
        while isinstance(got, list):  # one response per request (a str, or a list holding it)
            got = got[0]
        texts.append(got.strip())
    return texts


@pytest.mark.slow
def test_lmms_eval_scores_equal_mmit_eval(setup, scored):
    root, run, data, options = setup
    res, preds = scored
    out = root / "lmms_out"
    results = _lmms_eval(root, data, out, "mmit", f"checkpoint={run}", "mmit_local_gen,mmit_local_mc")
    assert results["mmit_local_gen"]["exact_match,none"] == pytest.approx(res["tasks"]["gen"]["exact-match"])
    assert results["mmit_local_mc"]["acc,none"] == pytest.approx(res["tasks"]["mc"]["mc-accuracy"])

    # the same answers item by item: generated text, and every option's log-likelihood
    gen = _generated(out, "mmit_local_gen")
    mc = sorted((json.loads(l) for l in next(out.rglob("*_samples_mmit_local_mc.jsonl")).read_text().splitlines()),
                key=lambda r: r["doc_id"])
    ours_gen = [r for r in preds if r["task"] == "gen"]
    ours_mc = [r for r in preds if r["task"] == "mc"]
    assert len(gen) == len(mc) == len(ours_gen) == len(ours_mc) == N
    assert gen == [r["prediction"] for r in ours_gen]
    for theirs, ours in zip(mc, ours_mc):
        losses = [float(r[0]) for r in theirs["filtered_resps"]]  # lmms-eval models return -log-likelihood
        assert losses == pytest.approx([-s for s in ours["scores"]], abs=1e-4)
        assert len(set(ours["scores"])) > 1  # the options are told apart, so agreeing is not trivial
    assert len({tuple(r["scores"]) for r in ours_mc}) > 1  # the image matters


def test_adapter_rejects_bad_arguments_and_visuals(setup):
    from mmit.integrations.lmms import MmitLMM, media_of

    _, run, data, _ = setup
    with pytest.raises(ValueError, match="checkpoint=DIR"):
        MmitLMM()
    with pytest.raises(TypeError, match="unknown model_args pretrained"):
        MmitLMM(checkpoint=str(run), pretrained="x")
    with pytest.raises(ValueError, match="reduction 'max'"):
        MmitLMM(checkpoint=str(run), reduction="max")
    m = media_of([["a.png"], "b.mp4", "c.wav"], "here")
    assert m == {"image": ["a.png"], "video": ["b.mp4"], "audio": ["c.wav"]}
    with pytest.raises(ValueError, match="here: mmit takes PIL images"):
        media_of([{"array": [0.0], "sampling_rate": 16000}], "here")
    assert MmitLMM.generate_kwargs({"until": "\n", "max_new_tokens": 3, "temperature": 0}) == (3, {}, ["\n"])
    assert MmitLMM.generate_kwargs({"temperature": 0.5, "top_p": 0.9})[1] == {"do_sample": True, "temperature": 0.5,
                                                                               "top_p": 0.9}


@pytest.mark.slow
def test_hf_llava_export_scores_the_same_under_llava_hf(setup, scored):
    """The export route: `mmit export --format hf-llava`, then lmms-eval's own `llava_hf` model
    (generation; its loglikelihood path calls the processor without images, which transformers 5
    refuses). lmms-eval's llava_hf module imports decord at the top: skipped without it."""
    pytest.importorskip("decord")
    from mmit.cli import main as cli

    root, run, data, _ = setup
    res, preds = scored
    hf = root / "hf"
    assert cli(["export", "--checkpoint", str(run), "--format", "hf-llava", "--output", str(hf)]) == 0
    out = root / "llava_hf_out"
    results = _lmms_eval(root, data, out, "llava_hf", f"pretrained={hf},device=cpu,device_map=cpu,dtype=float32",
                         "mmit_local_gen")
    assert results["mmit_local_gen"]["exact_match,none"] == pytest.approx(res["tasks"]["gen"]["exact-match"])
    assert _generated(out, "mmit_local_gen") == [r["prediction"] for r in preds if r["task"] == "gen"]

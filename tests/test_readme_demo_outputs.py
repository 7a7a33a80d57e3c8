"""Every output the README's demo table lists is one `make demo` produces (issue 15: the README listed
``run/checkpoints/step-*/`` while the demo saved none). The demo itself takes minutes, so this runs
the demo's training config for a few steps with the same checkpoint and logging settings scaled down,
and checks each listed ``run/...`` path exists."""

import re
from pathlib import Path

import yaml

from mmit.config.schema import load_config
from mmit.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "llava" / "tiny_demo_heldout.yaml"


def _listed_outputs() -> list:
    text = (ROOT / "README.md").read_text()
    start = text.index("Outputs, all under `demo_out/`")
    table = text[start:text.index("\n\n", text.index("|", start))]
    paths = []
    for row in table.splitlines():
        if row.startswith("|") and not row.startswith("|---") and "path" not in row.split("|")[1]:
            paths += re.findall(r"`([^`]+)`", row.split("|")[1])
    return paths


def test_readme_lists_the_demo_outputs_it_should():
    paths = _listed_outputs()
    assert "run/checkpoints/step-*/" in paths and "run/final/" in paths and "eval/results.json" in paths


def test_every_listed_run_output_is_produced(tmp_path, monkeypatch):
    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    t = demo["train"]
    assert 0 < t["save_steps"] < t["max_steps"], "the demo saves no step checkpoint"
    # the demo's own settings, scaled to 4 steps: a checkpoint at step 2 as at step 1500 of 3000
    from conftest import DEMO_IMAGES, DEMO_JSON

    cfg = load_config(str(DEMO_CONFIG), [
        f"--data.format=llava", f"--data.path={DEMO_JSON}", f"--data.media_root={DEMO_IMAGES}",
        f"--train.output_dir={tmp_path / 'run'}", "--train.max_steps=4",
        f"--train.save_steps={4 * t['save_steps'] // t['max_steps']}", "--train.logging_steps=1",
        "--train.batch_size=4", "--train.progress_bar=false"])
    run = train(cfg)
    for p in _listed_outputs():
        if not p.startswith("run/"):
            continue
        rel = p[len("run/"):].rstrip("/")
        hits = list(run.glob(rel)) if "*" in rel else [run / rel]
        assert hits and all(h.exists() for h in hits), f"README lists {p}, the demo's run does not write it"

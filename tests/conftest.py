"""Shared fixtures. Tiny models are built once per test session into a private cache folder
(``MMIT_CACHE``), so tests never touch the user's cache and never download anything."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_JSON = ROOT / "demo_data" / "llava_demo.json"
DEMO_IMAGES = ROOT / "demo_data" / "images"
SHARED_SAMPLES = ROOT.parent / "shared" / "samples"

os.environ.setdefault("MMIT_CACHE", tempfile.mkdtemp(prefix="mmit-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def demo_json() -> Path:
    return DEMO_JSON


@pytest.fixture(scope="session")
def demo_images() -> Path:
    return DEMO_IMAGES


def tiny_run_config(tmp_path: Path, **train_overrides):
    """A RunConfig for a few fast CPU steps on the bundled demo records (read as LLaVA JSON)."""
    from mmit.config.schema import RunConfig

    cfg = RunConfig()
    cfg.model.vision_tower.name = "tiny-clip-vit"
    cfg.model.llm.name_or_path = "tiny-llama"
    cfg.model.template = "vicuna-v1"
    cfg.model.max_length = 160
    cfg.data.format = "llava"
    cfg.data.path = str(DEMO_JSON)
    cfg.data.media_root = str(DEMO_IMAGES)
    t = cfg.train
    t.stage, t.output_dir, t.seed, t.batch_size, t.max_steps = "finetune", str(tmp_path / "run"), 0, 4, 6
    t.lr, t.warmup_ratio, t.logging_steps, t.report_to, t.progress_bar = 1e-3, 0.2, 1, "none", False
    for k, v in train_overrides.items():
        setattr(t, k, v)
    return cfg

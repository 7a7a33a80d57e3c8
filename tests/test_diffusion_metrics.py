"""CLIP editing metrics (InstructPix2Pix compute_metrics.py) on the tiny open_clip tower."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from mmit.data.stats import SkipCounter
from mmit.families.instructpix2pix.config import InstructPix2PixConfig
from mmit.families.instructpix2pix.metrics import ClipSimilarity, load_eval_items, sweep, to_unit_tensor, write_report
from mmit.families.instructpix2pix.triples import edit_sample, procedural_samples


@pytest.fixture(scope="module")
def clip():
    from mmit.models.encoders.tiny import ensure_tiny_tower

    return ClipSimilarity(f"local-dir:{ensure_tiny_tower('tiny-open-clip-vit')}")


def test_clip_similarities_agree_with_a_direct_open_clip_computation(clip):
    import open_clip

    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    x0 = torch.cat([to_unit_tensor(im) for im in ims[:2]])
    x1 = torch.cat([to_unit_tensor(im) for im in ims[2:]])
    t0, t1 = ["a red square", "a blue circle"], ["a green square", "a blue circle on the left"]
    sim_0, sim_1, sim_dir, sim_img = clip(x0, x1, t0, t1)
    # direct: open_clip's own preprocessing transform (PIL -> resize/crop -> normalise) and plain dot products
    _, _, preprocess = open_clip.create_model_and_transforms(clip.model_name)
    with torch.no_grad():
        e = clip.model.encode_image(torch.stack([preprocess(im) for im in ims])).double()
        t = clip.model.encode_text(clip.tokenizer(t0 + t1)).double()
    e, t = e / e.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)

    def cos(a, b):
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    torch.testing.assert_close(sim_0.double(), cos(e[:2], t[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(sim_1.double(), cos(e[2:], t[2:]), atol=1e-5, rtol=0)
    torch.testing.assert_close(sim_dir.double(), cos(e[2:] - e[:2], t[2:] - t[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(sim_img.double(), cos(e[:2], e[2:]), atol=1e-5, rtol=0)
    same = clip(x0, x0, t0, t0)[3]
    torch.testing.assert_close(same, torch.ones(2), atol=1e-5, rtol=0)


def test_sweep_rows_are_means_over_items_and_the_report_is_written(clip, tmp_path):
    from mmit.families.instructpix2pix.model import build_model
    from mmit.families.instructpix2pix.pipeline import edit_image

    model, tok = build_model(InstructPix2PixConfig(pretrained_model_name_or_path="tiny-sd", resolution=32))
    model.eval()
    stats = SkipCounter()
    samples = list(procedural_samples(2, size=32, seed=0))
    samples.insert(1, edit_sample("nocap", samples[0].media[0].data, "make it blue", samples[0].media[1].data))
    items = load_eval_items(samples, 5, stats)
    assert [it["id"] for it in items] == ["edit-000000", "edit-000001"] and stats.as_dict() == {"no-captions": 1}
    rows = sweep(model, tok, items, clip, text_scales=(7.5,), image_scales=(1.0, 2.0), steps=2, seed=10)
    assert [(r["guidance_scale"], r["image_guidance_scale"], r["n"]) for r in rows] == [(7.5, 1.0, 2), (7.5, 2.0, 2)]
    direct = []
    for k, it in enumerate(items):
        out = edit_image(model, tok, it["image"], it["prompt"], 2, 7.5, 2.0, seed=10 + k)
        sims = clip(to_unit_tensor(it["image"]), to_unit_tensor(out), [it["caption_0"]], [it["caption_1"]])
        direct.append([float(s[0]) for s in sims])
    mean = np.mean(direct, axis=0)
    got = [rows[1][k] for k in ("sim_0", "sim_1", "sim_direction", "sim_image")]
    np.testing.assert_allclose(got, mean, atol=1e-6)
    paths = write_report(rows, str(tmp_path / "m"))
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [float(r["image_guidance_scale"]) for r in table] == [1.0, 2.0]
    assert abs(float(table[1]["sim_direction"]) - rows[1]["sim_direction"]) < 1e-9
    assert len(open(paths["md"]).read().strip().splitlines()) == 4
    assert Image.open(paths["png"]).size[0] > 100

"""The generate and rank scorers on a tiny (random-weight) LLaVA-style model."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmit.data.sample import Turn
from mmit.evaluation.config import GenerateConfig, RankConfig
from mmit.evaluation.data import EvalItem
from mmit.evaluation.scorers import best_index, candidate_ids, generate_batch, rank_batch, rank_full_forward


@pytest.fixture(scope="module")
def tiny():
    from mmit.families.llava.config import LlavaConfig
    from mmit.families.llava.model import build_llava

    torch.manual_seed(0)
    mc = LlavaConfig()
    mc.vision_tower.name, mc.llm.name_or_path, mc.template = "tiny-clip-vit", "tiny-llama", "vicuna-v1"
    model, tok = build_llava(mc)
    return model.eval(), tok


def proc(model, tok, template="vicuna-v1"):
    """The LLaVA processor of ``model`` with ``template``."""
    from mmit.families.llava.processor import LlavaProcessor

    return LlavaProcessor(tok, template, model.vision_tower.image_processor, model.num_image_tokens,
                          model.image_token_id, 2048)


def _items():
    red = Image.new("RGB", (40, 30), (200, 10, 10))
    blue = Image.new("RGB", (32, 32), (10, 10, 200))
    return [
        EvalItem("t", "a", 0, [Turn("user", "<image>\nWhat colour is it?")], [red], "red",
                 ["red", "green", "dark blue", "a yellow thing"]),
        EvalItem("t", "b", 0, [Turn("user", "<image>\nHow many shapes are there in this picture, roughly?")], [blue],
                 "2", ["1", "2", "three"]),
        EvalItem("t", "c", 1, [Turn("user", "Is the sky blue? Answer yes or no.")], [], "yes", ["yes", "no"]),
    ]


@pytest.mark.parametrize("template", ["vicuna-v1", "llama-2"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("eot", [False, True])
def test_rank_matches_one_full_forward_per_candidate(tiny, template, reduction, eot):
    model, tok = tiny
    cfg = RankConfig(reduction=reduction, score_end_of_turn=eot)
    items = _items()
    p = proc(model, tok, template)
    got = rank_batch(model, p, items, cfg)
    for it, scores in zip(items, got):
        want = rank_full_forward(model, p, it, cfg)
        assert len(scores) == len(it.candidates)
        assert scores == pytest.approx(want, abs=1e-4)
    # chunked candidate rows (a private copy of the prefix cache per chunk) give the same scores
    chunked = rank_batch(model, p, items, RankConfig(reduction=reduction, score_end_of_turn=eot,
                                                                 max_rows=2))
    assert [s for ss in chunked for s in ss] == pytest.approx([s for ss in got for s in ss], abs=1e-5)
    # the batch result does not depend on the batch's other members (padding is masked)
    alone = rank_batch(model, p, items[1:2], cfg)[0]
    assert alone == pytest.approx(got[1], abs=1e-4)


def test_rank_encodes_media_and_prompt_once_per_batch(tiny, monkeypatch):
    model, tok = tiny
    calls = {"embed": 0, "llm": 0}
    real_embed, real_llm_forward = model.embed, model.llm.forward

    def embed(*a, **k):
        calls["embed"] += 1
        return real_embed(*a, **k)

    def llm_forward(*a, **k):
        calls["llm"] += 1
        return real_llm_forward(*a, **k)

    monkeypatch.setattr(model, "embed", embed)
    monkeypatch.setattr(model.llm, "forward", llm_forward)
    items = _items()
    rank_batch(model, proc(model, tok), items, RankConfig())
    # one prefix pass (media + prompts of all 3 samples) + one pass for all 9 candidates
    assert calls == {"embed": 1, "llm": 2}
    calls.update(embed=0, llm=0)
    one_token = [EvalItem("t", "x", 0, items[0].turns, items[0].images, "red", ["red", "green"])]
    rank_batch(model, proc(model, tok), one_token, RankConfig())
    assert calls == {"embed": 1, "llm": 1}  # single-token candidates need no second pass


def test_candidate_ids_in_context(tiny):
    model, tok = tiny
    it = _items()[0]
    with_eot = candidate_ids(proc(model, tok), it, "dark blue", True)
    without = candidate_ids(proc(model, tok), it, "dark blue", False)
    assert with_eot[:-1] == without and with_eot[-1] == tok.eos_token_id
    assert tok.decode(without).strip() == "dark blue"


def test_best_index_ties_go_to_lowest_index():
    assert best_index([-1.0, -0.5, -0.5]) == 1
    assert best_index([0.0, 0.0]) == 0
    assert best_index([-3.0, -2.0, -1.0]) == 2


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_matches_inference_generate(tiny, num_beams):
    from mmit.inference import generate

    model, tok = tiny
    items = _items()
    p = proc(model, tok)
    got = generate_batch(model, p, items, GenerateConfig(max_new_tokens=6, num_beams=num_beams))
    for it, (text, ids) in zip(items, got):
        img = it.images[0] if it.images else None
        want = generate(model, p, it.turns[0].content, img, 6, num_beams=num_beams)
        assert ids == want.token_ids
        assert text == want.text

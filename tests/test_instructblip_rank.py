"""The evaluation ``rank`` scorer (vocabulary ranking, InstructBLIP §2.5) on a tiny InstructBLIP."""

import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES
from mmit.data.sample import Turn

scorers = pytest.importorskip("mmit.evaluation.scorers")


@pytest.fixture(scope="module")
def model_and_tok():
    from mmit.config.schema import ModelConfig, QFormerConfig, VisionTowerConfig
    from mmit.models.instructblip import build_instructblip

    cfg = ModelConfig()
    cfg.vision_tower = VisionTowerConfig(name="tiny-eva-vit", select_layer=-1, select_feature="cls_patch",
                                         image_aspect_ratio="crop")
    cfg.qformer = QFormerConfig(num_query_tokens=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, vocab_size=600, max_position_embeddings=128, tokenizer="tiny-bert")
    cfg.llm.name_or_path = "tiny-llama"
    torch.manual_seed(0)
    model, tok = build_instructblip(cfg)
    return model.eval(), tok


def _items():
    from mmit.evaluation.data import EvalItem

    dog = Image.open(DEMO_IMAGES / "dog_running.jpg").convert("RGB")
    statue = Image.open(DEMO_IMAGES / "statue_of_liberty.jpg").convert("RGB")
    return [EvalItem("t", "a", 0, [Turn("user", "<image>\nWhat color is the dog?")], [dog],
                     candidates=["brown", "white and red", "blue"]),
            EvalItem("t", "b", 0, [Turn("user", "<image>\nIs this a statue? Answer yes or no.")], [statue],
                     candidates=["yes", "no"])]


def test_rank_scores_match_a_full_forward_per_candidate(model_and_tok):
    from mmit.evaluation.config import RankConfig
    from mmit.templates.labels import encode_prompt

    model, tok = model_and_tok
    items = _items()
    got = scorers.rank_batch(model, tok, "vicuna-v1", items, RankConfig(reduction="sum"))
    assert [len(s) for s in got] == [3, 2]
    for item, scores in zip(items, got):
        raw = encode_prompt(tok, item.turns, "vicuna-v1")
        prompt = scorers.prompt_ids(model, tok, "vicuna-v1", item)
        # the instruction the Q-Former reads: the prompt text, as InstructBlipLM derives it
        text = tok.decode([t for t in raw if t != model.image_token_id], skip_special_tokens=True).strip()
        q = model.qformer_tokenizer([text], return_tensors="pt")
        px = model.vision_tower.image_processor(item.images)
        for cand, score in zip(item.candidates, scores):
            cont = scorers.candidate_ids(tok, "vicuna-v1", item, cand, False, raw)
            ids = torch.tensor([prompt + cont])
            with torch.no_grad():
                logp = model(ids, pixel_values=px, qformer_input_ids=q["input_ids"],
                             qformer_attention_mask=q["attention_mask"]).logits[0].log_softmax(-1)
            want = sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(cont))
            assert abs(score - want) < 1e-3, (cand, score, want)
    # the best candidate is a real choice among distinct scores
    assert len(set(round(s, 4) for s in got[0])) == 3

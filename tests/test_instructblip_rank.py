"""The evaluation ``rank`` scorer (vocabulary ranking, InstructBLIP §2.5) on a tiny InstructBLIP, with a
decoder-only (Llama) and an encoder-decoder (Flan-T5) LLM: the prefix runs once (``prefill``), the
candidates over it (``extend``), and the scores equal one full forward pass per candidate."""

import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES
from mmit.data.sample import Turn

scorers = pytest.importorskip("mmit.evaluation.scorers")

QUESTIONS = ["What color is the dog?", "Is this a statue? Answer yes or no."]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-flan-t5"])
def model_and_processor(request):
    from mmit.config.components import LLMConfig, QFormerConfig, VisionTowerConfig
    from mmit.config.schema import RunConfig
    from mmit.families import get_family
    from mmit.families.instructblip.config import InstructBlipConfig

    cfg = RunConfig.for_family("instructblip")
    cfg.model = InstructBlipConfig(
        vision_tower=VisionTowerConfig(name="tiny-eva-vit", select_layer=-1, select_feature="cls_patch",
                                       image_aspect_ratio="crop"),
        qformer=QFormerConfig(num_query_tokens=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, vocab_size=600, max_position_embeddings=128, tokenizer="tiny-bert"),
        llm=LLMConfig(name_or_path=request.param))
    fam = get_family("instructblip")
    torch.manual_seed(0)
    model, tok = fam.build(cfg)
    assert model.is_encoder_decoder == (request.param == "tiny-flan-t5")
    return model.eval(), fam.processor(cfg, model, tok)


def _items():
    from mmit.evaluation.data import EvalItem

    dog = Image.open(DEMO_IMAGES / "dog_running.jpg").convert("RGB")
    statue = Image.open(DEMO_IMAGES / "statue_of_liberty.jpg").convert("RGB")
    return [EvalItem("t", "a", 0, [Turn("user", f"<image>\n{QUESTIONS[0]}")], [dog],
                     candidates=["brown", "white and red", "blue"]),
            EvalItem("t", "b", 0, [Turn("user", f"<image>\n{QUESTIONS[1]}")], [statue],
                     candidates=["yes", "no"])]


def _direct_scores(model, processor, question, item, cfg):
    """Log-likelihood of each candidate from one plain ``model(...)`` forward per candidate, the
    InstructBLIP layout built here by hand (no processor): ``[M x <image>][instruction]`` for the LLM,
    the instruction alone for the Q-Former."""
    tok, M = processor.tokenizer, model.num_query_tokens
    prompt = [model.image_token_id] * M + tok(question)["input_ids"]
    q = model.qformer_tokenizer([question], return_tensors="pt")
    px = model.vision_tower.image_processor(item.images)
    out = []
    for cand in item.candidates:
        cont = tok(cand, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if cfg.score_end_of_turn else [])
        assert scorers.candidate_ids(processor, item, cand, cfg.score_end_of_turn) == cont
        with torch.no_grad():
            if model.is_encoder_decoder:  # the encoder reads the prompt, the decoder the candidate (T5 shifts labels)
                logits = model(torch.tensor([prompt]), pixel_values=px, qformer_input_ids=q["input_ids"],
                               qformer_attention_mask=q["attention_mask"], labels=torch.tensor([cont])).logits[0]
                first = 0
            else:
                logits = model(torch.tensor([prompt + cont]), pixel_values=px, qformer_input_ids=q["input_ids"],
                               qformer_attention_mask=q["attention_mask"]).logits[0]
                first = len(prompt) - 1
        logp = logits.float().log_softmax(-1)
        s = sum(float(logp[first + j, t]) for j, t in enumerate(cont))
        out.append(s / len(cont) if cfg.reduction == "mean" else s)
    return out


@pytest.mark.parametrize("reduction,max_rows,end", [("sum", 512, False), ("mean", 2, True)])
def test_rank_scores_match_a_full_forward_per_candidate(model_and_processor, reduction, max_rows, end):
    from mmit.evaluation.config import RankConfig

    model, processor = model_and_processor
    cfg = RankConfig(reduction=reduction, max_rows=max_rows, score_end_of_turn=end)
    items = _items()
    # the prompt is the InstructBLIP layout (no chat template), the Q-Former reads the bare instruction
    prompt = processor.prompt(items[0].turns, items[0].images)
    assert prompt["input_ids"].tolist() == ([model.image_token_id] * model.num_query_tokens
                                            + processor.tokenizer(QUESTIONS[0])["input_ids"])
    assert prompt["qformer_input_ids"].tolist() == model.qformer_tokenizer(QUESTIONS[0])["input_ids"]
    memo = {}
    got = scorers.rank_batch(model, processor, items, cfg, memo)  # two prompts of different lengths: left padding
    assert [len(s) for s in got] == [3, 2] and len(memo) == 5
    for question, item, scores in zip(QUESTIONS, items, got):
        want = _direct_scores(model, processor, question, item, cfg)
        assert all(abs(a - b) < 1e-3 for a, b in zip(scores, want)), (item.sample_id, scores, want)
        if model.is_encoder_decoder:  # the reference scorer runs prefill(all_logits=True): decoder-only
            with pytest.raises(ValueError, match="decoder-only"):
                scorers.rank_full_forward(model, processor, item, cfg)
        else:
            ref = scorers.rank_full_forward(model, processor, item, cfg)
            assert all(abs(a - b) < 1e-3 for a, b in zip(scores, ref)), (item.sample_id, scores, ref)
    # one sample alone scores the same as in the padded batch
    alone = scorers.rank_batch(model, processor, items[1:], cfg)[0]
    assert all(abs(a - b) < 1e-3 for a, b in zip(alone, got[1]))
    # the best candidate is a real choice among distinct scores
    assert len(set(round(s, 4) for s in got[0])) == 3


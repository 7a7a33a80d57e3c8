"""LlavaLM: splicing at <image> positions, mixed batches, errors, generation with a KV cache."""

import pytest
import torch

from mmit.families.llava.config import LlavaConfig
from mmit.families.llava.model import build_llava


@pytest.fixture(scope="module")
def model_tok():
    cfg = LlavaConfig()
    cfg.vision_tower.name, cfg.llm.name_or_path, cfg.template = "tiny-clip-vit", "tiny-llama", "vicuna-v1"
    torch.manual_seed(0)
    model, tok = build_llava(cfg)
    return model.eval(), tok


def _ids(model, n_images, text_len=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 200, (text_len,), generator=g).tolist()
    for _ in range(n_images):
        ids = ids[:2] + [model.image_token_id] * model.num_image_tokens + ids[2:]
    return ids


def test_image_features_land_exactly_at_image_positions(model_tok):
    model, _ = model_tok
    ids = torch.tensor([_ids(model, 1)])
    px = torch.randn(1, 3, model.vision_tower.image_size, model.vision_tower.image_size)
    emb = model.embed(ids, px)
    feats = model.encode_images(px)[0]
    pos = (ids[0] == model.image_token_id).nonzero().flatten()
    assert torch.equal(emb[0, pos], feats)
    text_pos = (ids[0] != model.image_token_id).nonzero().flatten()
    assert torch.equal(emb[0, text_pos], model.llm.get_input_embeddings()(ids[0, text_pos]))


def test_mixed_batch_of_two_images_text_only_and_one_image(model_tok):
    model, _ = model_tok
    rows = [_ids(model, 2, seed=1), _ids(model, 0, seed=2), _ids(model, 1, seed=3)]
    T = max(map(len, rows))
    ids = torch.full((3, T), 3)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    S = model.vision_tower.image_size
    px = torch.randn(3, 3, S, S)
    feats = model.encode_images(px)
    emb = model.embed(ids, px)
    # sample 0 owns images 0 and 1, sample 2 owns image 2, in order of appearance
    p0 = (ids[0] == model.image_token_id).nonzero().flatten()
    assert torch.equal(emb[0, p0], torch.cat([feats[0], feats[1]]))
    p2 = (ids[2] == model.image_token_id).nonzero().flatten()
    assert torch.equal(emb[2, p2], feats[2])
    out = model(ids, mask, labels=ids.masked_fill(mask == 0, -100), pixel_values=px)
    assert out.logits.shape == (3, T, model.llm.config.vocab_size) and torch.isfinite(out.loss)


def test_image_count_mismatch_raises(model_tok):
    model, _ = model_tok
    ids = torch.tensor([_ids(model, 2)])
    S = model.vision_tower.image_size
    with pytest.raises(ValueError, match="image"):
        model.embed(ids, torch.randn(1, 3, S, S))


def test_generate_with_kv_cache_matches_recomputing_everything(model_tok):
    model, _ = model_tok
    ids = torch.tensor([_ids(model, 1)])
    S = model.vision_tower.image_size
    px = torch.randn(1, 3, S, S)
    new = model.generate(ids, torch.ones_like(ids), px, max_new_tokens=6, do_sample=False, use_cache=True,
                         eos_token_id=None)
    assert new.shape == (1, 6)
    seq = ids[0].tolist()
    for _ in range(6):  # greedy without a cache: one full forward per token
        with torch.no_grad():
            logits = model(torch.tensor([seq]), pixel_values=px).logits
        seq.append(int(logits[0, -1].argmax()))
    assert new[0].tolist() == seq[len(ids[0]):]


def test_gradient_checkpointing_flag_reaches_llm_and_tower():
    cfg = LlavaConfig()
    cfg.vision_tower.name, cfg.llm.name_or_path = "tiny-clip-vit", "tiny-llama"
    model, _ = build_llava(cfg)
    assert not model.llm.is_activation_checkpointing
    model.gradient_checkpointing_enable()
    assert model.llm.is_activation_checkpointing
    assert model.vision_tower.vision_model.is_activation_checkpointing

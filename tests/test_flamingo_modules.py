"""Flamingo building blocks against open_flamingo 2.0.1: the Perceiver resampler, the gated
cross-attention block (masking modes, cached media), state-dict conversion, and wrapping an HF Llama."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmit.models import cross_attention as xa
from mmit.models.connectors import perceiver as pr
from mmit.models.connectors.perceiver import PerceiverResampler
from mmit.models.cross_attention import (DECODER_LAYERS_ATTR, CrossAttentionLayer, GatedCrossAttentionBlock,
                                         add_cross_attention, clear, condition, decoder_layers_attr)

of_helpers = pytest.importorskip("open_flamingo.src.helpers")

PERCEIVER = dict(depth=2, heads=4, dim_head=8, num_latents=5, max_num_media=3, max_num_frames=2)


def test_perceiver_matches_open_flamingo_and_state_dict_round_trips():
    torch.manual_seed(0)
    ref = of_helpers.PerceiverResampler(dim=32, **PERCEIVER).eval()
    ours = PerceiverResampler(32, **PERCEIVER).eval()
    ref_sd = ref.state_dict()
    pr.load_openflamingo_state_dict(ours, ref_sd)
    x = torch.randn(2, 3, 2, 7, 32)
    with torch.no_grad():
        want, got = ref(x), ours(x)
        assert got.shape == (2, 3, 5, 32)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        # fewer media / frames than the embeddings hold slice them, as OpenFlamingo does
        torch.testing.assert_close(ours(x[:, :2, :1]), ref(x[:, :2, :1]), atol=1e-6, rtol=0)
    back = pr.openflamingo_state_dict(ours)
    assert list(back) and set(back) == set(ref_sd)
    for k, v in ref_sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # the attention is transformers' Idefics module; to_kv is split into its k_proj / v_proj
    from transformers.models.idefics.perceiver import IdeficsPerceiverAttention
    assert isinstance(ours.layers[0].attn, IdeficsPerceiverAttention)
    assert torch.equal(ours.layers[1].attn.v_proj.weight, ref_sd["layers.1.0.to_kv.weight"][32:])


def test_perceiver_state_dict_errors_and_input_checks():
    ours = PerceiverResampler(32, **PERCEIVER)
    sd = pr.openflamingo_state_dict(ours)
    with pytest.raises(KeyError, match=r"missing keys \['media_time_embs'\].*unexpected keys \['perceiver.media"):
        pr.load_openflamingo_state_dict(ours, {("perceiver." + k if k == "media_time_embs" else k): v
                                               for k, v in sd.items()})
    plain = PerceiverResampler(32, depth=2, heads=4, dim_head=8, num_latents=5)  # no time / frame embeddings
    with pytest.raises(KeyError, match="unexpected keys.*frame_embs"):
        pr.load_openflamingo_state_dict(plain, sd)
    assert plain(torch.randn(1, 4, 3, 2, 32)).shape == (1, 4, 5, 32)
    with pytest.raises(ValueError, match="max_num_frames=2"):
        ours(torch.randn(1, 1, 3, 2, 32))
    with pytest.raises(ValueError, match=r"\[B,T,F,v,32\]"):
        ours(torch.randn(1, 3, 2, 32))


# B=3 rows of T=8 tokens: text before the first image, several images, no image at all.
LOCATIONS = torch.tensor([
    [0, 0, 1, 0, 0, 1, 0, 0],
    [1, 0, 0, 1, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
], dtype=torch.bool)


def _block_pair(only_immediate: bool):
    kw = dict(dim=32, dim_visual=24, dim_head=8, heads=4, ff_mult=2, only_attend_immediate_media=only_immediate)
    ref = of_helpers.GatedCrossAttentionBlock(**kw)
    with torch.no_grad():
        ref.attn_gate.fill_(0.7)
        ref.ff_gate.fill_(-0.4)
    ours = GatedCrossAttentionBlock(**kw)
    xa.load_openflamingo_state_dict(ours, ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("only_immediate", [True, False])
def test_gated_block_matches_open_flamingo(only_immediate):
    torch.manual_seed(1)
    ref, ours = _block_pair(only_immediate)
    x, media = torch.randn(3, 8, 32), torch.randn(3, 3, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, media, LOCATIONS), ref(x, media, LOCATIONS), atol=1e-6, rtol=0)
        # decoding over a cache: 2 new tokens after the prompt's media locations
        new = torch.randn(3, 2, 32)
        got = ours(new, media, LOCATIONS, use_cached_media=True)
        torch.testing.assert_close(got, ref(new, media, LOCATIONS, use_cached_media=True), atol=1e-6, rtol=0)
        a = ours.attn(x, media, LOCATIONS)
    if only_immediate:  # text before any image (and rows without images) reads nothing
        assert a[0, :2].abs().max() == 0 and a[2].abs().max() == 0 and a[0, 2:].abs().min() > 0
    else:  # OpenFlamingo quirk kept: text before any image gets a uniform average of all media
        assert a[0, :2].abs().max() > 0
    sd = xa.openflamingo_state_dict(ours)
    assert set(sd) == set(ref.state_dict()) and all(torch.equal(sd[k], v) for k, v in ref.state_dict().items())


def test_gated_block_is_identity_at_init_and_checks_shapes():
    block = GatedCrossAttentionBlock(32, 24, dim_head=8, heads=4)
    assert block.attn_gate.item() == 0 and block.ff_gate.item() == 0
    x = torch.randn(3, 8, 32)
    assert torch.equal(block(x, torch.randn(3, 2, 5, 24), LOCATIONS), x)
    with pytest.raises(ValueError, match=r"media_locations must be a BoolTensor \[3,8\].*got \(3, 5\)"):
        block(x, torch.randn(3, 2, 5, 24), LOCATIONS[:, :5])
    with pytest.raises(KeyError, match="missing keys.*ff_gate"):
        xa.load_openflamingo_state_dict(block, {k: v for k, v in block.state_dict().items() if k != "ff_gate"})


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=100, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_wrapped_llama_is_unchanged_at_init_and_needs_conditioning():
    llm = _tiny_llama()
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        bare = llm(input_ids=ids, attention_mask=mask).logits
    names_before = set(llm.state_dict())
    blocks = add_cross_attention(llm, dim_visual=24, every_n=2, dim_head=8, heads=4)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == 1 and blocks[0].layer_idx == 1
    layers = llm.model.layers
    assert all(isinstance(layer, CrossAttentionLayer) for layer in layers)
    assert layers[0].block is None and layers[1].block is blocks[0]
    # blocks are not submodules of the llm; decoder layers move under `decoder_layer`
    assert set(llm.state_dict()) == {n.replace("layers.0.", "layers.0.decoder_layer.")
                                     .replace("layers.1.", "layers.1.decoder_layer.") for n in names_before}
    assert layers[1].self_attn is layers[1].decoder_layer.self_attn  # attributes reach the wrapped layer
    with pytest.raises(RuntimeError, match="not conditioned"):
        llm(input_ids=ids, attention_mask=mask)
    loc = torch.zeros(2, 9, dtype=torch.bool)
    loc[0, 3] = loc[0, 6] = loc[1, 1] = True
    media = torch.randn(2, 2, 5, 24)
    condition(llm, media, loc)
    with torch.no_grad():
        torch.testing.assert_close(llm(input_ids=ids, attention_mask=mask).logits, bare, atol=0, rtol=0)
        blocks[0].attn_gate.fill_(1.0)  # an open gate changes the logits: the block really runs
        assert not torch.allclose(llm(input_ids=ids, attention_mask=mask).logits, bare)
        # KV-cache decoding with use_cached_media == the last position of a full forward
        nxt = torch.randint(0, 100, (2, 1))
        condition(llm, media, torch.cat([loc, torch.zeros(2, 1, dtype=torch.bool)], 1))
        full = llm(input_ids=torch.cat([ids, nxt], 1), attention_mask=torch.ones(2, 10)).logits[:, -1]
        condition(llm, media, loc)
        out = llm(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        condition(llm, media, loc, use_cached_media=True)
        step = llm(input_ids=nxt, attention_mask=torch.ones(2, 10), cache=cache, use_cache=True).logits
        torch.testing.assert_close(step[:, -1], full, atol=1e-5, rtol=1e-5)
    clear(llm)
    assert layers[1].media is None
    with pytest.raises(RuntimeError, match="not conditioned"):
        llm(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="already"):
        add_cross_attention(llm, dim_visual=24, every_n=1)


def test_decoder_layers_attr_table_override_and_errors():
    llm = _tiny_llama()
    assert decoder_layers_attr(llm) == "model.layers" == DECODER_LAYERS_ATTR["llama"]
    assert decoder_layers_attr(llm, override="model.layers") == "model.layers"
    with pytest.raises(ValueError, match="no nn.ModuleList.*model.blocks"):
        decoder_layers_attr(llm, override="model.blocks")

    class Mystery(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="Mystery") as err:
        decoder_layers_attr(Mystery())
    assert all(f"{k}: {v}" in str(err.value) for k, v in DECODER_LAYERS_ATTR.items())
    assert decoder_layers_attr(Mystery(), override="stack") == "stack"
    with pytest.raises(ValueError, match="every_n"):
        add_cross_attention(llm, 24, every_n=0)


def _tiny(kind):
    import transformers as tf

    torch.manual_seed(0)
    if kind == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               vocab_size=100, max_position_embeddings=64)
        return tf.GPTNeoXForCausalLM(cfg).eval()
    if kind == "opt":
        cfg = tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
                           max_position_embeddings=64, word_embed_proj_dim=64)
        return tf.OPTForCausalLM(cfg).eval()
    return _tiny_llama()


@pytest.mark.parametrize("kind,attr", [("gpt_neox", "gpt_neox.layers"), ("opt", "model.decoder.layers"),
                                       ("llama", "model.layers")])
def test_other_decoders_are_found_wrapped_and_read_the_media(kind, attr):
    """Any HF causal LM: layers found by attribute, identity at zero gates, media read when gates open."""
    from mmit.models.cross_attention import add_cross_attention, condition, decoder_layers_attr

    llm = _tiny(kind)
    ids = torch.tensor([[5, 1, 7, 8, 1, 9, 10]])
    with torch.no_grad():
        bare = llm(ids).logits
    assert decoder_layers_attr(llm) == attr
    blocks = add_cross_attention(llm, dim_visual=32, every_n=1, dim_head=8, heads=2)
    media = torch.randn(1, 2, 3, 32)
    condition(llm, media, ids == 1)
    with torch.no_grad():
        assert torch.equal(llm(ids).logits, bare)
        for b in blocks:
            b.attn_gate.fill_(0.5)
        opened = llm(ids).logits
    assert float((opened[:, 2:] - bare[:, 2:]).abs().max()) > 1e-4  # after the first <image>
    assert torch.allclose(opened[:, :1], bare[:, :1], atol=1e-6)     # before it: no media to read

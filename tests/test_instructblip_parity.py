"""Parity with transformers: a tiny random ``InstructBlipForConditionalGeneration`` (Llama and T5 LLMs)
imported with ``mmit import --format hf-instructblip`` gives the same logits (bit for bit) and the same
greedy tokens through ``mmit generate``; ``mmit export`` writes it back unchanged."""

import json

import pytest
import torch
from PIL import Image

from conftest import DEMO_IMAGES
from mmit.cli import main as cli

PROMPT = "What is unusual about this image?"
IMAGE = DEMO_IMAGES / "extreme_ironing.jpg"  # 570x380: BlipImageProcessor squashes it
M = 4


def _hf_folder(path, llm: str):
    """Save a random tiny InstructBLIP (2-block EVA tower, 2-layer Q-Former with cross-attention every
    layer, Llama or T5 LLM) and its processor with ``save_pretrained``."""
    from transformers import (InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor,
                              LlamaConfig, T5Config)

    from mmit.families.instructblip.export import processor_tokenizer
    from mmit.models.encoders.eva import blip_image_processor
    from mmit.models.tiny_seq2seq import build_tiny_bert_tokenizer, build_tiny_t5_tokenizer
    from mmit.models.tokenizer import build_tiny_tokenizer

    qtok = build_tiny_bert_tokenizer()
    if llm == "llama":
        tok = build_tiny_tokenizer()
        text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    else:
        tok = build_tiny_t5_tokenizer()
        text = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                        num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.pad_token_id)
    cfg = InstructBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                            vocab_size=len(qtok), max_position_embeddings=128, cross_attention_frequency=1),
        text_config=text.to_dict(), num_query_tokens=M, image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    hf = InstructBlipForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # transformers' init leaves the tower ~constant (std 1e-10): randomise everything
        for name, p in hf.named_parameters():
            if p.ndim >= 2 or name.endswith("bias"):
                p.normal_(0, 0.1)
    hf.save_pretrained(path)
    InstructBlipProcessor(image_processor=blip_image_processor(32), tokenizer=processor_tokenizer(tok), qformer_tokenizer=qtok,
                          num_query_tokens=M).save_pretrained(path)
    return path


def _hf_inputs(folder):
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    hf = InstructBlipForConditionalGeneration.from_pretrained(folder).eval()
    processor = InstructBlipProcessor.from_pretrained(folder)
    inputs = processor(images=Image.open(IMAGE).convert("RGB"), text=PROMPT, return_tensors="pt")
    return hf, processor, inputs


def _hf_greedy(hf, processor, inputs, n=10):
    with torch.no_grad():
        gen = hf.generate(**inputs, max_new_tokens=n, do_sample=False)
    new = gen[0, 1:] if hf.config.text_config.is_encoder_decoder else gen[0, inputs["input_ids"].shape[1]:]
    new = new.tolist()
    while new and new[-1] == processor.tokenizer.pad_token_id:
        new.pop()
    return new


def _mmit_greedy(ckpt, capsys, n=10):
    assert cli(["generate", "--checkpoint", str(ckpt), "--image", str(IMAGE), "--prompt", PROMPT,
                "--max-new-tokens", str(n), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _logits(model, batch, dec):
    pixels, q_ids, q_mask = model.visual_inputs(batch)
    kw = {"decoder_input_ids": dec} if dec is not None else {}
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=pixels,
                     qformer_input_ids=q_ids, qformer_attention_mask=q_mask, **kw).logits


@pytest.fixture(scope="module", params=["llama", "t5"])
def imported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"ib-{request.param}")
    src = _hf_folder(tmp / "hf", request.param)
    assert cli(["import", "--format", "hf-instructblip", "--input", str(src), "--output", str(tmp / "mmit")]) == 0
    return request.param, src, tmp / "mmit"


def test_import_gives_transformers_logits_and_greedy_tokens(imported, capsys):
    from mmit.data.sample import Turn
    from mmit.inference import load_for_inference

    kind, src, ckpt = imported
    hf, processor, inputs = _hf_inputs(src)
    model, pre, cfg = load_for_inference(ckpt)
    assert cfg.family == "instructblip" and model.is_encoder_decoder == (kind == "t5")
    image = Image.open(IMAGE).convert("RGB")
    item = pre.prompt([Turn("user", f"<image>\n{PROMPT}")], [image])
    assert item["input_ids"].tolist() == pre.encode("p", PROMPT, None, [("image", [image])])["input_ids"].tolist()
    batch = pre.collate_prompts([item])
    # Same token ids for the LLM and the Q-Former, same pixels as InstructBlipProcessor.
    assert batch.input_ids.tolist() == inputs["input_ids"].tolist()
    assert batch.attention_mask.tolist() == inputs["attention_mask"].tolist()
    assert batch.extra["qformer_input_ids"].tolist() == inputs["qformer_input_ids"].tolist()
    assert batch.extra["qformer_attention_mask"].tolist() == inputs["qformer_attention_mask"].tolist()
    assert torch.allclose(batch.media["image"].values, inputs["pixel_values"], atol=1e-6)
    dec = torch.tensor([[hf.config.text_config.decoder_start_token_id, 5, 9, 11]]) if kind == "t5" else None
    ours = _logits(model, batch, dec)
    with torch.no_grad():
        ref = hf(**inputs, **({"decoder_input_ids": dec} if dec is not None else {})).logits
    assert ours.shape == ref.shape
    diff = float((ours - ref).abs().max())
    with capsys.disabled():
        print(f"\n[parity {kind}] max |logits - transformers| = {diff:.3e}")
    assert diff == 0.0
    assert float(ref.std()) > 1e-2  # the comparison is not between two near-constant tensors

    # The inference contract gives transformers' logits too. Over the whole sequence (decoder-only:
    # prefill(all_logits=True); seq2seq: extend over the cached encoder states) bit for bit; the
    # next-token logits of a plain prefill (the last position only / a one-token decoder: other matmul
    # shapes) to float rounding.
    with torch.no_grad():
        prefix = model.prefill(batch)
        assert torch.allclose(prefix.logits[0], ref[0, 0 if kind == "t5" else -1], rtol=0, atol=1e-5)
        if kind == "t5":
            cont = dec[:, 1:]
            assert torch.equal(model.extend(prefix, torch.tensor([0]), cont, torch.ones_like(cont))[0], ref[0, 1:])
            with pytest.raises(ValueError, match="decoder-only"):
                model.prefill(batch, all_logits=True)
        else:
            assert torch.equal(model.prefill(batch, all_logits=True).logits, ref)

    want = _hf_greedy(hf, processor, inputs)
    got = _mmit_greedy(ckpt, capsys)
    assert len(want) > 0 and got["token_ids"] == want
    assert got["text"] == pre.decode(want) == processor.tokenizer.decode(want, skip_special_tokens=True).strip()


def test_export_round_trips(imported, tmp_path, capsys):
    from transformers import InstructBlipForConditionalGeneration

    kind, src, ckpt = imported
    out = tmp_path / "exported"
    assert cli(["export", "--checkpoint", str(ckpt), "--format", "hf-instructblip", "--output", str(out)]) == 0
    a = InstructBlipForConditionalGeneration.from_pretrained(src).state_dict()
    b = InstructBlipForConditionalGeneration.from_pretrained(out).state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    hf, processor, inputs = _hf_inputs(out)
    assert _hf_greedy(hf, processor, inputs) == _mmit_greedy(ckpt, capsys)["token_ids"]
    back = tmp_path / "back"
    assert cli(["import", "--format", "hf-instructblip", "--input", str(out), "--output", str(back)]) == 0
    assert _mmit_greedy(back, capsys) == _mmit_greedy(ckpt, capsys)

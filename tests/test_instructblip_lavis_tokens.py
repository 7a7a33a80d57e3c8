"""LAVIS's InstructBLIP-Vicuna tokens (``blip2_vicuna_instruct.py``): bos and unk ``</s>``, ``[PAD]`` added,
so every instruction starts with ``</s>`` (issue 11, point 6)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoTokenizer

from conftest import ROOT
from ib_common import _model_cfg
from mmit.families.instructblip.model import apply_lavis_vicuna_tokens, build_instructblip, uses_lavis_vicuna_tokens

SPM = ROOT / "tests" / "golden" / "tiny_spm"


class _LLM(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.emb = torch.nn.Embedding(n, 4)
        self.generation_config = type("G", (), {})()

    def get_input_embeddings(self):
        return self.emb

    def resize_token_embeddings(self, n):
        self.emb = torch.nn.Embedding(n, 4)


@pytest.mark.parametrize("legacy", [True, False])
def test_instructions_start_with_eos_as_lavis(legacy, tmp_path):
    if not (SPM / "tokenizer.model").is_file():
        pytest.skip("tests/golden/tiny_spm is missing")
    tok = AutoTokenizer.from_pretrained(str(SPM), legacy=legacy)
    plain = tok("What is it?")["input_ids"]
    assert plain[0] == tok.bos_token_id == 1
    llm = _LLM(len(tok))
    apply_lavis_vicuna_tokens(llm, tok)
    apply_lavis_vicuna_tokens(llm, tok)  # idempotent
    ids = tok("What is it?")["input_ids"]
    assert ids == [tok.eos_token_id] + plain[1:]  # LlamaTokenizer(bos_token='</s>') puts </s> first
    assert (tok.bos_token, tok.unk_token, tok.pad_token) == ("</s>", "</s>", "[PAD]")
    assert tok.pad_token_id == len(tok) - 1 and llm.emb.weight.shape[0] == len(tok)
    tok.save_pretrained(str(tmp_path))  # checkpoints keep it
    assert AutoTokenizer.from_pretrained(str(tmp_path))("What is it?")["input_ids"] == ids


def test_on_for_vicuna_by_default_and_settable():
    cfg = _model_cfg()
    assert not uses_lavis_vicuna_tokens(cfg)
    assert uses_lavis_vicuna_tokens(dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, name_or_path="lmsys/vicuna-7b-v1.1")))
    assert uses_lavis_vicuna_tokens(dataclasses.replace(cfg, lavis_vicuna_tokens=True))
    model, tok = build_instructblip(dataclasses.replace(cfg, lavis_vicuna_tokens=True))
    assert tok.bos_token == "</s>" and tok.pad_token == "[PAD]"
    assert model.llm.get_input_embeddings().weight.shape[0] == len(tok)

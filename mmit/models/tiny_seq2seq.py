"""Tiny members for the InstructBLIP family that need no download: ``tiny-flan-t5`` (an encoder-decoder
LLM, Flan-T5 architecture, arXiv 2210.11416) and ``tiny-bert`` (a BERT-base-shaped Q-Former source
and its WordPiece tokenizer, arXiv 1810.04805).

As in :mod:`mmit.models.llm`, each is built from a config with a fixed seed, saved with
``save_pretrained`` into ``$MMIT_CACHE/tiny/<name>`` and then loaded back by path through the same
``from_pretrained`` call as a hub checkpoint.

* ``tiny-flan-t5``: T5 v1.1 / Flan-T5 layout (gated-GELU FFN, untied head), 2 encoder + 2 decoder
  layers, width 64. Its tokenizer is the project's tiny byte-level BPE with a post-processor that
  appends ``</s>``, as T5's tokenizer does; ``decoder_start_token_id`` is the pad id (T5's convention).
* ``tiny-bert``: ``BertModel`` (2 layers, width 64) plus a ``BertTokenizerFast`` whose WordPiece
  vocabulary (lower-cased, ``[CLS] ... [SEP]``) is trained on the bundled corpus.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Callable

import torch

from mmit.models.cache import build_dir_once, mmit_cache_dir
from mmit.registry import Registry

#: Tiny seq2seq LLM builders: name -> function(save_dir).
TINY_SEQ2SEQ: Registry[Callable[[str], None]] = Registry("tiny seq2seq LLM")
#: Tiny BERT builders (Q-Former init source and tokenizer): name -> function(save_dir).
TINY_BERTS: Registry[Callable[[str], None]] = Registry("tiny BERT")

_VERSION = 3


def _corpus() -> str:
    return resources.files("mmit.models").joinpath("tiny_assets/corpus.txt").read_text("utf-8")


def build_tiny_t5_tokenizer():
    """The tiny byte-level BPE (:func:`mmit.models.tokenizer.build_tiny_tokenizer`) with T5's
    post-processing: ``tokenizer(text)`` appends ``</s>``; no bos."""
    from tokenizers import processors

    from mmit.models.tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    eos = tok.eos_token
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tok.eos_token_id)])
    tok.bos_token = None
    return tok


def build_tiny_bert_tokenizer(vocab_size: int = 600):
    """A lower-casing WordPiece ``BertTokenizerFast`` trained on the bundled corpus (``[PAD]`` id 0,
    ``[UNK] [CLS] [SEP] [MASK]``, then ``[DEC]`` as LAVIS adds for BLIP-2); ``tokenizer(text)`` gives
    ``[CLS] text [SEP]``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(_corpus().splitlines(), trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=special, show_progress=False, min_frequency=1))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]", do_lower_case=True,
                             model_max_length=512, clean_up_tokenization_spaces=False)


@TINY_SEQ2SEQ.register("tiny-flan-t5")
def _tiny_flan_t5(save_dir: str) -> None:
    """Flan-T5-shaped encoder-decoder: 2+2 layers, d_model 64, 4 heads, gated-GELU d_ff 128 (~0.2 M params)."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = build_tiny_t5_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                   num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id, dropout_rate=0.0,
                   initializer_factor=0.3)  # transformers' T5 init gives an untied head logits of ~30
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.decoder_start_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(save_dir)
    tok.save_pretrained(save_dir)


@TINY_BERTS.register("tiny-bert")
def _tiny_bert(save_dir: str) -> None:
    """``BertModel`` 2 layers, width 64, 4 heads, FFN 128, with the tiny WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    tok = build_tiny_bert_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=256, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(cfg, add_pooling_layer=False)
    model.save_pretrained(save_dir)
    tok.save_pretrained(save_dir)


def _resolve(name_or_path: str, registry: Registry) -> str:
    if name_or_path.startswith("tiny-") and not os.path.isdir(name_or_path):
        builder = registry.get(name_or_path)
        spec = {"family": "tiny-seq2seq", "name": name_or_path, "version": _VERSION}
        return str(build_dir_once(mmit_cache_dir() / "tiny" / name_or_path, lambda tmp: builder(str(tmp)), spec))
    return name_or_path


def resolve_seq2seq_path(name_or_path: str) -> str:
    """``tiny-flan-t5`` -> its built-once cache folder; other names are returned unchanged (hub id or
    folder). Unknown ``tiny-*`` names raise :class:`~mmit.registry.UnknownNameError`."""
    return _resolve(name_or_path, TINY_SEQ2SEQ)


def resolve_bert_path(name_or_path: str) -> str:
    """``tiny-bert`` -> its built-once cache folder (BertModel + tokenizer); others unchanged."""
    return _resolve(name_or_path, TINY_BERTS)

"""Language models: any HF ``AutoModelForCausalLM`` (or ``AutoModelForSeq2SeqLM``) by hub id or local
folder, plus ``tiny-*`` members.

Tiny members are built from a config with a fixed seed, saved with ``save_pretrained`` into the
mmit cache (``$MMIT_CACHE/tiny/<name>``) and then loaded back by path through exactly the same
``from_pretrained`` call as a hub model, so tests exercise the real loading code offline.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Tuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mmit.config.components import LLMConfig
from mmit.models.cache import build_dir_once, mmit_cache_dir
from mmit.models.tokenizer import build_tiny_tokenizer, ensure_image_token
from mmit.registry import Registry

log = logging.getLogger(__name__)

#: Tiny LLM builders: name -> function(save_dir) that writes a model + tokenizer folder.
TINY_LLMS: Registry[Callable[[str], None]] = Registry("tiny LLM")


def _save_tiny(config, save_dir: str, seed: int) -> None:
    tok = build_tiny_tokenizer()
    config.vocab_size = len(tok)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(save_dir)
    tok.save_pretrained(save_dir)


def _tiny_llama_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)


@TINY_LLMS.register("tiny-llama")
def _tiny_llama(save_dir: str) -> None:
    """Llama-style decoder, 2 layers, width 128, GQA (4 query / 2 key-value heads): about 0.6 M parameters."""
    _save_tiny(_tiny_llama_config(128, 344, 2, 4, 2), save_dir, seed=0)


@TINY_LLMS.register("tiny-llama-4l")
def _tiny_llama_4l(save_dir: str) -> None:
    """Llama-style decoder, 4 layers, width 256 (about 3.6 M parameters): the demo's language model."""
    _save_tiny(_tiny_llama_config(256, 688, 4, 4, 4), save_dir, seed=0)


def _tiny_spec(name: str) -> dict:
    """What a tiny LLM folder holds: its name, a format version and the tokenizer corpus' hash, so a
    cached folder from an older build is rebuilt rather than reused."""
    import hashlib
    from importlib import resources

    corpus = resources.files("mmit.models").joinpath("tiny_assets/corpus.txt").read_bytes()
    return {"family": "llm", "name": name, "version": 1, "corpus_sha256": hashlib.sha256(corpus).hexdigest()}


def resolve_llm_path(name_or_path: str) -> str:
    """A ``tiny-*`` registry name becomes its (built-once) cache folder; anything else is returned as is
    (a hub id or a local folder for ``from_pretrained``). Unknown ``tiny-*`` names raise
    :class:`~mmit.registry.UnknownNameError`."""
    if name_or_path.startswith("tiny-") and not os.path.isdir(name_or_path):
        builder = TINY_LLMS.get(name_or_path)
        folder = mmit_cache_dir() / "tiny" / name_or_path
        return str(build_dir_once(folder, lambda tmp: builder(str(tmp)), _tiny_spec(name_or_path)))
    return name_or_path


def load_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32
             ) -> Tuple[PreTrainedModel, PreTrainedTokenizerBase, int]:
    """Load the causal LM and its tokenizer; make ``<image>`` one special token.

    ``cfg.trust_remote_code`` decides whether the folder's own code (its ``auto_map``) may run; it is
    set only from the command line (:mod:`mmit.config.remote_code`). Without it transformers loads
    its own class for the folder's ``model_type``.

    Returns ``(model, tokenizer, image_token_id)``. The embedding matrix is resized when the
    tokenizer gained a token. Raises ``OSError`` (from transformers) for a path or hub id that cannot
    be found, with the name in the message, and ``ValueError`` for a folder whose model type exists
    only as custom code while ``trust_remote_code`` is off.
    """
    path = resolve_llm_path(cfg.name_or_path)
    tok_path = resolve_llm_path(cfg.tokenizer) if cfg.tokenizer else path
    trust = bool(cfg.trust_remote_code)  # never None: transformers would prompt on a terminal
    kwargs = {"trust_remote_code": trust, "dtype": dtype}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=trust)
    n_before = len(tokenizer)
    image_token_id = ensure_image_token(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0] or len(tokenizer) != n_before:
        log.info("resizing token embeddings %d -> %d for %s", model.get_input_embeddings().weight.shape[0],
                 len(tokenizer), cfg.name_or_path)
        model.resize_token_embeddings(len(tokenizer))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, image_token_id


def is_seq2seq(name_or_path: str, trust_remote_code: bool = False) -> bool:
    """Whether ``name_or_path`` (tiny name, hub id or folder) is an encoder-decoder LM (Flan-T5).

    The folder's config is read with ``trust_remote_code`` (the caller's, never None: transformers
    would otherwise prompt on a terminal); without it an ``auto_map`` config class is not imported.
    Raises ``OSError`` for a missing folder / hub id, ``ValueError`` for a config that needs custom code."""
    from mmit.models.tiny_seq2seq import TINY_SEQ2SEQ

    if name_or_path in TINY_SEQ2SEQ:
        return True
    if name_or_path.startswith("tiny-"):
        return False
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=bool(trust_remote_code))
    return bool(getattr(config, "is_encoder_decoder", False))


def load_seq2seq_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32):
    """``AutoModelForSeq2SeqLM`` (Flan-T5) + tokenizer (``<image>`` added, embeddings resized), custom
    code only with ``cfg.trust_remote_code`` (as :func:`load_llm`). Returns
    ``(model, tokenizer, image_token_id)``; raises ``OSError`` for a missing checkpoint and
    ``ValueError`` for custom code without ``trust_remote_code``."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from mmit.models.tiny_seq2seq import resolve_seq2seq_path
    from mmit.models.tokenizer import ensure_image_token

    path = resolve_seq2seq_path(cfg.name_or_path)
    tok_path = resolve_seq2seq_path(cfg.tokenizer) if cfg.tokenizer else path
    trust = bool(cfg.trust_remote_code)
    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust)
    tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=trust)
    image_token_id = ensure_image_token(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer, image_token_id


def load_any_llm(cfg: LLMConfig, dtype: torch.dtype = torch.float32
                 ) -> Tuple[PreTrainedModel, PreTrainedTokenizerBase, int]:
    """:func:`load_seq2seq_llm` for an encoder-decoder checkpoint, else :func:`load_llm`."""
    if is_seq2seq(cfg.name_or_path, cfg.trust_remote_code):
        return load_seq2seq_llm(cfg, dtype)
    return load_llm(cfg, dtype)

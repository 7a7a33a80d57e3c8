"""Tokenizers: the tiny locally-built tokenizer and the ``<image>`` token set-up for any tokenizer.

No hub is reachable in tests, so tiny models use a byte-level BPE trained here with the
``tokenizers`` library on a small bundled corpus (``tiny_assets/corpus.txt``). Training is
deterministic, so every machine builds the same vocabulary.
"""

from __future__ import annotations

from importlib import resources

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mmit.constants import IMAGE_PLACEHOLDER

#: Special tokens of the tiny tokenizer, in id order (ids 0..6).
TINY_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER, "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(save_dir: str | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (``vocab_size`` entries incl. 256 byte symbols and the special tokens).

    The tokenizer has no post-processor: ``add_special_tokens`` adds nothing, and conversation
    templates write ``bos_token`` themselves. ``<image>`` is one special token. When ``save_dir`` is
    given the tokenizer is saved there with ``save_pretrained`` (load it back with
    ``AutoTokenizer.from_pretrained(save_dir)``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = resources.files("mmit.models").joinpath("tiny_assets/corpus.txt").read_text("utf-8")
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=TINY_SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=1)
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_PLACEHOLDER}, model_max_length=4096,
        clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER, "<|im_start|>", "<|im_end|>"]})
    if save_dir is not None:
        fast.save_pretrained(save_dir)
    return fast


def ensure_special_token(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """Make ``text`` (a placeholder of :data:`mmit.constants.MEDIA_PLACEHOLDERS`, ``<|endofchunk|>``, ...)
    one special token of ``tokenizer``, adding it if needed; returns its id. Raises ``ValueError`` if
    it still encodes to several ids. Callers that add a token must resize the LLM's embeddings."""
    if text not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [text]}, replace_extra_special_tokens=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{text} does not encode to one token: {ids}")
    return ids[0]


def ensure_image_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Make ``<image>`` a single special token of ``tokenizer`` (adding it if needed) and make sure a
    pad token exists (the unk, else eos token, as LLaVA does). Returns the ``<image>`` token id.

    Callers that add a token must resize the LLM's embeddings to ``len(tokenizer)``.
    """
    image_id = ensure_special_token(tokenizer, IMAGE_PLACEHOLDER)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return image_id

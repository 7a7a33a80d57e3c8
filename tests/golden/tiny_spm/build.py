"""Rebuild the tiny SentencePiece Llama-style tokenizer in this folder (run by hand, not by pytest).

Needs ``sentencepiece`` (not a test dependency: the tests load the converted ``tokenizer.json``)::

    python tests/golden/tiny_spm/build.py

Writes ``tokenizer.model``: a SentencePiece BPE model trained on ``corpus.txt`` (mmit's tiny corpus plus
the templates' fixed texts) with LLaMA's trainer settings (byte fallback, split digits, dummy prefix, no
whitespace normalisation, ``<unk>``/``<s>``/``</s>`` at ids 0/1/2), and ``tokenizer.json`` /
``tokenizer_config.json``: the same model as transformers' ``LlamaTokenizer`` saves it, so the tests load
it without ``sentencepiece``. ``spm_ids.json``: for a few strings, the ids the SentencePiece library itself
gives (``encode``, i.e. with the dummy prefix), which the tests compare with the converted tokenizer.
"""

import io
import json
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm

HERE = Path(__file__).parent
#: Strings whose SentencePiece ids are recorded in spm_ids.json.
PROBES = ["A chat between a curious user", "USER: two dogs running", " USER:", "\nWhat color is the dog?",
          "ASSISTANT: The dog is brown.", "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n", "There are 14 birds.",
          "two dogs running on the beach\n", "\n\n###Human: Hi?\n###Assistant: Hello.\n###"]


def main() -> None:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((HERE / "corpus.txt").read_text("utf-8").splitlines()), model_writer=buf,
        model_type="bpe", vocab_size=600, character_coverage=1.0, byte_fallback=True, split_digits=True,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, split_by_unicode_script=True, split_by_number=True,
        split_by_whitespace=True, max_sentencepiece_length=16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, shuffle_input_sentence=False, minloglevel=2)
    (HERE / "tokenizer.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    (HERE / "spm_ids.json").write_text(json.dumps({s: sp.encode(s) for s in PROBES}, indent=1) + "\n")

    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(HERE / "tokenizer.model", tmp)
        tok = LlamaTokenizer.from_pretrained(tmp, legacy=True, add_bos_token=True, add_eos_token=False)
        tok.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "tokenizer.json", HERE / "tokenizer.json")
    # As a Llama / Vicuna checkpoint's config says it (legacy is chosen by the tests when loading).
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": 4096}
    (HERE / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Conversation templates: golden renderings and label masks, and the checks that refuse bad samples.

Golden cases live in ``tests/golden/templates.json``: for each template and fixed conversation, the
exact rendered text, the token strings of the tiny tokenizer and which of them are learned. The
expected texts follow LLaVA's ``llava/conversation.py`` (plain, vicuna_v1, llava_llama_2) and ChatML.
"""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mmit.constants import IGNORE_INDEX
from mmit.data.sample import SampleError, Turn
from mmit.models.llm import resolve_llm_path
from mmit.templates import TEMPLATES, get_template
from mmit.templates.labels import LabelAlignmentError, encode_conversation, encode_prompt
from mmit.registry import UnknownNameError

GOLDEN = json.loads((Path(__file__).parent / "golden" / "templates.json").read_text())
VICUNA_SYS = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_llm_path("tiny-llama"))


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_text_and_label_mask(tok, key):
    g = GOLDEN[key]
    name = key.split("/")[0]
    turns = [Turn(r, c) for r, c in g["turns"]]
    text = tok.apply_chat_template([{"role": r, "content": c} for r, c in g["turns"]],
                                   chat_template=get_template(name).chat_template, tokenize=False)
    assert text == g["text"]
    ids, labels = encode_conversation(tok, turns, name, key)
    assert tok.convert_ids_to_tokens(ids) == g["tokens"]
    assert [int(l != IGNORE_INDEX) for l in labels] == g["learned"]
    assert all(l == i for i, l in zip(ids, labels) if l != IGNORE_INDEX)


def test_golden_texts_match_llava_formats():
    assert GOLDEN["vicuna-v1/multi-turn"]["text"] == (
        f"<s>{VICUNA_SYS} USER: <image>\nWhat color is the dog? ASSISTANT: The dog is brown.</s>"
        "USER: Is it big? ASSISTANT: No, it is small.</s>")
    assert GOLDEN["plain/single-image"]["text"] == "<s><image>The dog is brown.\n"
    assert GOLDEN["llama-2/text-only-with-system"]["text"] == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHow many legs does a dog have? [/INST] Four. </s>")
    assert GOLDEN["chatml/text-only-with-system"]["text"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow many legs does a dog have?<|im_end|>\n"
        "<|im_start|>assistant\nFour.<|im_end|>\n")


@pytest.mark.parametrize("name", ["vicuna-v1", "llama-2", "chatml", "plain"])
def test_string_and_list_content_render_identically(tok, name):
    tpl = get_template(name).chat_template
    a = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat is this?"}], chat_template=tpl,
                                tokenize=False, add_generation_prompt=True)
    b = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
                                chat_template=tpl, tokenize=False, add_generation_prompt=True)
    assert a == b


def test_generation_prompts(tok):
    turns = [Turn("user", "Hi?")]
    assert tok.decode(encode_prompt(tok, turns, "vicuna-v1")).endswith("USER: Hi? ASSISTANT:")
    assert tok.decode(encode_prompt(tok, turns, "chatml")).endswith("<|im_start|>assistant\n")
    assert tok.decode(encode_prompt(tok, turns, "llama-2")).endswith("Hi? [/INST]")
    with pytest.raises(ValueError, match="user turn"):
        encode_prompt(tok, [Turn("user", "a"), Turn("assistant", "b")], "vicuna-v1")


def test_plain_drops_instruction_text_and_takes_one_exchange(tok):
    ids, labels = encode_conversation(tok, [Turn("user", "Describe the photo.\n<image>"), Turn("assistant", "A dog.")],
                                      "plain", "p1")
    assert "Describe" not in tok.decode(ids)
    with pytest.raises(SampleError, match="at most 1") as e:
        encode_conversation(tok, [Turn("user", "<image>"), Turn("assistant", "a"), Turn("user", "b"),
                                  Turn("assistant", "c")], "plain", "p2")
    assert e.value.reason == "too-many-turns-for-template"


def test_image_positions_are_never_learned(tok):
    ids, labels = encode_conversation(tok, [Turn("user", "<image>\nq"), Turn("assistant", "a <image> b")],
                                      "vicuna-v1", "img-in-answer")
    image_id = tok.convert_tokens_to_ids("<image>")
    assert all(l == IGNORE_INDEX for i, l in zip(ids, labels) if i == image_id)
    assert sum(1 for i in ids if i == image_id) == 2


def test_misaligned_labels_raise_with_sample_id(tok, monkeypatch):
    orig = tok.apply_chat_template

    def shifted(*a, **k):  # a mask that is off by one token, as a broken tokenizer/template pair gives
        out = orig(*a, **k)
        out["assistant_masks"] = [0] + list(out["assistant_masks"][:-1])
        return out

    monkeypatch.setattr(tok, "apply_chat_template", shifted)
    with pytest.raises(LabelAlignmentError, match="sample-42") as e:
        encode_conversation(tok, [Turn("user", "q"), Turn("assistant", "The dog is brown.")], "vicuna-v1", "sample-42")
    assert e.value.reason == "label-misaligned"


def test_missing_span_raises(tok, monkeypatch):
    orig = tok.apply_chat_template

    def no_mask(*a, **k):
        out = orig(*a, **k)
        out["assistant_masks"] = [0] * len(out["input_ids"])
        return out

    monkeypatch.setattr(tok, "apply_chat_template", no_mask)
    with pytest.raises(LabelAlignmentError, match="0 learned span"):
        encode_conversation(tok, [Turn("user", "q"), Turn("assistant", "a")], "vicuna-v1", "s")


def test_no_assistant_turn_is_never_trained_on_silently(tok):
    with pytest.raises(SampleError, match="no supervised token") as e:
        encode_conversation(tok, [Turn("user", "just a question")], "vicuna-v1", "lonely")
    assert e.value.reason == "no-supervised-tokens" and "lonely" in str(e.value)


def test_unknown_template_suggests():
    with pytest.raises(UnknownNameError, match="vicuna-v1"):
        get_template("vicuna_v1")
    assert set(TEMPLATES.names()) == {"plain", "vicuna-v1", "llama-2", "chatml"}


@pytest.mark.parametrize("name", ["vicuna-v1", "llama-2", "chatml", "plain"])
@pytest.mark.parametrize("answer", ["It is unusual.", "The dog is brown.", "4 legs"])
def test_generation_prompt_ends_exactly_where_learning_starts(tok, name, answer):
    """Train/inference consistency: the generation prompt's ids are exactly the training ids before
    the first learned token. Otherwise the model is asked to continue from a context it never saw
    (e.g. a lone-space token left unlearned between "ASSISTANT:" and the answer)."""
    turns = [Turn("user", "<image>\nWhat is it?"), Turn("assistant", answer)]
    ids, labels = encode_conversation(tok, turns, name, "boundary")
    first = next(i for i, l in enumerate(labels) if l != IGNORE_INDEX)
    assert encode_prompt(tok, turns[:1], name) == ids[:first]

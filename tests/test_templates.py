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
    from mmit.templates import labels

    orig = labels._render

    def shifted(*a, **k):  # generation spans 4 characters early, as a broken template/tokenizer pair gives
        text, spans = orig(*a, **k)
        return text, [(s - 4, e - 4) for s, e in spans]

    monkeypatch.setattr(labels, "_render", shifted)
    with pytest.raises(LabelAlignmentError, match="sample-42") as e:
        encode_conversation(tok, [Turn("user", "q"), Turn("assistant", "The dog is brown.")], "vicuna-v1", "sample-42")
    assert e.value.reason == "label-misaligned"


def test_missing_span_raises(tok, monkeypatch):
    from mmit.templates import labels

    orig = labels._render
    monkeypatch.setattr(labels, "_render", lambda *a, **k: (orig(*a, **k)[0], []))
    with pytest.raises(LabelAlignmentError, match="0 learned span"):
        encode_conversation(tok, [Turn("user", "q"), Turn("assistant", "a")], "vicuna-v1", "s")


def test_no_assistant_turn_is_never_trained_on_silently(tok):
    with pytest.raises(SampleError, match="no supervised token") as e:
        encode_conversation(tok, [Turn("user", "just a question")], "vicuna-v1", "lonely")
    assert e.value.reason == "no-supervised-tokens" and "lonely" in str(e.value)


def test_unknown_template_suggests():
    with pytest.raises(UnknownNameError, match="vicuna-v1"):
        get_template("vicuna_v1")
    assert set(TEMPLATES.names()) == {"plain", "vicuna-v1", "llama-2", "chatml", "video-llama", "video-llama-2"}


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


# Exact learned spans (token positions [start, end) and what they decode to) of every golden case, written
# out by hand so a regenerated golden file cannot silently change what is learned. The leading space of
# vicuna-v1 / llama-2 answers is learned on purpose (see chat_templates.py); chatml's "\n" after
# <|im_end|> and every template's prompt part are not.
LEARNED = {
    "chatml/multi-turn": [(29, 35, "The dog is brown.<|im_end|>"), (49, 59, "No, it is small.<|im_end|>")],
    "chatml/single-image": [(29, 35, "The dog is brown.<|im_end|>")],
    "chatml/text-only-with-system": [(28, 32, "Four.<|im_end|>")],
    "llama-2/multi-turn": [(89, 96, " The dog is brown. </s>"), (108, 118, " No, it is small. </s>")],
    "llama-2/single-image": [(89, 96, " The dog is brown. </s>")],
    "llama-2/text-only-with-system": [(33, 37, " Four. </s>")],
    "plain/single-image": [(2, 8, "The dog is brown.\n")],
    "vicuna-v1/multi-turn": [(44, 50, " The dog is brown.</s>"), (59, 68, " No, it is small.</s>")],
    "vicuna-v1/single-image": [(44, 50, " The dog is brown.</s>")],
    "vicuna-v1/text-only-with-system": [(21, 24, " Four.</s>")],
}


def test_every_golden_case_has_hand_written_learned_spans():
    assert set(LEARNED) == set(GOLDEN)


@pytest.mark.parametrize("key", sorted(LEARNED))
def test_golden_learned_spans_exact(tok, key):
    g = GOLDEN[key]
    ids, labels = encode_conversation(tok, [Turn(r, c) for r, c in g["turns"]], key.split("/")[0], key)
    learned = [i for i, l in enumerate(labels) if l != IGNORE_INDEX]
    want = LEARNED[key]
    assert learned == [i for a, b, _ in want for i in range(a, b)]
    assert [tok.decode(ids[a:b]) for a, b, _ in want] == [s for _, _, s in want]
    assert len(ids) == len(g["tokens"])


def test_multi_turn_joins_match_llava():
    # llama-2: LLaVA's SeparatorStyle.LLAMA_2 joins rounds as "... {a} </s><s>[INST] {q2} [/INST]".
    assert GOLDEN["llama-2/multi-turn"]["text"].endswith(
        "What color is the dog? [/INST] The dog is brown. </s><s>[INST] Is it big? [/INST] No, it is small. </s>")
    assert GOLDEN["llama-2/multi-turn"]["text"].count("<<SYS>>") == 1
    assert GOLDEN["chatml/multi-turn"]["text"].endswith(
        "<|im_start|>assistant\nThe dog is brown.<|im_end|>\n<|im_start|>user\nIs it big?<|im_end|>\n"
        "<|im_start|>assistant\nNo, it is small.<|im_end|>\n")


@pytest.mark.parametrize("name", ["vicuna-v1", "llama-2", "chatml"])
def test_list_content_in_every_role_renders_like_strings(tok, name):
    tpl = get_template(name).chat_template
    as_str = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat is it?"},
              {"role": "assistant", "content": "A dog."}, {"role": "user", "content": "<image>\n<image>\nAnd these?"}]
    as_list = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
               {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
               {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "And these?"}]}]
    a = tok.apply_chat_template(as_str, chat_template=tpl, tokenize=False, add_generation_prompt=True)
    assert a == tok.apply_chat_template(as_list, chat_template=tpl, tokenize=False, add_generation_prompt=True)
    assert a.count("<image>") == 3 and "Be brief." in a


def test_plain_generation_prompt_is_bos_and_images(tok):
    assert tok.convert_ids_to_tokens(encode_prompt(tok, [Turn("user", "Describe.\n<image>")], "plain")) == ["<s>", "<image>"]


def test_a_template_that_learns_its_role_tag_is_refused(tok, monkeypatch):
    """A real template bug (the generation block opens before "ASSISTANT:"), not a patched mask: LLaVA
    would train on it (or zero the loss); here the sample is refused, naming it and both strings."""
    import dataclasses

    tpl = get_template("vicuna-v1")
    broken = tpl.chat_template.replace("ASSISTANT:{% generation %}", "{% generation %}ASSISTANT:")
    assert broken != tpl.chat_template
    monkeypatch.setitem(TEMPLATES._items, "vicuna-v1", dataclasses.replace(tpl, chat_template=broken))
    with pytest.raises(LabelAlignmentError, match="rec-7") as e:
        encode_conversation(tok, [Turn("user", "q"), Turn("assistant", "A dog.")], "vicuna-v1", "rec-7")
    # byte-level BPE keeps the space before "ASSISTANT" in that token, so it is learned too
    assert "' ASSISTANT: A dog.</s>'" in str(e.value) and "expected 'A dog.</s>'" in str(e.value)


def test_answer_with_spaced_punctuation_is_not_a_false_mismatch(tok, monkeypatch):
    # A tokenizer whose decode cleans up spaces (clean_up_tokenization_spaces=True; transformers 5 still
    # applies it to Unigram/WordPiece models, and to BPE when forced as here) turns " ," into ",".
    monkeypatch.setattr(tok, "clean_up_tokenization_spaces", True)
    monkeypatch.setattr(tok, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", True)
    assert tok.decode(tok.encode("a dog , brown .")) == "a dog, brown."
    ids, labels = encode_conversation(tok, [Turn("user", "q"), Turn("assistant", "a dog , brown .")], "vicuna-v1", "sp")
    learned = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert tok.decode(learned, clean_up_tokenization_spaces=False) == " a dog , brown .</s>"


def test_learned_mask_walk_equals_the_pairwise_overlap_test():
    """``_learned`` (one walk over tokens and generation spans) marks exactly the tokens that overlap a
    span, as the test of every token against every span did: random sorted, disjoint spans (empty ones
    included) and token offsets, including zero-width tokens and offsets that step back."""
    import random

    from mmit.templates.labels import _learned

    rng = random.Random(3)
    for _ in range(3000):
        cuts = sorted(rng.sample(range(0, 60), rng.randint(0, 8)))
        spans = [(cuts[i], cuts[i + 1] if rng.random() < 0.8 else cuts[i]) for i in range(0, len(cuts) - 1, 2)]
        offsets, a = [], 0
        for _ in range(rng.randint(0, 30)):
            a = max(0, a + rng.randint(-2 if rng.random() < 0.05 else 0, 4))
            offsets.append((a, a + rng.randint(0, 3)))
        want = [int(any(b > s and a < e for s, e in spans)) for a, b in offsets]
        assert _learned(offsets, spans) == want, (offsets, spans)


def test_remembered_piece_ids_follow_a_vocabulary_change():
    """Text pieces are tokenised once per tokenizer state: after a token is added, the same turns
    give the ids the changed tokenizer gives (not the remembered ones)."""
    from mmit.models.tokenizer import build_tiny_tokenizer
    from mmit.templates.labels import encode_conversation

    tok = build_tiny_tokenizer()
    turns = [Turn("user", "<image>\nwhat is a zzqx?"), Turn("assistant", "a zzqx is a thing")]
    before, _ = encode_conversation(tok, turns, "vicuna-v1", "s")
    assert encode_conversation(tok, turns, "vicuna-v1", "s")[0] == before  # remembered: same ids
    tok.add_tokens(["zzqx"])
    after, labels = encode_conversation(tok, turns, "vicuna-v1", "s")
    new_id = tok.convert_tokens_to_ids("zzqx")
    assert after != before and after.count(new_id) == 2 and labels.count(new_id) == 1

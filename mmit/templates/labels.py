"""Token ids and per-turn labels for a conversation, from the template's ``{% generation %}`` mask.

Labels are the token ids where the model learns (assistant answers and their end-of-turn token) and
``IGNORE_INDEX`` (-100) elsewhere: system and user turns, ``<image>`` positions, template text.
Unlike LLaVA's ``preprocess_v1`` (arXiv 2310.03744), which re-counts token lengths and, when they
disagree, prints "tokenization mismatch" and masks the whole sample (a silent zero loss), the mask
here comes from character offsets of the rendered text, every learned span is checked against the
turn it belongs to, and a sample that cannot be aligned or has nothing to learn raises.
"""

from __future__ import annotations

import re
from typing import List, Sequence, Tuple

from mmit.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER
from mmit.data.sample import SampleError, Turn
from mmit.templates.chat_templates import get_template

_WS = re.compile(r"\s+")


class LabelAlignmentError(SampleError):
    """The learned spans do not match the assistant turns (reason ``label-misaligned``)."""

    def __init__(self, message: str):
        super().__init__(message, "label-misaligned")


def _messages(turns: Sequence[Turn]) -> List[dict]:
    return [{"role": t.role, "content": t.content} for t in turns]


def _spans(mask: Sequence[int]) -> List[Tuple[int, int]]:
    spans, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _norm(s: str) -> str:
    return _WS.sub(" ", s).strip()


def encode_conversation(tokenizer, turns: Sequence[Turn], template: str, sample_id: str
                        ) -> Tuple[List[int], List[int]]:
    """Render ``turns`` with ``template`` and tokenize; return ``(input_ids, labels)`` (lists of int, same length).

    Each ``<image>`` stays ONE token id here (the collator expands it). Requires a fast tokenizer.

    Raises:
        LabelAlignmentError: the number of learned spans differs from the number of assistant turns,
            or a span does not decode to its turn's answer plus the end-of-turn text (message names
            ``sample_id`` and shows both strings). Strings are compared after stripping their ends and
            collapsing whitespace runs (some tokenizers, e.g. T5's sentencepiece, do not round-trip
            whitespace); decoding never applies ``clean_up_tokenization_spaces``, which would turn an
            answer's " ." into "." and report a false mismatch.
        SampleError: (reason ``no-supervised-tokens``) nothing would be learned.
    """
    tpl = get_template(template)
    n_user = sum(1 for t in turns if t.role == "user")
    if tpl.max_exchanges is not None and n_user > tpl.max_exchanges:
        raise SampleError(f"sample {sample_id!r}: template {template!r} takes at most {tpl.max_exchanges} "
                          f"user/assistant exchange(s), the sample has {n_user}", "too-many-turns-for-template")
    out = tokenizer.apply_chat_template(_messages(turns), chat_template=tpl.chat_template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"])
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    labels = [t if (m and t != image_id) else IGNORE_INDEX for t, m in zip(ids, mask)]
    answers = [t.content for t in turns if t.role == "assistant"]
    spans = _spans(mask)
    if len(spans) != len(answers):
        raise LabelAlignmentError(f"sample {sample_id!r}: {len(spans)} learned span(s) for {len(answers)} "
                                  f"assistant turn(s) with template {template!r}")
    for (a, b), answer in zip(spans, answers):
        got = tokenizer.decode(ids[a:b], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        want = tpl.learned_text(answer, tokenizer.eos_token)
        if _norm(got) != _norm(want):
            raise LabelAlignmentError(f"sample {sample_id!r}: learned tokens decode to {got!r}, expected {want!r} "
                                      f"(template {template!r})")
    if all(l == IGNORE_INDEX for l in labels):
        raise SampleError(f"sample {sample_id!r}: no supervised token (no assistant answer to learn)",
                          "no-supervised-tokens")
    return ids, labels


def encode_prompt(tokenizer, turns: Sequence[Turn], template: str) -> List[int]:
    """Token ids of a prompt for generation: the turns (ending with a user turn) plus the template's
    generation prompt (e.g. ``ASSISTANT:``). Raises ``ValueError`` if the last turn is not a user turn."""
    if not turns or turns[-1].role != "user":
        raise ValueError("a generation prompt must end with a user turn")
    tpl = get_template(template)
    out = tokenizer.apply_chat_template(_messages(turns), chat_template=tpl.chat_template, tokenize=True,
                                        return_dict=True, add_generation_prompt=True)
    return list(out["input_ids"])


def answer_ids_in_context(tokenizer, turns: Sequence[Turn], template: str, answer: str, score_end_of_turn: bool,
                          prompt: Sequence[int] | None = None, sample_id: str = "prompt") -> List[int]:
    """Token ids of ``answer`` as the assistant's reply right after the prompt ``turns``.

    Tokenized in context (the prompt followed by the answer, rendered with the conversation
    template), so the ids are exactly those the model learned for this answer. Without
    ``score_end_of_turn`` the template's end-of-turn tokens (``</s>``, ``<|im_end|>``) are left out.
    ``prompt``: :func:`encode_prompt` of ``turns`` (computed when None).

    Raises ``ValueError`` when the template tokenizes prompt + answer so that the prompt's ids are
    not a prefix (the boundary merged), or the answer has no token.
    """
    tpl = get_template(template)
    if prompt is None:
        prompt = encode_prompt(tokenizer, turns, template)
    msgs = _messages(list(turns) + [Turn("assistant", answer)])
    out = tokenizer.apply_chat_template(msgs, chat_template=tpl.chat_template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, amask = list(out["input_ids"]), list(out["assistant_masks"])
    n = len(prompt)
    if ids[:n] != list(prompt):
        raise ValueError(f"sample {sample_id!r}: with template {template!r} the prompt's tokens change when "
                         f"the answer {answer!r} follows; cannot rank in context")
    last = max((j for j, m in enumerate(amask) if m), default=len(ids) - 1)
    cont = ids[n:last + 1]
    if not score_end_of_turn:
        want = _norm(answer)
        for k in range(1, len(cont) + 1):
            if _norm(tokenizer.decode(cont[:k], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)) == want:
                cont = cont[:k]
                break
    if not cont:
        raise ValueError(f"sample {sample_id!r}: candidate {answer!r} has no tokens")
    return cont

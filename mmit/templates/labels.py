"""Token ids and per-turn labels for a conversation, from the template's ``{% generation %}`` mask.

Labels are the token ids where the model learns (assistant answers and their end-of-turn token) and
``IGNORE_INDEX`` (-100) elsewhere: system and user turns, media placeholder positions, template text.
Unlike LLaVA's ``preprocess_v1`` (arXiv 2310.03744), which re-counts token lengths and, when they
disagree, prints "tokenization mismatch" and masks the whole sample (a silent zero loss), the mask
here comes from character offsets of the rendered text, every learned span is checked against the
turn it belongs to, and a sample that cannot be aligned or has nothing to learn raises.

How the rendered text becomes ids (the same for training, generation prompts and ranking):

1. The template is rendered as text (``{{ bos_token }}`` included: the text is what
   :func:`~mmit.templates.chat_templates.apply_template` saves with the tokenizer).
2. If the text starts with the tokenizer's ``bos_token``, that prefix becomes the BOS id and is not
   tokenised as text: the rest is tokenised as the start of a string, as the original code does with
   ``tokenizer(prompt)`` (which adds BOS itself). Tokenising ``"<s>A chat"`` as one text would instead,
   with a non-legacy SentencePiece Llama tokenizer (transformers 5's default), give ``A`` for the first
   word where LLaVA has ``▁A``. The BOS id is put first whether or not the tokenizer's post-processor
   would add one (mmit's tiny byte-level BPE adds none), and never twice.
3. ``media_chunks`` templates (``plain``, ``vicuna-v1``, ``llama-2``) split the rest at each media
   placeholder that is one added token of the tokenizer (``<image>``, ...) and tokenise the pieces one by
   one, each as the start of a string, with the placeholder's id between them: LLaVA's
   ``llava/mm_utils.py::tokenizer_image_token`` (``tokenizer(chunk)`` per chunk, the BOS of all but the
   first dropped, ``IMAGE_TOKEN_INDEX`` between). The others (``chatml``, ``video-llama``,
   ``video-llama-2``) tokenise the rest whole, placeholders matched as the tokenizer's special tokens.
   Special-token text inside a piece (``</s>``, ``<s>``, ``<|im_end|>``) is matched by the tokenizer
   there, as in the originals, so the text after it tokenises as that tokenizer does (a legacy Llama
   tokenizer gives ``▁USER`` after ``</s>``, a non-legacy one ``US``, ``ER`` or ``USER``).
4. Every piece is tokenised with ``add_special_tokens=False``; nothing else is added (no EOS).

Special-token policy (text from data never becomes a special token id): before rendering,
:func:`encode_conversation` refuses a turn whose text holds one of the tokenizer's special tokens
(``bos``/``eos``/``unk``/``pad``, additional special tokens and every added token marked special:
``</s>``, ``<s>``, ``<|im_end|>``, ``<|im_start|>``, ``[PAD]``, ...) with :class:`SampleError` reason
``special-token-in-text``, which the processor counts as a skip. Otherwise an answer of literally
``</s>`` would be learned as the EOS id, and ``<|im_end|>`` in a user turn would end that turn early
for a ChatML model. Exempt: the media placeholders (``<image>``, ``<video>``, ...; their number is
checked against the sample's media by :meth:`~mmit.data.sample.Sample.validate`, and a placeholder in
an answer of conversation data is refused by :func:`mmit.data.normalize.normalize_turns`) and the
media tokens a family writes into the turns itself (:data:`MEDIA_TOKENS`). Rejected rather than
escaped: escaping would tokenise the text differently from the reference implementations, and a
counted skip is visible in ``summary.json``. Generation prompts (:func:`encode_prompt`) are not
checked: they are the caller's own text.

The ids then equal those of each template's reference (``tests/test_template_golden.py`` re-states the
references and compares, with legacy and non-legacy SentencePiece Llama tokenizers and byte-level BPE):

* ``plain``: LLaVA ``llava/train/train.py::preprocess_plain``: ``tokenizer_image_token("<image>" +
  caption + "\\n")``; learned: everything after ``tokenizer_image_token("<image>")`` (BOS, image).
* ``vicuna-v1``: LLaVA ``preprocess_v1`` with ``conv_vicuna_v1`` (``SeparatorStyle.TWO``, ``system +
  " "`` even for an empty system): ``tokenizer_image_token(prompt)`` (``tokenizer(prompt)`` when
  text-only, the same ids since the prompt is then one piece); learned: each answer from the token
  carrying the space after ``ASSISTANT:`` through ``</s>``, which is what ``preprocess_v1``'s loop masks
  whenever its length counts agree. With non-legacy tokenizers they need not: its ``round_len -= 1``
  correction for rounds after the first assumes the text after ``</s>`` is one token shorter in
  context than alone (Vicuna's vocabulary), and where it is not it prints "tokenization mismatch" and
  masks the whole sample; mmit learns the answers there too.
* ``llama-2``: LLaVA ``preprocess_llama_2`` with ``conv_llava_llama_2`` (``SeparatorStyle.LLAMA_2``:
  ``get_prompt`` strips the first ``<s>``, the tokenizer adds it; later ``<s>`` stay in the text):
  ``tokenizer_image_token(prompt)``; learned ``" {a} </s>"`` (the loop's mask).
* ``chatml``: LLaVA-NeXT ``llava/train/train.py::preprocess_qwen``: each message
  ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` tokenised on its own with ``<image>`` as a special
  token and no BOS (the same ids as the whole text, since every message starts with a special token);
  learned ``"{a}<|im_end|>"`` (``preprocess_qwen`` also learns every ``<|im_start|>``, ``<|im_end|>``,
  newline and the assistant's role text).
* ``video-llama``: Video-LLaMA ``video_instruct_dataset.py::preprocess`` (``"\\n\\n###Human: q\\n###Assistant:
  a\\n...###"``, ``tokenizer(conversation)``); learned ``" {a}\\n###"`` (its ``_mask_targets`` counts
  turns tokenised alone, each with a BOS, and also learns the ``###Assistant:`` role text).
* ``video-llama-2``: Video-LLaMA ``preprocess_for_llama_v2`` (``llama_v2_video_conversation``, system
  ``" "``, ``tokenizer(conversation)``); learned ``" {a} </s>"`` (the loop's mask).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

from transformers.utils.chat_template_utils import render_jinja_template

from mmit.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, MEDIA_PLACEHOLDERS
from mmit.data.sample import SampleError, Turn
from mmit.templates.chat_templates import ConversationTemplate, get_template

_WS = re.compile(r"\s+")


#: Special tokens allowed in turn text: the media placeholders and the media tokens a family writes into
#: the turns before they reach :func:`encode_conversation` (Video-LLaMA's ``<ImageHere>`` / ``<AudioHere>``,
#: ``mmit/families/video_llama/model.py``). Everything else special is refused (module docstring).
MEDIA_TOKENS = frozenset(MEDIA_PLACEHOLDERS.values()) | {"<ImageHere>", "<AudioHere>"}

class _TokenizerFacts:
    """What :func:`encode_conversation` asks of one tokenizer for every sample, worked out once per
    tokenizer (and again when its added vocabulary or special tokens change): the special-token
    pattern, the media placeholder ids, and the ids of the most recent text pieces (the template's
    fixed text before the first ``<image>``, system prompt included, repeats in every sample)."""

    PIECES, PIECE_CHARS = 512, 512  # pieces remembered, and the longest remembered

    def __init__(self, tokenizer, key):
        self.key = key
        added = tokenizer.added_tokens_decoder
        tokens = set(tokenizer.all_special_tokens) | {t.content for t in added.values() if t.special}
        tokens = sorted((t for t in tokens - MEDIA_TOKENS if t), key=len, reverse=True)
        self.pattern = re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None
        vocab = tokenizer.get_added_vocab()
        self.media = {p: vocab[p] for p in MEDIA_PLACEHOLDERS.values() if p in vocab}
        self.split = re.compile("(" + "|".join(re.escape(p) for p in self.media) + ")") if self.media else None
        self.pieces: "OrderedDict[str, Tuple[List[int], List[Tuple[int, int]]]]" = OrderedDict()
        self.lock = threading.Lock()  # mmit serve encodes prompts from several threads

    def piece(self, tokenizer, text: str) -> Tuple[List[int], List[Tuple[int, int]]]:
        """``text`` tokenised as the start of a string without special tokens: ids and offsets
        (the caller copies them; the remembered lists are never handed out to be changed)."""
        with self.lock:
            hit = self.pieces.get(text)
            if hit is not None:
                self.pieces.move_to_end(text)
                return hit
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        out = (list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]])
        if len(text) <= self.PIECE_CHARS:
            with self.lock:
                self.pieces[text] = out
                if len(self.pieces) > self.PIECES:
                    self.pieces.popitem(last=False)
        return out


_FACTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _facts(tokenizer) -> _TokenizerFacts:
    key = (len(tokenizer.added_tokens_decoder), tuple(tokenizer.all_special_tokens))
    try:
        hit = _FACTS.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return _TokenizerFacts(tokenizer, key)
    if hit is None or hit.key != key:
        hit = _FACTS[tokenizer] = _TokenizerFacts(tokenizer, key)
    return hit


def _special_pattern(tokenizer) -> Optional["re.Pattern[str]"]:
    """A regex matching any special token of ``tokenizer`` not in :data:`MEDIA_TOKENS` (None if there are
    none); cached per tokenizer until its added vocabulary changes."""
    return _facts(tokenizer).pattern


def check_data_text(tokenizer, turns: Sequence[Turn], sample_id: str) -> None:
    """Refuse turn text that holds a special token of ``tokenizer`` (module docstring, special-token policy).

    Raises:
        SampleError: reason ``special-token-in-text``, naming ``sample_id``, the turn and the token.
    """
    pattern = _special_pattern(tokenizer)
    if pattern is None:
        return
    for i, t in enumerate(turns):
        m = pattern.search(t.content) if isinstance(t.content, str) else None
        if m:
            raise SampleError(f"sample {sample_id!r}: turn {i} ({t.role}) holds the special token {m.group(0)!r} "
                              "as text; data text must not become special token ids", "special-token-in-text")


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


def _render(tokenizer, messages: List[dict], tpl: ConversationTemplate, add_generation_prompt: bool
            ) -> Tuple[str, List[Tuple[int, int]]]:
    """The rendered text and the character spans ``[start, end)`` of its ``{% generation %}`` blocks."""
    rendered, indices = render_jinja_template(
        conversations=[messages], chat_template=tpl.chat_template, return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt, **tokenizer.special_tokens_map)
    return rendered[0], [tuple(s) for s in indices[0]]


def _media_ids(tokenizer) -> dict:
    """Media placeholders that are one added token of ``tokenizer``, with their ids."""
    return dict(_facts(tokenizer).media)


def _tokenize(tokenizer, text: str, tpl: ConversationTemplate) -> Tuple[List[int], List[Tuple[int, int]]]:
    """Ids of the rendered ``text`` and each id's character span in it (module docstring, steps 2-4)."""
    ids: List[int] = []
    offsets: List[Tuple[int, int]] = []
    pos = 0
    bos = tokenizer.bos_token
    if bos and tokenizer.bos_token_id is not None and text.startswith(bos):
        ids.append(tokenizer.bos_token_id)
        offsets.append((0, len(bos)))
        pos = len(bos)
    facts = _facts(tokenizer)
    media = facts.media if tpl.media_chunks else {}
    pieces = facts.split.split(text[pos:]) if media else [text[pos:]]
    for piece in pieces:
        if piece in media:
            ids.append(media[piece])
            offsets.append((pos, pos + len(piece)))
        elif piece:
            piece_ids, piece_offsets = facts.piece(tokenizer, piece)
            ids.extend(piece_ids)
            offsets.extend((pos + a, pos + b) for a, b in piece_offsets)
        pos += len(piece)
    return ids, offsets


def _learned(offsets: Sequence[Tuple[int, int]], spans: Sequence[Tuple[int, int]]) -> List[int]:
    """1 for each token ``[a, b)`` that overlaps one of the sorted, disjoint ``spans`` (``b > s and
    a < e``), else 0. One walk over both lists (the first span ending after ``a`` is the only one
    that can start before ``b``); the walk restarts if a token starts before the one before it."""
    out, j, last_a, n = [], 0, -1, len(spans)
    for a, b in offsets:
        if a < last_a:
            j = 0
        last_a = a
        while j < n and spans[j][1] <= a:
            j += 1
        out.append(1 if j < n and b > spans[j][0] else 0)
    return out


def _encode(tokenizer, turns: Sequence[Turn], tpl: ConversationTemplate, add_generation_prompt: bool = False
            ) -> Tuple[List[int], List[int]]:
    """``(ids, mask)``: the conversation's ids and 1 where a token overlaps a ``{% generation %}`` block."""
    text, spans = _render(tokenizer, _messages(turns), tpl, add_generation_prompt)
    ids, offsets = _tokenize(tokenizer, text, tpl)
    return ids, _learned(offsets, sorted(spans))


def encode_conversation(tokenizer, turns: Sequence[Turn], template: str, sample_id: str
                        ) -> Tuple[List[int], List[int]]:
    """Render ``turns`` with ``template`` and tokenize; return ``(input_ids, labels)`` (lists of int, same length).

    Tokenised as the template's original code does (module docstring). Each media placeholder that is a
    token of ``tokenizer`` (``<image>``) stays ONE token id here (the collator expands it) and is never
    learned. ``tokenizer``: a fast (``tokenizers``-backed) tokenizer, since character offsets are needed.

    Raises:
        LabelAlignmentError: the number of learned spans differs from the number of assistant turns,
            or a span does not decode to its turn's answer plus the end-of-turn text (message names
            ``sample_id`` and shows both strings). Strings are compared after stripping their ends and
            collapsing whitespace runs (some tokenizers, e.g. T5's sentencepiece, do not round-trip
            whitespace); decoding never applies ``clean_up_tokenization_spaces``, which would turn an
            answer's " ." into "." and report a false mismatch.
        SampleError: (reason ``too-many-turns-for-template``) more exchanges than the template takes
            (``plain``: one); (reason ``no-supervised-tokens``) nothing would be learned; (reason
            ``special-token-in-text``) a turn's text holds a special token (:func:`check_data_text`).
        UnknownNameError: ``template`` is not registered.
    """
    tpl = get_template(template)
    check_data_text(tokenizer, turns, sample_id)
    n_user = sum(1 for t in turns if t.role == "user")
    if tpl.max_exchanges is not None and n_user > tpl.max_exchanges:
        raise SampleError(f"sample {sample_id!r}: template {template!r} takes at most {tpl.max_exchanges} "
                          f"user/assistant exchange(s), the sample has {n_user}", "too-many-turns-for-template")
    ids, mask = _encode(tokenizer, turns, tpl)
    media_ids = set(_media_ids(tokenizer).values())
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if image_id is not None and image_id != tokenizer.unk_token_id:
        media_ids.add(image_id)
    labels = [t if (m and t not in media_ids) else IGNORE_INDEX for t, m in zip(ids, mask)]
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
    """Token ids (list of int) of a prompt for generation: the turns (ending with a user turn) plus the
    template's generation prompt (e.g. ``ASSISTANT:``), tokenised as :func:`encode_conversation` does, so
    they equal the training ids before the first learned token.

    Raises:
        ValueError: the last turn is not a user turn.
        UnknownNameError: ``template`` is not registered.
    """
    if not turns or turns[-1].role != "user":
        raise ValueError("a generation prompt must end with a user turn")
    return _encode(tokenizer, turns, get_template(template), add_generation_prompt=True)[0]


def answer_ids_in_context(tokenizer, turns: Sequence[Turn], template: str, answer: str, score_end_of_turn: bool,
                          prompt: Sequence[int] | None = None, sample_id: str = "prompt") -> List[int]:
    """Token ids (list of int) of ``answer`` as the assistant's reply right after the prompt ``turns``.

    Tokenized in context (the prompt followed by the answer, rendered with the conversation
    template and tokenised as :func:`encode_conversation` does), so the ids are exactly those the model
    learned for this answer. Without ``score_end_of_turn`` the template's end-of-turn tokens (``</s>``,
    ``<|im_end|>``) are left out. ``prompt``: :func:`encode_prompt` of ``turns`` (computed when None);
    ``sample_id`` names the sample in error messages.

    Raises:
        ValueError: the template tokenizes prompt + answer so that the prompt's ids are not a prefix
            (the boundary merged), the answer has no token, or (from :func:`encode_prompt`) the last turn
            is not a user turn.
        UnknownNameError: ``template`` is not registered.
    """
    tpl = get_template(template)
    if prompt is None:
        prompt = encode_prompt(tokenizer, turns, template)
    ids, amask = _encode(tokenizer, list(turns) + [Turn("assistant", answer)], tpl)
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

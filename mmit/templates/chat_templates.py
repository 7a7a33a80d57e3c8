"""Conversation templates as Jinja chat templates with ``{% generation %}`` blocks.

Each template renders the turns of a :class:`~mmit.data.sample.Sample` exactly as the original
system trained on them, and marks with ``{% generation %}`` what the model learns, so
``tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)`` yields the label mask per
token. Message content may be a string with inline ``<image>`` placeholders (mmit's Sample) or a
list of HF-style parts ``[{"type": "image"}, {"type": "text", "text": ...}]`` (what transformers'
``LlavaProcessor.apply_chat_template`` passes); an image part renders as ``<image>\\n``, so one
image + text renders identically both ways (LLaVA puts ``<image>\\n`` first, arXiv 2304.08485).

``plain``, ``vicuna-v1`` and ``llama-2`` write ``{{ bos_token }}`` / ``{{ eos_token }}`` rather than
``<s>`` / ``</s>``: they are used with LLMs whose special tokens differ (Llama/Vicuna ``<s>``/``</s>``,
Mistral, Llama-3 ``<|begin_of_text|>``/``<|end_of_text|>``), and a tokenizer without a bos token
(Qwen) renders none. ``chatml`` writes its ``<|im_start|>``/``<|im_end|>`` markers literally, since
they are part of the format, not of a tokenizer family, and uses no bos (as Qwen does).

The rendered text is what the original code's prompt string is (with the BOS text in front), not how it
is tokenised: :mod:`mmit.templates.labels` turns a leading ``bos_token`` into the BOS id and tokenises the
rest as each template's original code does (``media_chunks``), which tokenising the whole text with
``apply_chat_template(tokenize=True)`` does not do for non-legacy SentencePiece tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from mmit.registry import Registry

# The space between "ASSISTANT:" (or "[/INST]") and the answer is inside the learned span: a
# byte-level BPE may make it a token of its own, and a model that never learned to emit it would,
# after the generation prompt "ASSISTANT:", start its answer with a different first token than in
# training (sentencepiece tokenizers fold it into the first word, where this changes nothing).

# Renders `content` (string, or a list of typed parts) into the variable-free text.
_RENDER = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- macro count_images(content) -%}"
    "{%- if content is string -%}{{ content.count('<image>') }}"
    "{%- else -%}{{ content | selectattr('type', 'equalto', 'image') | list | length }}{%- endif -%}"
    "{%- endmacro -%}"
)


def _system_prelude(default: Optional[str]) -> str:
    """Sets ``sys`` (the system text, or the template's default) and ``msgs`` (turns after it)."""
    d = "none" if default is None else repr(default)
    return ("{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set sys = render(messages[0]['content']) -%}{%- set msgs = messages[1:] -%}"
            "{%- else -%}{%- set sys = " + d + " -%}{%- set msgs = messages -%}{%- endif -%}")


@dataclass(frozen=True)
class ConversationTemplate:
    """A conversation template.

    name: registry key. chat_template: the Jinja source. system: the default system prompt (used when
    the turns have none) or None. end_of_turn: the text after each learned answer (a Jinja-free
    description; ``{eos}`` stands for the tokenizer's eos token), used to check label alignment.
    stop_tokens: special tokens that end generation besides eos. source: where the format comes from.
    max_exchanges, stop_strings, media_chunks: see the fields.
    """

    name: str
    chat_template: str
    system: Optional[str]
    end_of_turn: str
    stop_tokens: Tuple[str, ...] = ()
    source: str = ""
    #: At most this many user/assistant exchanges (``plain``: 1, as LLaVA's ``preprocess_plain`` asserts).
    max_exchanges: Optional[int] = None
    #: Text that ends an answer when it is not one token (``###`` of Vicuna v0 / Video-LLaMA).
    stop_strings: Tuple[str, ...] = ()
    #: Tokenise the text between media placeholders piece by piece, each piece as the start of a string,
    #: as LLaVA's ``tokenizer_image_token`` does (True), or the whole text with the placeholders as the
    #: tokenizer's special tokens, as Video-LLaMA's ``tokenizer(conversation)`` does (False). See
    #: :mod:`mmit.templates.labels`.
    media_chunks: bool = True

    def learned_text(self, answer: str, eos_token: str) -> str:
        """What the label mask must cover for one assistant turn: answer + end-of-turn text."""
        return answer + self.end_of_turn.replace("{eos}", eos_token or "")


TEMPLATES: Registry[ConversationTemplate] = Registry("conversation template")

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAMA2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                 "content that the user provides, and assist the user with a variety of tasks using natural language.")
CHATML_SYSTEM = "You are a helpful assistant."

# LLaVA `conv_llava_plain` + `preprocess_plain`: the user turn becomes its <image> placeholders only
# (the caption instruction is dropped), the caption + "\n" is learned; no eos (as LLaVA).
PLAIN = TEMPLATES.register("plain", ConversationTemplate(
    name="plain",
    chat_template=_RENDER + "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ '<image>' * (count_images(m['content']) | int) }}"
    "{%- elif m['role'] == 'assistant' -%}{% generation %}{{ render(m['content']) }}{{ '\\n' }}{% endgeneration %}"
    "{%- endif -%}{%- endfor -%}",
    system=None, end_of_turn="\n", max_exchanges=1,
    source="LLaVA llava/conversation.py conv_llava_plain; llava/train/train.py preprocess_plain"))

# LLaVA `conv_vicuna_v1` (SeparatorStyle.TWO, sep " ", sep2 "</s>"):
# "{system} USER: {q} ASSISTANT: {a}</s>USER: ..."; learned "{a}</s>". The space after the system is
# written even for an empty system ("<s> USER: ..."), as get_prompt writes `system + sep`.
VICUNA_V1 = TEMPLATES.register("vicuna-v1", ConversationTemplate(
    name="vicuna-v1",
    chat_template=_RENDER + _system_prelude(VICUNA_SYSTEM) + "{{ bos_token }}"
    "{{ sys }}{{ ' ' }}"
    "{%- for m in msgs -%}"
    "{%- if m['role'] == 'user' -%}USER: {{ render(m['content']) }}{{ ' ' }}"
    "{%- elif m['role'] == 'assistant' -%}ASSISTANT:{% generation %}{{ ' ' + render(m['content']) }}{{ eos_token }}{% endgeneration %}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}",
    system=VICUNA_SYSTEM, end_of_turn="{eos}",
    source="LLaVA llava/conversation.py conv_vicuna_v1; llava/train/train.py preprocess_v1"))

# LLaVA `conv_llava_llama_2` (SeparatorStyle.LLAMA_2): "<s>[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{q} [/INST] {a} </s>
# <s>[INST] {q2} [/INST] {a2} </s>"; learned "{a} </s>".
def _llama_2(system: str) -> str:
    return (_RENDER + _system_prelude(system) +
            "{%- for m in msgs -%}"
            "{%- if m['role'] == 'user' -%}{{ bos_token }}[INST]{{ ' ' }}"
            "{%- if loop.first and sys -%}{{ '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' }}{%- endif -%}"
            "{{ render(m['content']) }} [/INST]"
            "{%- elif m['role'] == 'assistant' -%}{% generation %}{{ ' ' + render(m['content']) }} {{ eos_token }}{% endgeneration %}"
            "{%- endif -%}{%- endfor -%}")


LLAMA_2 = TEMPLATES.register("llama-2", ConversationTemplate(
    name="llama-2", chat_template=_llama_2(LLAMA2_SYSTEM), system=LLAMA2_SYSTEM, end_of_turn=" {eos}",
    source="LLaVA llava/conversation.py conv_llava_llama_2; llava/train/train.py preprocess_llama_2"))

# Video-LLaMA (arXiv 2306.02858) `video_instruct_dataset.py` `video_conversation` (SeparatorStyle.SINGLE,
# sep "###", system ""): "{sys}\n\n###Human: {q}\n###Assistant: {a}\n###Human: ...". Learned: " {a}\n###"
# (the answer, its newline and the "###" that ends it; Video-LLaMA's `_mask_targets` also learns the
# "###Assistant: " role text, which this template does not). Generation stops at the string "###".
VIDEO_LLAMA = TEMPLATES.register("video-llama", ConversationTemplate(
    name="video-llama",
    chat_template=_RENDER + _system_prelude("") + "{{ bos_token }}{{ sys }}{{ '\\n\\n' }}"
    "{%- set ns = namespace(after_answer=false) -%}"
    "{%- for m in msgs -%}"
    "{%- if m['role'] == 'user' -%}{{ '' if ns.after_answer else '###' }}Human: {{ render(m['content']) }}{{ '\\n' }}"
    "{%- set ns.after_answer = false -%}"
    "{%- elif m['role'] == 'assistant' -%}###Assistant:{% generation %}{{ ' ' + render(m['content']) + '\\n###' }}{% endgeneration %}"
    "{%- set ns.after_answer = true -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}###Assistant:{%- endif -%}",
    system="", end_of_turn="\n###", stop_strings=("###",), media_chunks=False,
    source="Video-LLaMA video_llama/datasets/datasets/video_instruct_dataset.py video_conversation, preprocess"))

# Video-LLaMA `llama_v2_video_conversation` (SeparatorStyle.LLAMA_2, system " "): LLaVA's llama-2 layout
# with a one-space system prompt, "[INST] <<SYS>>\n \n<</SYS>>\n\n{q} [/INST] {a} </s>".
VIDEO_LLAMA_2 = TEMPLATES.register("video-llama-2", ConversationTemplate(
    name="video-llama-2", chat_template=_llama_2(" "), system=" ", end_of_turn=" {eos}", media_chunks=False,
    source="Video-LLaMA video_instruct_dataset.py llama_v2_video_conversation, preprocess_for_llama_v2"))

# ChatML (Qwen, Yi, OpenHermes): learned "{a}<|im_end|>"; the "\n" after it is not learned, since
# generation stops at <|im_end|>. No BOS, as ChatML models use none.
CHATML = TEMPLATES.register("chatml", ConversationTemplate(
    name="chatml",
    chat_template=_RENDER + _system_prelude(CHATML_SYSTEM) +
    "{%- if sys -%}{{ '<|im_start|>system\\n' + sys + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- for m in msgs -%}"
    "{%- if m['role'] == 'user' -%}{{ '<|im_start|>user\\n' + render(m['content']) + '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '<|im_start|>assistant\\n' }}{% generation %}{{ render(m['content']) }}<|im_end|>{% endgeneration %}{{ '\\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
    system=CHATML_SYSTEM, end_of_turn="<|im_end|>", stop_tokens=("<|im_end|>",), media_chunks=False,
    source="OpenAI ChatML as used by Qwen (arXiv 2309.16609) and LLaVA-NeXT's qwen templates"))


def get_template(name: str) -> ConversationTemplate:
    """The registered template; raises :class:`~mmit.registry.UnknownNameError` with close matches."""
    return TEMPLATES.get(name)


def apply_template(tokenizer, name: str) -> ConversationTemplate:
    """Set ``tokenizer.chat_template`` to the named template (saved with the tokenizer); returns it.
    Raises :class:`~mmit.registry.UnknownNameError` for an unknown name."""
    tpl = get_template(name)
    tokenizer.chat_template = tpl.chat_template
    return tpl


def stop_token_ids(tokenizer, name: str) -> list:
    """Token ids (list of int) that end generation for this template: eos plus the template's stop tokens
    that are in the tokenizer's vocabulary. Raises :class:`~mmit.registry.UnknownNameError` for an unknown name."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in get_template(name).stop_tokens if t in vocab]
    return ids

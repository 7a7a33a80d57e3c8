"""Inference on a trained checkpoint: a prompt (with images, videos, audio or none) -> the model's answer.

Used by ``mmit generate``, ``mmit chat`` and ``mmit serve`` (:mod:`mmit.serve`). Any family that
generates text works the same way: the prompt and its media become one
:class:`~mmit.data.sample.Sample` (one user turn), the family's processor decodes the media
(:meth:`~mmit.data.processor.Processor.decode_media`: the same decoding as training, e.g.
``num_frames`` frames per video for InstructBLIP) and turns the prompt into a typed batch (the
family's own prompt layout: a conversation template for LLaVA, the bare instruction for
InstructBLIP), and the model decodes through the inference contract
(:meth:`~mmit.models.interface.MultimodalModel.generate_tokens`, transformers ``generate`` with a KV
cache; greedy unless told otherwise). A media kind the family does not read raises
:class:`~mmit.data.sample.SampleError` (``unsupported-media``).

A multi-turn conversation (:func:`generate_turns`, :func:`stream_turns`) is a list of turns ending
with a user turn plus the decoded media of its placeholders; the family renders the history.
:func:`stream_turns` gives the same answer piece by piece (transformers' ``TextIteratorStreamer``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import torch

from mmit.constants import IMAGE_PLACEHOLDER, MEDIA_PLACEHOLDERS
from mmit.data.media import read_media_bytes
from mmit.data.processor import cut_at_stop_strings
from mmit.data.sample import Media, Sample, Turn
from mmit.models.interface import model_device

#: Media kinds ``generate`` takes, in the order their placeholders are put in front of a bare prompt.
PROMPT_KINDS = ("image", "video", "audio")


@dataclass
class Answer:
    """``text``: the decoded answer; ``token_ids``: the generated ids; ``prompt_tokens``: the prompt's
    length in tokens (media tokens included; 0 where not counted)."""

    text: str
    token_ids: List[int]
    prompt_tokens: int = 0


def prompt_turns(prompt: str, with_image: bool | int) -> List[Turn]:
    """One user turn for ``with_image`` images (a bool counts as 0 or 1). A prompt without ``<image>``
    gets one ``<image>\\n`` per image in front; a prompt with markers must have one per image.
    Raises ``ValueError`` when the markers and the images disagree."""
    n = int(with_image)
    have = prompt.count(IMAGE_PLACEHOLDER)
    if have == 0 and n:
        prompt = f"{IMAGE_PLACEHOLDER}\n" * n + prompt
    elif have != n:
        raise ValueError(f"the prompt has {have} {IMAGE_PLACEHOLDER} marker(s) but {n} image(s) were given")
    return [Turn("user", prompt)]


def _as_list(x) -> list:
    return [] if x is None else (list(x) if isinstance(x, (list, tuple)) else [x])


def with_placeholders(prompt: str, counts: Dict[str, int]) -> str:
    """``prompt`` with each kind's placeholders: a kind with ``counts[kind]`` items and no marker in
    the prompt gets one ``<kind>\\n`` per item in front (``<image>`` first, then ``<video>``, then
    ``<audio>``); a kind whose markers are in the prompt must have exactly one per item. Raises
    ``ValueError`` naming the kind and both counts otherwise (markers of a kind with no items too)."""
    head = ""
    for kind in PROMPT_KINDS:
        ph, n = MEDIA_PLACEHOLDERS[kind], int(counts.get(kind, 0))
        have = prompt.count(ph)
        if have == 0:
            head += f"{ph}\n" * n
        elif have != n:
            raise ValueError(f"the prompt has {have} {ph} marker(s) but {n} {kind}(s) were given")
    return head + prompt


def prompt_sample(prompt: str, media: Dict[str, Sequence[Any]], sample_id: str = "prompt"):
    """``(sample, given)`` for ``prompt`` and ``media`` (kind -> items: file paths, or PIL images for
    ``image``): a :class:`Sample` with one user turn (:func:`with_placeholders`) whose ``media`` follow
    the placeholders in text order (each kind's items in the order given), each a
    ``Media(kind, path=..., data=bytes)`` read from its file (a PIL image: a ``Media`` without bytes);
    ``given`` holds the PIL image of each media item passed decoded, else None.

    Raises ``ValueError`` (placeholder counts, an unknown kind) and ``OSError`` (an unreadable file,
    its path in the message)."""
    from PIL import Image

    unknown = set(media) - set(PROMPT_KINDS)
    if unknown:
        raise ValueError(f"unknown media kind(s) {sorted(unknown)}; generate takes {', '.join(PROMPT_KINDS)}")
    text = with_placeholders(prompt, {k: len(v) for k, v in media.items()})
    marks = re.compile("|".join(re.escape(MEDIA_PLACEHOLDERS[k]) for k in PROMPT_KINDS))
    kind_of = {MEDIA_PLACEHOLDERS[k]: k for k in PROMPT_KINDS}
    queues = {k: list(v) for k, v in media.items()}
    items, given = [], []
    for m in marks.finditer(text):
        kind = kind_of[m.group(0)]
        x = queues[kind].pop(0)
        if isinstance(x, Image.Image) and kind == "image":
            items.append(Media(kind, meta={"decoded": True}))
            given.append(x)
        elif isinstance(x, (str, os.PathLike)):
            path = os.fspath(x)
            items.append(Media(kind, path=path, data=read_media_bytes(path)))
            given.append(None)
        else:
            raise ValueError(f"{kind} {len([g for g in items if g.kind == kind])}: expected a file path"
                             f"{' or a PIL image' if kind == 'image' else ''}, got {type(x).__name__}")
    return Sample(id=sample_id, turns=[Turn("user", text)], media=items).validate(), given


def decode_prompt_media(processor, sample: Sample, given: Sequence[Any]) -> List[Any]:
    """The decoded media of :func:`prompt_sample`'s ``(sample, given)``, in media order: the PIL
    images given as they are, the files through ``processor.decode_media`` (one call, on the sample
    restricted to them). Raises :class:`~mmit.data.sample.SampleError` (``unsupported-media``, a
    decoder's reason) naming the sample."""
    todo = [m for m, g in zip(sample.media, given) if g is None]
    if not todo:
        return list(given)
    text = "".join(f"{MEDIA_PLACEHOLDERS[m.kind]}\n" for m in todo)
    bare = sample.turns[-1].content
    for ph in MEDIA_PLACEHOLDERS.values():
        bare = bare.replace(ph, "")
    files = Sample(id=sample.id, turns=[Turn("user", text + bare.strip())], media=todo)
    decoded = iter(processor.decode_media(files))
    return [next(decoded) if g is None else g for g in given]


def load_for_inference(checkpoint, dtype: torch.dtype = torch.float32, *, trust_remote_code: bool = False):
    """``(model, processor, cfg)`` of a checkpoint or run folder whose family generates text.

    ``trust_remote_code`` (``mmit generate --trust-remote-code``) lets the model folders the
    checkpoint's config names run their own code; the checkpoint itself can never allow it
    (:func:`~mmit.training.checkpoint.load_model_from_checkpoint`).

    Raises ``FileNotFoundError`` for a folder without a checkpoint and ``ValueError`` for a family
    that does not produce text (e.g. ``instructpix2pix``: use its own command), a refused config tag
    or custom model code without ``trust_remote_code``."""
    from mmit.families import get_family_class
    from mmit.training.checkpoint import load_model_from_checkpoint

    model, tokenizer, cfg = load_model_from_checkpoint(checkpoint, dtype, trust_remote_code=trust_remote_code)
    fam = get_family_class(cfg.family)
    if not fam.generates_text:
        extra = f" (its commands: {', '.join(fam.commands)})" if fam.commands else ""
        raise ValueError(f"{checkpoint}: family {cfg.family!r} does not generate text{extra}")
    return model, fam().processor(cfg, model, tokenizer), cfg


@torch.no_grad()
def generate(model, processor, prompt: str, image=None, max_new_tokens: int = 64, *, video=None, audio=None,
             **generate_kwargs) -> Answer:
    """Answer ``prompt`` about its media.

    Args:
        image: a PIL image or an image file path (str / PathLike), a list of them, or None.
        video, audio: a file path or a list of them, or None; decoded by the family
            (``processor.decode_media``: e.g. InstructBLIP samples ``num_frames`` frames per video).
        prompt: text; a kind without markers gets ``<image>\\n`` / ``<video>\\n`` / ``<audio>\\n`` per
            item in front (:func:`with_placeholders`), a kind with markers must have one per item.
            Media go to the processor in placeholder (text) order; each kind's in the order given.
        generate_kwargs: transformers ``generate`` keywords (override the greedy defaults; sampling
            flags: :meth:`mmit.serve.sampling.Sampling.generate_kwargs`).

    Returns :class:`Answer`: the decoded text (special tokens removed; cut before the first of
    ``processor.stop_strings()``) and the newly generated ids (the stop token, or the tokens of a
    stop string, included when the model emitted one).

    Raises ``ValueError`` (placeholder counts, a media type the family's prompt cannot take),
    ``OSError`` (unreadable file), :class:`~mmit.data.sample.SampleError` (``unsupported-media`` for a
    kind the family does not read, or the decoder's reason, e.g. ``undecodable-video``).
    """
    sample, given = prompt_sample(prompt, {"image": _as_list(image), "video": _as_list(video),
                                           "audio": _as_list(audio)})
    media = decode_prompt_media(processor, sample, given)
    return generate_turns(model, processor, sample.turns, media, max_new_tokens, **generate_kwargs)


def prompt_batch(model, processor, turns: Sequence[Turn], media: Sequence[Any] = ()):
    """The left-padded one-row :class:`~mmit.data.batch.Batch` of a conversation on the model's device.

    ``turns``: optional system turn, then user / assistant turns ending with a user turn (the history
    of a multi-turn chat is rendered by the family: its conversation template for LLaVA and
    Video-LLaMA, in-context exchanges for Flamingo, the joined instruction for InstructBLIP);
    ``media``: decoded media (PIL images, ...) of every placeholder in the turns, in text order.
    Raises ``ValueError`` (media the family cannot take, a conversation not ending with a user turn)."""
    item = processor.prompt(list(turns), list(media))
    return processor.collate_prompts([item]).to(model_device(model))


def generation_kwargs(processor, max_new_tokens: int = 64, **overrides) -> Dict[str, Any]:
    """transformers ``generate`` keywords: greedy, ``max_new_tokens``, the family's stop token ids,
    pad id and stop strings, then ``overrides``."""
    kwargs: Dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False,
                              "eos_token_id": processor.stop_token_ids(), "pad_token_id": processor.pad_id}
    stops = list(processor.stop_strings())
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=processor.tokenizer)
    kwargs.update(overrides)
    return kwargs


def finish_answer(processor, new: List[int], prompt_tokens: int = 0) -> Answer:
    """:class:`Answer` of the generated ids ``new``: trailing padding dropped, decoded
    (``processor.decode``) and cut at the first stop string."""
    new = list(new)
    pad = processor.tokenizer.pad_token_id
    if pad is not None and pad != processor.tokenizer.eos_token_id:
        while new and new[-1] == pad:
            new.pop()
    return Answer(cut_at_stop_strings(processor.decode(new), list(processor.stop_strings())), new, prompt_tokens)


@torch.no_grad()
def generate_turns(model, processor, turns: Sequence[Turn], media: Sequence[Any] = (), max_new_tokens: int = 64,
                   **generate_kwargs) -> Answer:
    """Answer the last user turn of a conversation (:func:`prompt_batch` for ``turns`` / ``media``)
    through the inference contract (``model.generate_tokens``). Raises as :func:`prompt_batch`."""
    batch = prompt_batch(model, processor, turns, media)
    kwargs = generation_kwargs(processor, max_new_tokens, **generate_kwargs)
    new = model.generate_tokens(batch, **kwargs)[0].tolist()
    return finish_answer(processor, new, int(batch.attention_mask[0].sum()))


def visible_text(raw: str, stops: Sequence[str], final: bool = False) -> str:
    """The part of streamed text ``raw`` that is sure to begin the final answer: leading whitespace
    dropped, cut before the first stop string, and (unless ``final``) a tail that could still grow
    into a stop string and trailing whitespace held back (the final answer is right-stripped)."""
    text = raw.lstrip()
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut].rstrip()
    if not final:
        hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        text = text[:len(text) - hold]
    return text.rstrip()


class AnswerStream:
    """The answer of :func:`stream_turns`, produced in a background thread.

    Iterating yields text pieces (``str``) as tokens arrive; joined they equal ``answer.text`` (the
    text :func:`generate_turns` gives for the same inputs and keywords). After the iteration
    ``answer`` holds the :class:`Answer`; an error raised by the generation is re-raised by the
    iteration. :meth:`cancel` stops the generation at the next token (a client that went away)."""

    def __init__(self, run, streamer, stops: Sequence[str], finish):
        import threading

        self._streamer, self._stops, self._finish = streamer, list(stops), finish
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._new: List[int] | None = None
        self.answer: Answer | None = None

        def target():
            try:
                self._new = run(self._cancelled)
            except BaseException as e:  # re-raised by __iter__ in the caller's thread
                self._error = e
            finally:
                if streamer is not None:
                    streamer.end()  # wakes the consumer even when generate failed before any token
        self._thread = threading.Thread(target=target, name="mmit-generate", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def __iter__(self):
        emitted, raw = "", ""
        try:
            for piece in (self._streamer if self._streamer is not None else ()):
                raw += piece
                now = visible_text(raw, self._stops)
                if len(now) > len(emitted) and now.startswith(emitted):
                    yield now[len(emitted):]
                    emitted = now
            self._thread.join()
            if self._error is not None:
                raise self._error
            self.answer = self._finish(self._new)
            if self.answer.text.startswith(emitted) and len(self.answer.text) > len(emitted):
                yield self.answer.text[len(emitted):]
        finally:
            self.cancel()


def stream_turns(model, processor, turns: Sequence[Turn], media: Sequence[Any] = (), max_new_tokens: int = 64, *,
                 lock=None, **generate_kwargs) -> AnswerStream:
    """:func:`generate_turns` as an :class:`AnswerStream` (transformers ``TextIteratorStreamer``;
    beam search cannot stream, so with ``num_beams > 1`` the whole answer comes as one piece).

    The prompt is built here, so bad media or a bad conversation raise ``ValueError`` /
    :class:`~mmit.data.sample.SampleError` before any thread starts. ``lock`` (a
    ``threading.Lock``, optional) is held by the generation thread while the model runs: one
    generation at a time in a server."""
    from contextlib import nullcontext

    from transformers import StoppingCriteria, TextIteratorStreamer

    batch = prompt_batch(model, processor, turns, media)
    kwargs = generation_kwargs(processor, max_new_tokens, **generate_kwargs)
    streamer = None
    if int(kwargs.get("num_beams", 1)) == 1:
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs["streamer"] = streamer

    class _Cancelled(StoppingCriteria):
        def __init__(self, event):
            self.event = event

        def __call__(self, input_ids, scores, **kw):
            return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)

    def run(cancelled) -> List[int]:
        from transformers import StoppingCriteriaList

        with (lock if lock is not None else nullcontext()), torch.no_grad():
            if cancelled.is_set():
                return []
            crit = StoppingCriteriaList(list(kwargs.pop("stopping_criteria", [])) + [_Cancelled(cancelled)])
            return model.generate_tokens(batch, stopping_criteria=crit, **kwargs)[0].tolist()

    prompt_tokens = int(batch.attention_mask[0].sum())
    return AnswerStream(run, streamer, processor.stop_strings(),
                        lambda new: finish_answer(processor, new, prompt_tokens))

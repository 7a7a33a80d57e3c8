"""Video-LLaMA samples and prompts -> typed batches (arXiv 2306.02858).

Text: each media placeholder of a turn (and the newline right after it) becomes Video-LLaMA's wrapper,
with one patch token that is then repeated once per query token:

* ``<video>`` -> ``<Video><ImageHere></Video> The video contains 8 frames sampled at 0.0, 1.2, ... seconds. ``
  (``video_instruct_dataset.py::preprocess_multimodal`` with ``load_video``'s message; the message only
  with ``frame_time_message``), ``M_v`` copies of ``<ImageHere>``;
* ``<image>`` -> ``<Image><ImageHere></Image> `` (an image is a 1-frame video), ``M_v`` copies;
* ``<audio>`` -> ``<Audio><AudioHere></Audio> ``, ``M_a`` copies of ``<AudioHere>`` (Video-LLaMA's demo
  splices audio with a bare ``<ImageHere>``; a token of its own lets both branches share a prompt).

The turns are then rendered with the conversation template (``video-llama``: Vicuna's ``###`` format;
``video-llama-2``: LLaMA-2-Chat) and labelled from its ``{% generation %}`` mask
(:mod:`mmit.templates.labels`): only the answers (and their end-of-turn text) are learned. Media spans
are never cut: a sample whose last media span ends beyond ``max_length`` is a ``too-long-for-images``
skip; text after it is truncated.

Media (decoded by :meth:`VideoLlamaProcessor.decode_media`): images -> RGB PIL; videos -> ``num_frames``
frames (:func:`mmit.data.video.decode_video`, ``frame_sampling``); audio (a wav/flac/mp3 or the track of
a video) -> 16 kHz mono waveform (:func:`mmit.data.audio.decode_audio`, ``no_audio`` policy), then the
audio encoder's feature extractor. Batch: ``media["image"]`` ``[I,3,H,W]``, ``media["video"]``
``[V,F,3,H,W]``, ``media["audio"]`` ``[A,C,*input_shape]``, each with its span start in ``input_ids``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from mmit.constants import IGNORE_INDEX, MEDIA_PLACEHOLDERS
from mmit.data.batch import Batch, media_tensors, pad_rows, span_starts
from mmit.data.collate import expand_image_tokens, truncate_keeping_media
from mmit.data.media import MAX_PIXELS, decode_image
from mmit.data.processor import Processor, media_bytes, unsupported_media
from mmit.data.sample import Sample, SampleError, Turn
from mmit.data.video import DecodedVideo, decode_video
from mmit.families.video_llama.model import AUDIO_TOKEN, VISUAL_TOKEN
from mmit.templates import get_template, stop_token_ids
from mmit.templates.labels import answer_ids_in_context, encode_conversation, encode_prompt

_PLACEHOLDER = re.compile("|".join(re.escape(MEDIA_PLACEHOLDERS[k]) + r"\n?" for k in ("image", "video", "audio")))
_KIND = {MEDIA_PLACEHOLDERS[k]: k for k in ("image", "video", "audio")}


def frame_time_message(video: DecodedVideo) -> str:
    """Video-LLaMA's ``load_video`` message: ``"The video contains N frames sampled at t1, ..., tN
    seconds. "`` with each ``t = round(index / fps, 1)`` (the frame's timestamp when fps is unknown)."""
    if video.fps > 0:
        secs = [round(i / video.fps, 1) for i in video.indices]
    else:
        secs = [round(t, 1) for t in video.timestamps]
    return f"The video contains {len(secs)} frames sampled at {', '.join(str(s) for s in secs)} seconds. "


def media_kind_of(value: Any) -> str:
    """``image`` (PIL image), ``video`` (:class:`DecodedVideo`) or ``audio`` (1-D tensor waveform).
    Raises ``ValueError`` for anything else."""
    if isinstance(value, DecodedVideo):
        return "video"
    if torch.is_tensor(value) and value.dim() == 1:
        return "audio"
    if hasattr(value, "convert") and hasattr(value, "size"):
        return "image"
    raise ValueError(f"decoded media must be a PIL image, a DecodedVideo or a 1-D waveform, got {type(value).__name__}")


class VideoLlamaProcessor(Processor):
    """Sample -> ``{"id", "input_ids" [T], "labels" [T], "media": [(kind, tensor)] in text order}``;
    items -> :class:`~mmit.data.batch.Batch` (module docstring). Picklable; holds only its arguments.

    Args:
        tokenizer: the LLM tokenizer with ``<ImageHere>`` and ``<AudioHere>`` as single tokens.
        template: conversation template name (``video-llama``, ``video-llama-2``, ...).
        image_transform: ``list[PIL] -> FloatTensor [n,3,H,W]`` (the tower's processor).
        audio_features: the audio encoder's feature extractor (``[waveforms] -> [n,C,...]``), or None
            without an audio branch (audio media is then an ``unsupported-media`` skip).
        num_video_tokens / num_audio_tokens: M_v / M_a, LLM tokens per image-or-video / audio item.
        num_frames, frame_sampling, frame_time_message: video decoding and the frame-time message.
        sample_rate: Hz the waveform is decoded at (the audio encoder's rate); no_audio: ``skip`` or
            ``silence`` for a video without an audio track.
        max_length: token budget per sample, media tokens included; overflow: ``skip`` or ``error``.
    """

    def __init__(self, tokenizer, template: str, image_transform: Callable, audio_features: Optional[Callable],
                 num_video_tokens: int, num_audio_tokens: int, num_frames: int, frame_sampling: str,
                 frame_time_message: bool, sample_rate: int, no_audio: str, max_length: int,
                 overflow: str = "skip", max_pixels: int = MAX_PIXELS):
        self.tokenizer, self.template = tokenizer, template
        self.image_transform, self.audio_features = image_transform, audio_features
        self.num_video_tokens, self.num_audio_tokens = int(num_video_tokens), int(num_audio_tokens)
        self.num_frames, self.frame_sampling, self.frame_time_message = int(num_frames), frame_sampling, frame_time_message
        self.sample_rate, self.no_audio = int(sample_rate), no_audio
        self.max_length, self.overflow, self.max_pixels = int(max_length), overflow, max_pixels
        self.visual_token_id = tokenizer.convert_tokens_to_ids(VISUAL_TOKEN)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)

    # -- media ----------------------------------------------------------------------------------------
    def decode_media(self, sample: Sample) -> List[Any]:
        """The sample's media decoded, in ``sample.media`` order: PIL images, :class:`DecodedVideo`,
        1-D float32 waveforms at ``sample_rate`` Hz. Raises SampleError (``missing-media``,
        ``unsupported-media``, ``undecodable-video``, ``undecodable-audio``, ``no-audio-track``, ...)."""
        from mmit.data.audio import decode_audio

        kinds = ("image", "video") if self.audio_features is None else ("image", "video", "audio")
        unsupported_media(sample, kinds, "video-llama" + ("" if self.audio_features is not None else
                                                          " without an audio branch (model.audio_encoder)"))
        out = []
        for j, m in enumerate(sample.media):
            data, where = media_bytes(sample, j)
            if m.kind == "image":
                out.append(decode_image(data, where, self.max_pixels))
            elif m.kind == "video":
                out.append(decode_video(data, where, self.num_frames, self.max_pixels, sampling=self.frame_sampling))
            else:
                out.append(decode_audio(data, where, self.sample_rate, no_audio=self.no_audio)[0])
        return out

    def _tensor(self, kind: str, value: Any) -> torch.Tensor:
        if kind == "image":
            return self.image_transform([value])[0]
        if kind == "video":
            return self.image_transform(list(value.frames))
        return self.audio_features([value], sample_rate=self.sample_rate)[0]

    def render(self, turns: Sequence[Turn], media: Sequence[Any], sample_id: str) -> Tuple[List[Turn], List[Tuple[str, Any]]]:
        """``(turns with the placeholders replaced by Video-LLaMA's wrappers, [(kind, value)] in text
        order)``. ``media``: decoded values; the k-th placeholder of a kind takes the k-th value of that
        kind. Raises SampleError (``<kind>-count-mismatch``) when counts differ."""
        by_kind: Dict[str, list] = {"image": [], "video": [], "audio": []}
        for v in media:
            by_kind[media_kind_of(v)].append(v)
        used = {k: 0 for k in by_kind}
        order: List[Tuple[str, Any]] = []

        def wrap(match) -> str:
            kind = _KIND[match.group(0).rstrip("\n")]
            if used[kind] >= len(by_kind[kind]):
                raise SampleError(f"sample {sample_id!r}: more {MEDIA_PLACEHOLDERS[kind]} placeholders than "
                                  f"{kind} items ({len(by_kind[kind])})", f"{kind}-count-mismatch")
            value = by_kind[kind][used[kind]]
            used[kind] += 1
            order.append((kind, value))
            if kind == "image":
                return f"<Image>{VISUAL_TOKEN}</Image> "
            if kind == "audio":
                return f"<Audio>{AUDIO_TOKEN}</Audio> "
            return f"<Video>{VISUAL_TOKEN}</Video> " + (frame_time_message(value) if self.frame_time_message else "")

        out = [Turn(t.role, _PLACEHOLDER.sub(wrap, t.content)) for t in turns]
        for kind, vals in by_kind.items():
            if used[kind] != len(vals):
                raise SampleError(f"sample {sample_id!r}: {used[kind]} {MEDIA_PLACEHOLDERS[kind]} placeholder(s) "
                                  f"but {len(vals)} {kind} item(s)", f"{kind}-count-mismatch")
        return out, order

    def _expand(self, ids: List[int], labels: Optional[List[int]]):
        ids, labels, end_v = expand_image_tokens(ids, labels, self.visual_token_id, self.num_video_tokens)
        ids, labels, end_a = expand_image_tokens(ids, labels, self.audio_token_id, self.num_audio_tokens)
        end = 0
        for j, t in enumerate(ids):  # spans shift when both kinds are present: recompute the last end
            if t in (self.visual_token_id, self.audio_token_id):
                end = j + 1
        return ids, labels, end

    # -- training -------------------------------------------------------------------------------------
    def __call__(self, sample: Sample) -> Dict[str, Any]:
        """Raises SampleError (media reasons of :meth:`decode_media`, ``too-long-for-images``,
        ``no-supervised-tokens``, ``label-misaligned``, ...) naming the sample id."""
        sample.validate()
        turns, order = self.render(sample.turns, self.decode_media(sample), sample.id)
        ids, labels = encode_conversation(self.tokenizer, turns, self.template, sample.id)
        ids, labels, last_end = self._expand(ids, labels)
        ids, labels = truncate_keeping_media(ids, labels, last_end, self.max_length, sample.id,
                                             f"{len(order)} media item(s)")
        return {"id": sample.id, "input_ids": torch.tensor(ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "media": [(kind, self._tensor(kind, v)) for kind, v in order]}

    def _batch(self, items: Sequence[Dict[str, Any]], left: bool) -> Batch:
        input_ids, mask = pad_rows([it["input_ids"] for it in items], self.tokenizer.pad_token_id, left)
        labels = None
        if all("labels" in it for it in items):
            labels, _ = pad_rows([it["labels"] for it in items], IGNORE_INDEX, left)
        visual = [(k, t) for it in items for k, t in it["media"] if k != "audio"]
        audio = [t for it in items for k, t in it["media"] if k == "audio"]
        media = {}
        spans = span_starts(input_ids, self.visual_token_id, self.num_video_tokens)
        for kind in ("image", "video"):
            rows = [(t, s) for (k, t), s in zip(visual, spans) if k == kind]
            if rows:
                media[kind] = media_tensors(torch.stack([t for t, _ in rows]), [s for _, s in rows])
        if audio:
            media["audio"] = media_tensors(torch.stack(audio), span_starts(input_ids, self.audio_token_id,
                                                                           self.num_audio_tokens))
        return Batch(ids=[str(it["id"]) for it in items], input_ids=input_ids, attention_mask=mask,
                     labels=labels, media=media)

    def collate(self, items: Sequence[Dict[str, Any]]) -> Batch:
        """Right-pad items (module docstring for the media). Raises ``ValueError`` on no items."""
        return self._batch(items, left=False)

    # -- inference ------------------------------------------------------------------------------------
    def prompt(self, turns: Sequence[Turn], media: Sequence[Any] = (), sample_id: str = "prompt") -> Dict[str, Any]:
        """The prompt (template + generation prompt, media tokens expanded) with decoded ``media``
        (PIL images, DecodedVideo, waveforms; placeholder order within each kind)."""
        rendered, order = self.render(turns, media, sample_id)
        raw = encode_prompt(self.tokenizer, rendered, self.template)
        ids, _, _ = self._expand(raw, None)
        return {"id": sample_id, "input_ids": torch.tensor(ids, dtype=torch.long), "raw_ids": raw,
                "turns": rendered, "media": [(kind, self._tensor(kind, v)) for kind, v in order]}

    def collate_prompts(self, items: Sequence[Dict[str, Any]]) -> Batch:
        return self._batch([{k: v for k, v in it.items() if k != "labels"} for it in items], left=True)

    def candidate_ids(self, turns: Sequence[Turn], candidate: str, score_end_of_turn: bool,
                      item: Optional[Dict[str, Any]] = None, sample_id: str = "prompt") -> List[int]:
        """In-context answer tokens after the prompt ``item`` (its rendered turns; without an item the
        turns must hold no media placeholder)."""
        if item is None:
            rendered, raw = self.render(turns, (), sample_id)[0], None
        else:
            rendered, raw = item["turns"], item["raw_ids"]
        return answer_ids_in_context(self.tokenizer, rendered, self.template, candidate, score_end_of_turn, raw,
                                     sample_id)

    def stop_token_ids(self) -> List[int]:
        return stop_token_ids(self.tokenizer, self.template)

    def stop_strings(self) -> List[str]:
        """``###`` for the Vicuna template (not one token in every vocabulary)."""
        return list(get_template(self.template).stop_strings)


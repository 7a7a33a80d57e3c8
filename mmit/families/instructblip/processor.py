"""InstructBLIP samples and prompts -> typed batches (:class:`~mmit.data.processor.Processor`).

A :class:`~mmit.data.sample.Sample` becomes one (instruction, answer) pair, as LAVIS's
``text_input`` / ``text_output``: the answer is the last assistant turn; the instruction is the text of
every turn before it (system included), media placeholders removed, joined by newlines (for the
usual single exchange: the user's question). InstructBLIP uses no chat template. Images and video
frames all go in front of the text (the InstructBLIP layout, :mod:`mmit.families.instructblip.model`),
in media order: M query tokens per image and per video frame.

Batch: ``media["image"]`` ``[I,3,H,W]``, ``media["video"]`` ``[V,F,3,H,W]`` (F = ``qformer.num_frames``),
``extra["qformer_input_ids"]`` / ``extra["qformer_attention_mask"]`` ``[B,L]`` (each sample's
instruction in the Q-Former's tokenizer; the model repeats it per image and frame).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from mmit.constants import IGNORE_INDEX, MEDIA_PLACEHOLDERS
from mmit.data.batch import Batch, MediaTensors, pad_rows
from mmit.data.media import MAX_PIXELS, decode_image
from mmit.data.processor import Processor, media_bytes, unsupported_media
from mmit.data.sample import Sample, SampleError, Turn
from mmit.data.video import DecodedVideo, decode_video


def strip_placeholders(text: str) -> str:
    for ph in MEDIA_PLACEHOLDERS.values():
        text = text.replace(ph, "")
    return text.strip()


def instruction_text(turns: Sequence[Turn]) -> str:
    """The instruction of ``turns`` (module docstring): every turn's text, placeholders removed."""
    return "\n".join(p for p in (strip_placeholders(t.content) for t in turns) if p)


def instruction_and_answer(sample: Sample):
    """``(instruction, answer)`` of a sample (module docstring). Raises SampleError (reason
    ``no-answer``) when the last turn is not an assistant turn, ``no-supervised-tokens`` when it is empty."""
    turns = list(sample.turns)
    if not turns or turns[-1].role != "assistant":
        raise SampleError(f"sample {sample.id!r}: the last turn must be an assistant answer", "no-answer")
    answer = turns[-1].content.strip()
    if not answer:
        raise SampleError(f"sample {sample.id!r}: the last assistant answer is empty", "no-supervised-tokens")
    return instruction_text(turns[:-1]), answer


class InstructBlipProcessor(Processor):
    """Sample -> item; items -> :class:`~mmit.data.batch.Batch` (module docstring for the layout).

    The instruction is left-truncated to ``max_text_length`` LLM tokens and to ``max_text_length``
    Q-Former tokens (special tokens kept; LAVIS sets ``truncation_side="left"`` on both tokenizers, so
    a long instruction keeps its end, the question). The answer follows LAVIS too: decoder-only LLMs
    learn ``(answer + eos)[:max_output_length - 1]`` (LAVIS tokenizes ``answer + "</s>"`` with BOS to
    ``max_output_txt_len`` and drops the BOS: a long answer keeps 255 tokens and no eos); Flan-T5
    learns the answer right-truncated to ``max_output_length`` tokens with its ``</s>`` kept. Picklable; holds nothing
    but its construction arguments (the Q-Former settings come from the model's ``QFormerConfig``).
    Media: images and videos (:meth:`decode_media`); audio is an ``unsupported-media`` skip.
    """

    family = "InstructBLIP"

    def __init__(self, tokenizer, qformer_tokenizer, image_transform, qformer_cfg, image_token_id: int,
                 is_encoder_decoder: bool, overflow: str = "skip", max_pixels: int = MAX_PIXELS):
        if qformer_cfg.text_input and qformer_tokenizer is None:
            raise ValueError("the Q-Former reads the instruction but no Q-Former tokenizer is loaded "
                             "(model.qformer.tokenizer)")
        self.tokenizer = tokenizer
        self.left_tokenizer = copy.deepcopy(tokenizer)
        self.left_tokenizer.truncation_side = "left"
        self.qformer_tokenizer = qformer_tokenizer
        self.left_qformer_tokenizer = None
        if qformer_tokenizer is not None:
            self.left_qformer_tokenizer = copy.deepcopy(qformer_tokenizer)
            self.left_qformer_tokenizer.truncation_side = "left"
        self.image_transform = image_transform
        self.num_query_tokens, self.image_token_id = int(qformer_cfg.num_query_tokens), int(image_token_id)
        self.is_encoder_decoder, self.text_input = bool(is_encoder_decoder), bool(qformer_cfg.text_input)
        self.max_text_length = int(qformer_cfg.max_text_length)
        self.max_output_length = int(qformer_cfg.max_output_length)
        self.num_frames, self.overflow, self.max_pixels = int(qformer_cfg.num_frames), overflow, max_pixels

    @property
    def qformer_pad_id(self) -> int:
        t = self.qformer_tokenizer
        return 0 if t is None or t.pad_token_id is None else int(t.pad_token_id)

    def decode_media(self, sample: Sample) -> List[Any]:
        """The sample's media decoded in media order: an image -> RGB PIL image, a video ->
        :class:`~mmit.data.video.DecodedVideo` of ``num_frames`` uniformly spaced RGB PIL frames
        (:func:`~mmit.data.video.decode_video`). Every kind is checked before decoding.

        Raises :class:`SampleError` naming the sample: ``unsupported-media`` (audio, point clouds),
        ``missing-media``, ``undecodable-image``, ``undecodable-video``, ``no-video-decoder``,
        ``image-too-large``."""
        unsupported_media(sample, ("image", "video"), self.family_name)
        out: List[Any] = []
        for j, m in enumerate(sample.media):
            data, where = media_bytes(sample, j)
            if m.kind == "image":
                out.append(decode_image(data, where, self.max_pixels))
            else:
                out.append(decode_video(data, where, self.num_frames, self.max_pixels))
        return out

    def frames(self, media: Sequence[Any]) -> List[Tuple[str, list]]:
        """``[(kind, [PIL frames])]`` of decoded media (:meth:`decode_media`): ``("image", [im])`` for a
        PIL image, ``("video", frames)`` for a :class:`~mmit.data.video.DecodedVideo` (PIL frames, or
        a uint8 ``[N,H,W,3]`` tensor turned into PIL). Raises ``ValueError`` for anything else (audio
        waveforms) or a video whose frame count is not ``num_frames`` (training's layout)."""
        from PIL import Image

        out: List[Tuple[str, list]] = []
        for i, x in enumerate(media):
            if isinstance(x, Image.Image):
                out.append(("image", [x]))
            elif isinstance(x, DecodedVideo):
                fr = x.frames
                fr = [Image.fromarray(f.numpy()) for f in fr] if isinstance(fr, torch.Tensor) else list(fr)
                if len(fr) != self.num_frames:
                    raise ValueError(f"media {i}: a video of {len(fr)} frames, InstructBLIP reads {self.num_frames} "
                                     "per video (qformer.num_frames); decode it with processor.decode_media")
                out.append(("video", fr))
            else:
                raise ValueError(f"media {i}: InstructBLIP prompts take PIL images and DecodedVideo, "
                                 f"not {type(x).__name__}")
        return out

    def encode(self, sample_id: str, instruction: str, answer: Optional[str], media: list) -> Dict[str, Any]:
        """Tokenize one (instruction, answer) pair with ``media`` (``[(kind, [PIL frames])]``, :meth:`frames`).
        ``answer`` None gives a generation prompt (no labels)."""
        n_frames = sum(len(frames) for _, frames in media)
        instr = self.left_tokenizer(instruction, truncation=True, max_length=self.max_text_length)["input_ids"]
        ids = [self.image_token_id] * (n_frames * self.num_query_tokens) + list(instr)
        item: Dict[str, Any] = {"id": sample_id}
        if answer is not None:
            if self.is_encoder_decoder:
                labels = list(self.tokenizer(answer, truncation=True, max_length=self.max_output_length)["input_ids"])
            else:
                ans = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                labels = [IGNORE_INDEX] * len(ids) + list(ans)[: self.max_output_length - 1]
                ids = ids + labels[len(ids):]
            item["labels"] = torch.tensor(labels, dtype=torch.long)
        item["input_ids"] = torch.tensor(ids, dtype=torch.long)
        item["media"] = [(kind, self.image_transform(frames)) for kind, frames in media]
        if self.text_input:
            q = self.left_qformer_tokenizer(instruction, truncation=True, max_length=self.max_text_length)["input_ids"]
            item["qformer_input_ids"] = torch.tensor(q, dtype=torch.long)
        return item

    def __call__(self, sample: Sample) -> Dict[str, Any]:
        """Raises SampleError (``no-answer``, ``undecodable-image``, ``no-video-decoder``,
        ``unsupported-media``, ``missing-media``, ``no-supervised-tokens``, ...) naming the sample id."""
        sample.validate()
        instruction, answer = instruction_and_answer(sample)
        return self.encode(sample.id, instruction, answer, self.frames(self.decode_media(sample)))

    def _batch(self, items: Sequence[Dict[str, Any]], left: bool) -> Batch:
        input_ids, mask = pad_rows([it["input_ids"] for it in items], self.tokenizer.pad_token_id, left)
        labels = None
        if all("labels" in it for it in items):
            labels, _ = pad_rows([it["labels"] for it in items], IGNORE_INDEX, left)
        per_kind: Dict[str, list] = {"image": [], "video": []}
        for b, it in enumerate(items):
            pos = int(input_ids.shape[1] - it["input_ids"].shape[0]) if left else 0
            for kind, px in it["media"]:
                per_kind[kind].append((px[0] if kind == "image" else px, b, pos))
                pos += int(px.shape[0]) * self.num_query_tokens
        media = {k: MediaTensors(torch.stack([v for v, _, _ in rows]), torch.tensor([b for _, b, _ in rows]),
                                 torch.tensor([p for _, _, p in rows])) for k, rows in per_kind.items() if rows}
        extra = {}
        if all("qformer_input_ids" in it for it in items):
            extra["qformer_input_ids"], extra["qformer_attention_mask"] = pad_rows(
                [it["qformer_input_ids"] for it in items], self.qformer_pad_id)
        return Batch(ids=[str(it["id"]) for it in items], input_ids=input_ids, attention_mask=mask, labels=labels,
                     media=media, extra=extra)

    def collate(self, items: Sequence[Dict[str, Any]]) -> Batch:
        """Right-pad items: ``input_ids``/``attention_mask`` ``[B,T]``, ``labels`` ``[B,T]`` or ``[B,T_dec]``
        (-100 on padding), media and Q-Former ids as in the module docstring. Raises ``ValueError`` on no items."""
        return self._batch(items, left=False)

    # -- inference ---------------------------------------------------------------------------------
    def prompt(self, turns: Sequence[Turn], media: Sequence[Any] = (), sample_id: str = "prompt") -> Dict[str, Any]:
        """The instruction of ``turns`` with ``media`` in front, in order, as in training: M query
        tokens per PIL image, ``num_frames`` x M per :class:`~mmit.data.video.DecodedVideo`; no
        template (InstructBLIP). Raises ``ValueError`` for other media (:meth:`frames`)."""
        return self.encode(sample_id, instruction_text(turns), None, self.frames(media))

    def collate_prompts(self, items: Sequence[Dict[str, Any]]) -> Batch:
        return self._batch([{k: v for k, v in it.items() if k != "labels"} for it in items], left=True)

    def candidate_ids(self, turns: Sequence[Turn], candidate: str, score_end_of_turn: bool,
                      item: Optional[Dict[str, Any]] = None, sample_id: str = "prompt") -> List[int]:
        """The answer's tokens as training supervises them (eos only with ``score_end_of_turn``).
        Raises ``ValueError`` for a candidate without tokens."""
        ids = list(self.tokenizer(candidate, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"sample {sample_id!r}: candidate {candidate!r} has no tokens")
        return ids + [self.tokenizer.eos_token_id] if score_end_of_turn else ids

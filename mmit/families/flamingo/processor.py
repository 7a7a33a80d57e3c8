"""Otter's instruction format (arXiv 2305.03726) over samples with in-context examples -> typed batches.

Each user/assistant exchange of a :class:`~mmit.data.sample.Sample` (the MIMIC-IT reader writes the
in-context examples first, then the query) becomes one chunk, as Otter's ``simple`` format
(``pipeline/mimicit_utils/mimicit_dataset.py``)::

    <image>User:{instruction} GPT:<answer>{answer}<|endofchunk|>

with one ``<image>`` per image placeholder of the user turn, at the start of the chunk (a system
turn, if any, goes before the first chunk). Labels, as Otter's ``masking()``: the answer tokens and
their ``<|endofchunk|>``; everything else (BOS, ``<image>``, ``User:``/``GPT:`` text, ``<answer>``) is
-100. With ``supervise_in_context`` false only the last (query) answer is learned. Text between special
tokens is tokenized piece by piece, which is what a fast tokenizer does with the whole string.

Document mode (a sample with ``meta["document"]``, e.g. from the ``mmc4`` reader; MMC4 arXiv 2304.06939):
rendered as OpenFlamingo renders MMC4 (arXiv 2308.01390, ``open_flamingo/train/data.py``
``preprocess_interleaved``): the document text (the non-system turns joined) with each ``<image>`` kept as
the ``<image>`` token, ``<|endofchunk|>`` before every ``<image>`` after the first and at the end, then
EOS, whitespace next to a placeholder dropped::

    <s>{text before the first image}<image>{chunk 1}<|endofchunk|><image>{chunk 2}<|endofchunk|></s>

Labels, as OpenFlamingo's MMC4 loss (``train_utils.py``): ``<image>`` and padding -100, every token before
the first ``<image>`` -100, every token after an ``<|endofchunk|>`` up to the next ``<image>`` -100 (here
only the final EOS); the chunk text and its ``<|endofchunk|>`` are learned. ``max_length``: a document
that does not fit is cut after its last whole chunk that fits (the images of the dropped chunks are
dropped too, no EOS); one whose first chunk does not fit is a ``too-long`` skip. OpenFlamingo instead
cuts at ``max_tokens`` anywhere, leaving images without their text.

Batch: ``input_ids`` ``[B,T]`` with one ``<image>`` token per image (its position is the image's
``position``), ``media["image"]`` ``[I,3,H,W]``; no extras. Prompts for inference end with
``User:{question} GPT:<answer>``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from mmit.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, MEDIA_PLACEHOLDERS
from mmit.data.batch import Batch, MediaTensors, pad_rows
from mmit.data.media import MAX_PIXELS, decode_image, read_media_bytes
from mmit.data.processor import Processor, require_images
from mmit.data.sample import Sample, SampleError, Turn

#: Otter's special tokens: the end of a chunk and the start of an answer (``<image>`` is the media token).
ENDOFCHUNK = "<|endofchunk|>"
ANSWER = "<answer>"


def _text(content: str) -> str:
    for ph in MEDIA_PLACEHOLDERS.values():
        content = content.replace(ph, "")
    return content.strip()


def exchanges(turns: Sequence[Turn], sample_id: str):
    """``(system text, [(n_images, instruction, answer or None)])`` of alternating turns; the last
    exchange has answer None when the turns end with a user turn (a prompt)."""
    turns = list(turns)
    system = ""
    if turns and turns[0].role == "system":
        system, turns = _text(turns[0].content), turns[1:]
    out = []
    for k in range(0, len(turns), 2):
        user = turns[k]
        if user.role != "user":
            raise SampleError(f"sample {sample_id!r}: turn {k} is {user.role!r}, expected 'user'", "roles-not-alternating")
        answer = turns[k + 1].content.strip() if k + 1 < len(turns) else None
        out.append((user.content.count(IMAGE_PLACEHOLDER), _text(user.content), answer))
    return system, out


class OtterProcessor(Processor):
    """Sample -> ``{"id", "input_ids" [T], "labels" [T], "pixel_values" [n,3,H,W] or None}``; items ->
    :class:`~mmit.data.batch.Batch` (module docstring). Picklable; holds only its arguments.

    Args:
        tokenizer: the LLM tokenizer with ``<image>``, ``<|endofchunk|>`` and ``<answer>`` as single tokens.
        image_transform: ``list[PIL.Image] -> FloatTensor [n,3,H,W]``.
        max_length: token budget; a chat sample longer than it is a ``too-long`` skip (never cut: cutting
            would drop the query or leave an image without its text); a document is cut after its last
            whole chunk that fits (module docstring).
        supervise_in_context: learn every answer (True, Otter's masking) or only the query's.
    Media: images only (the default :meth:`~mmit.data.processor.Processor.decode_media`).
    """

    family = "the flamingo family"

    def __init__(self, tokenizer, image_transform, max_length: int, supervise_in_context: bool = True,
                 overflow: str = "skip", max_pixels: int = MAX_PIXELS):
        self.tokenizer, self.image_transform = tokenizer, image_transform
        self.max_length, self.supervise_in_context = int(max_length), bool(supervise_in_context)
        self.overflow, self.max_pixels = overflow, max_pixels
        ids = tokenizer.convert_tokens_to_ids([IMAGE_PLACEHOLDER, ENDOFCHUNK, ANSWER])
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ValueError(f"the tokenizer lacks one of {IMAGE_PLACEHOLDER}, {ENDOFCHUNK}, {ANSWER}")
        self.media_token_id, self.endofchunk_token_id, self.answer_token_id = (int(i) for i in ids)

    def _tok(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def encode(self, turns: Sequence[Turn], sample_id: str):
        """``(input_ids, labels)`` lists for ``turns`` (labels None for a prompt ending with a user turn)."""
        system, chunks = exchanges(turns, sample_id)
        ids: List[int] = [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]
        labels: List[int] = [IGNORE_INDEX] * len(ids)
        if system:
            s = self._tok(system + "\n")
            ids += s
            labels += [IGNORE_INDEX] * len(s)
        for k, (n_img, instruction, answer) in enumerate(chunks):
            head = [self.media_token_id] * n_img + self._tok(f"User:{instruction} GPT:") + [self.answer_token_id]
            ids += head
            labels += [IGNORE_INDEX] * len(head)
            if answer is None:
                break
            body = self._tok(answer) + [self.endofchunk_token_id]
            learn = self.supervise_in_context or k == len(chunks) - 1
            ids += body
            labels += body if learn else [IGNORE_INDEX] * len(body)
        prompt = bool(chunks) and chunks[-1][2] is None
        return ids, (None if prompt else labels)

    def encode_document(self, text: str, sample_id: str):
        """``(input_ids, labels, n_images)`` of a document (module docstring, document mode): lists of
        token ids and labels, and how many of its images (the first ones) survive the ``max_length`` cut.

        Raises SampleError: ``no-supervised-tokens`` (no ``<image>``: OpenFlamingo learns nothing before
        the first image), ``too-long`` (the text before the first image plus the first chunk exceed
        ``max_length``)."""
        prefix, *chunks = text.split(IMAGE_PLACEHOLDER)
        if not chunks:
            raise SampleError(f"sample {sample_id!r}: document without an <image>: nothing is supervised "
                              "before the first image", "no-supervised-tokens")
        ids: List[int] = [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]
        ids += self._tok(prefix.rstrip())
        labels: List[int] = [IGNORE_INDEX] * len(ids)
        kept = 0
        for chunk in chunks:
            body = self._tok(chunk.strip()) + [self.endofchunk_token_id]
            if len(ids) + 1 + len(body) > self.max_length:
                break
            ids += [self.media_token_id] + body
            labels += [IGNORE_INDEX] + body
            kept += 1
        if kept == 0:
            raise SampleError(f"sample {sample_id!r}: the text before the first image and the first chunk "
                              f"exceed max_length {self.max_length}", "too-long")
        if kept == len(chunks) and self.tokenizer.eos_token_id is not None and len(ids) < self.max_length:
            ids.append(self.tokenizer.eos_token_id)
            labels.append(IGNORE_INDEX)
        return ids, labels, kept

    def _document(self, sample: Sample) -> Dict[str, Any]:
        text = " ".join(t.content for t in sample.turns if t.role != "system" and t.content)
        ids, labels, kept = self.encode_document(text, sample.id)
        images = self._images(sample, kept)
        return {"id": sample.id, "input_ids": torch.tensor(ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long), "pixel_values": self.image_transform(images)}

    def _images(self, sample: Sample, limit: Optional[int] = None):
        out = []
        for m in sample.media[:limit]:
            if m.kind != "image":
                raise SampleError(f"sample {sample.id!r}: media kind {m.kind!r} is not supported by the flamingo "
                                  "family yet", "unsupported-media")
            data = m.data if m.data is not None else read_media_bytes(m.path)
            out.append(decode_image(data, f"sample {sample.id!r} ({m.path})", self.max_pixels))
        return out

    def __call__(self, sample: Sample) -> Dict[str, Any]:
        """Raises SampleError (``no-answer``, ``too-long``, ``no-supervised-tokens``, ``undecodable-image``,
        ``image-count-mismatch``, ...) naming the sample id. A ``meta["document"]`` sample is rendered in
        document mode (module docstring)."""
        sample.validate()
        if sample.meta.get("document"):
            return self._document(sample)
        if sample.turns[-1].role != "assistant":
            raise SampleError(f"sample {sample.id!r}: the last turn must be an assistant answer", "no-answer")
        ids, labels = self.encode(sample.turns, sample.id)
        if len(ids) > self.max_length:
            raise SampleError(f"sample {sample.id!r}: {len(ids)} tokens exceed max_length {self.max_length} "
                              "(in-context samples are never cut)", "too-long")
        if all(l == IGNORE_INDEX for l in labels):
            raise SampleError(f"sample {sample.id!r}: no supervised token", "no-supervised-tokens")
        images = self._images(sample)
        return {"id": sample.id, "input_ids": torch.tensor(ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "pixel_values": self.image_transform(images) if images else None}

    def _batch(self, items: Sequence[Dict[str, Any]], left: bool) -> Batch:
        input_ids, mask = pad_rows([it["input_ids"] for it in items], self.pad_id, left)
        labels = pad_rows([it["labels"] for it in items], IGNORE_INDEX, left)[0] if all(
            "labels" in it for it in items) else None
        media = {}
        pixels = [it["pixel_values"] for it in items if it.get("pixel_values") is not None]
        if pixels:
            where = ((input_ids == self.media_token_id) & (mask == 1)).nonzero()  # row-major: sample, text order
            values = torch.cat(pixels)
            if where.shape[0] != values.shape[0]:
                raise ValueError(f"{where.shape[0]} <image> tokens but {values.shape[0]} images in the batch")
            media["image"] = MediaTensors(values, where[:, 0], where[:, 1])
        return Batch(ids=[str(it["id"]) for it in items], input_ids=input_ids, attention_mask=mask, labels=labels,
                     media=media)

    def collate(self, items: Sequence[Dict[str, Any]]) -> Batch:
        """Right-padded training batch. Raises ``ValueError`` on no items."""
        return self._batch(items, left=False)

    # -- inference ---------------------------------------------------------------------------------
    def prompt(self, turns: Sequence[Turn], media: Sequence[Any] = (), sample_id: str = "prompt") -> Dict[str, Any]:
        """Earlier exchanges (in-context examples) rendered with their answers, the last user turn
        ending with ``GPT:<answer>``; ``media`` are the PIL images of every placeholder, in order
        (``ValueError`` for video or audio: the family reads images only)."""
        images = require_images(media, "flamingo")
        ids, _ = self.encode(turns, sample_id)
        return {"id": sample_id, "input_ids": torch.tensor(ids, dtype=torch.long),
                "pixel_values": self.image_transform(list(images)) if images else None}

    def collate_prompts(self, items: Sequence[Dict[str, Any]]) -> Batch:
        return self._batch([{k: v for k, v in it.items() if k != "labels"} for it in items], left=True)

    def candidate_ids(self, turns: Sequence[Turn], candidate: str, score_end_of_turn: bool,
                      item: Optional[Dict[str, Any]] = None, sample_id: str = "prompt") -> List[int]:
        """The answer's tokens as training supervises them (``<|endofchunk|>`` with ``score_end_of_turn``)."""
        ids = self._tok(candidate.strip())
        if not ids:
            raise ValueError(f"sample {sample_id!r}: candidate {candidate!r} has no tokens")
        return ids + [self.endofchunk_token_id] if score_end_of_turn else ids

    def stop_token_ids(self) -> List[int]:
        return [self.endofchunk_token_id] + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None
                                             else [])

"""The processor contract: one stateless object per family turns samples and prompts into a typed batch.

A family's :meth:`~mmit.families.base.ModelFamily.processor` builds one from the run config, the model
and the tokenizer. It carries nothing between calls except its construction arguments, so it pickles
into DataLoader workers and two calls on the same input give the same output.

Training: ``processor(sample) -> item`` (raises :class:`~mmit.data.sample.SampleError`),
:meth:`Processor.try_call` (a counted skip instead), ``collate(items) -> Batch`` (right-padded).

Inference (``mmit generate``, :mod:`mmit.evaluation.scorers`): ``decode_media(sample) -> list``
(the sample's media decoded, the one media contract shared by training, ``mmit generate`` and
``mmit eval``), ``prompt(turns, media) -> item``, ``collate_prompts(items) -> Batch`` (left-padded),
``candidate_ids`` (an answer's tokens after a prompt, for vocabulary ranking), ``append`` (a prompt
item with continuation tokens, for the full-forward reference), ``stop_token_ids``,
``stop_strings`` and ``decode``.

Decoded media (what :meth:`Processor.decode_media` returns and :meth:`Processor.prompt` reads), one
element per item of ``sample.media``, in that order:

* kind ``image``: an RGB ``PIL.Image.Image`` (:func:`~mmit.data.media.decode_image`);
* kind ``video``: a :class:`~mmit.data.video.DecodedVideo` (``frames``: RGB PIL images, as many as the
  family samples per video);
* kind ``audio``: a 1-D ``torch.float32`` waveform ``[num_samples]`` in [-1, 1] at the family's rate
  (:func:`~mmit.data.audio.decode_audio`).

The base class decodes images only; a family that reads video or audio overrides ``decode_media``
(InstructBLIP: image + video; Video-LLaMA: image + video + audio). A kind the family cannot read is a
:class:`~mmit.data.sample.SampleError` with reason ``unsupported-media`` (a counted skip in training
and evaluation, one error line from ``mmit generate``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmit.data.batch import Batch
from mmit.data.media import DRAFT_FITS, MAX_PIXELS, Draft, decode_image, read_media_bytes
from mmit.data.sample import Sample, SampleError, Turn

Item = Dict[str, Any]


def media_bytes(sample: Sample, index: int) -> Tuple[bytes, str]:
    """``(encoded bytes, where)`` of ``sample.media[index]``: its ``data``, else the file at its
    ``path`` read whole. ``where`` (``"sample 'id' (path)"``) starts every decode error message.

    Raises :class:`SampleError` with reason ``missing-media`` naming the sample when the file cannot
    be read (``OSError``) or the item has neither ``data`` nor ``path``."""
    m = sample.media[index]
    where = f"sample {sample.id!r} ({m.path or f'media {index}'})"
    if m.data is not None:
        return m.data, where
    if not m.path:
        raise SampleError(f"sample {sample.id!r}: {m.kind} {index} has neither bytes nor a path", "missing-media")
    try:
        return read_media_bytes(m.path), where
    except OSError as e:
        raise SampleError(f"sample {sample.id!r}: cannot read {m.kind} {m.path}: {e.strerror or e}",
                          "missing-media") from None


def unsupported_media(sample: Sample, supported: Sequence[str], family: str) -> None:
    """Raise :class:`SampleError` (``unsupported-media``) naming the sample, the first media kind of
    ``sample`` not in ``supported`` and ``family``; return None when every kind is supported."""
    for m in sample.media:
        if m.kind not in supported:
            raise SampleError(f"sample {sample.id!r}: media kind {m.kind!r} is not supported by {family}",
                              "unsupported-media")


def require_images(media: Sequence[Any], family: str) -> List[Any]:
    """``list(media)`` when every element is a ``PIL.Image.Image``; raises ``ValueError`` naming
    ``family`` and the first other element's type (a family that reads images only)."""
    from PIL import Image

    media = list(media)
    for i, x in enumerate(media):
        if not isinstance(x, Image.Image):
            raise ValueError(f"{family} prompts take PIL images only; media {i} is a {type(x).__name__} "
                             "(decoded video/audio is not supported by this family)")
    return media


class Processor:
    """Base class (module docstring). Subclasses set ``tokenizer`` and ``overflow`` (``skip`` or
    ``error``) and implement the methods below."""

    tokenizer: Any = None
    overflow: str = "skip"
    #: ``data.allow_empty_answers`` (set by the trainer): keep samples with an empty answer.
    allow_empty_answers: bool = False
    #: The family's name in error messages (``unsupported-media``); default: the class name.
    family: str = ""
    #: Reduced-size JPEG decoding in :meth:`decode_media` (:class:`~mmit.data.media.Draft`): the
    #: reducing gap (decode at least this many times the pixels per side the image transform keeps),
    #: or None for full decodes. Used only when ``image_transform`` states its output size and
    #: aspect-ratio policy (``image_size``, ``aspect_ratio``: :class:`mmit.models.encoders.preprocess.
    #: ImageProcessor`). At 2 the transform's output differs from a full decode's by a few 8-bit
    #: levels at most (``tests/test_pipeline_speedups.py``).
    jpeg_draft: Optional[float] = 2.0

    @property
    def family_name(self) -> str:
        """``family``, else the class name: what error messages call this processor's family."""
        return self.family or type(self).__name__

    # -- training ----------------------------------------------------------------------------------
    def __call__(self, sample: Sample) -> Item:
        raise NotImplementedError

    def try_call(self, sample: Sample, stats) -> Optional[Item]:
        """``self(sample)``; under ``overflow='skip'`` a SampleError is counted in ``stats`` (by its
        reason) and None returned, under ``'error'`` it propagates."""
        if self.overflow not in ("skip", "error"):
            raise ValueError(f"data.overflow must be skip or error, not {self.overflow!r}")
        from mmit.data.sample import allow_empty_answers

        try:
            with allow_empty_answers(self.allow_empty_answers):
                return self(sample)
        except SampleError as e:
            if self.overflow == "error":
                raise
            stats.add(e.reason, sample.id, str(e))
            return None

    def collate(self, items: Sequence[Item]) -> Batch:
        raise NotImplementedError

    # -- media -------------------------------------------------------------------------------------
    def image_draft(self) -> Optional[Draft]:
        """The :class:`~mmit.data.media.Draft` that :meth:`decode_media` decodes JPEGs with: from
        ``self.image_transform``'s ``image_size`` and ``aspect_ratio`` and :attr:`jpeg_draft`; None
        (full decodes) when ``jpeg_draft`` is None or the transform does not state both."""
        t = getattr(self, "image_transform", None)
        side, fit = getattr(t, "image_size", None), getattr(t, "aspect_ratio", None)
        if not self.jpeg_draft or not isinstance(side, int) or fit not in DRAFT_FITS:
            return None
        return Draft(side, fit, float(self.jpeg_draft))

    def decode_media(self, sample: Sample) -> List[Any]:
        """The sample's media decoded, in ``sample.media`` order (module docstring for the element
        types: PIL RGB image, :class:`~mmit.data.video.DecodedVideo`, 1-D float32 waveform).

        Default: images only (:func:`~mmit.data.media.decode_image`, ``self.max_pixels`` when set;
        JPEGs at a reduced size under :meth:`image_draft`, so an image may be 2, 4 or 8 times smaller
        than stored). Every kind is checked before anything is decoded.

        Raises :class:`SampleError` naming the sample: ``unsupported-media`` (a kind this family does
        not read), ``missing-media`` (bytes absent, file unreadable), or the decoder's reason
        (``undecodable-image``, ``image-too-large``, ...)."""
        unsupported_media(sample, ("image",), self.family_name)
        max_pixels = getattr(self, "max_pixels", MAX_PIXELS)
        draft = self.image_draft()
        out = []
        for j in range(len(sample.media)):
            data, where = media_bytes(sample, j)
            out.append(decode_image(data, where, max_pixels, draft=draft))
        return out

    # -- inference ---------------------------------------------------------------------------------
    def prompt(self, turns: Sequence[Turn], media: Sequence[Any] = (), sample_id: str = "prompt") -> Item:
        """A prompt item: ``turns`` end with the user turn; ``media`` are decoded media as
        :meth:`decode_media` returns them, in placeholder order (all kinds in one list, each kind in
        the order of its placeholders). Raises ``ValueError`` for media the family cannot read."""
        raise NotImplementedError

    def collate_prompts(self, items: Sequence[Item]) -> Batch:
        raise NotImplementedError

    def candidate_ids(self, turns: Sequence[Turn], candidate: str, score_end_of_turn: bool,
                      item: Optional[Item] = None, sample_id: str = "prompt") -> List[int]:
        """Token ids of ``candidate`` as the answer right after the prompt ``turns``."""
        raise NotImplementedError

    def append(self, item: Item, ids: Sequence[int]) -> Item:
        """A copy of prompt ``item`` with ``ids`` appended to its text."""
        import torch

        out = dict(item)
        out["input_ids"] = torch.cat([item["input_ids"], torch.tensor(list(ids), dtype=torch.long)])
        return out

    def stop_token_ids(self) -> List[int]:
        """Ids that end an answer (eos, and the template's end-of-turn token)."""
        return [self.tokenizer.eos_token_id]

    def stop_strings(self) -> List[str]:
        """Strings that end an answer besides :meth:`stop_token_ids` (e.g. a turn separator that is
        several tokens); default none. ``mmit generate`` and the ``generate`` scorer pass them to
        ``generate_tokens`` (transformers' ``stop_strings`` + ``tokenizer``) and cut the decoded text
        at the first one (:func:`cut_at_stop_strings`)."""
        return []

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text: special tokens removed, stripped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()

    @property
    def pad_id(self) -> int:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else t.eos_token_id


def cut_at_stop_strings(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (without) the earliest occurrence of any of ``stops``, right-stripped; the
    whole text when none occurs (or ``stops`` is empty)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut].rstrip()

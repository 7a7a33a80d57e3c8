"""The InstructBLIP family (arXiv 2305.06500): vision tower -> instruction-aware Q-Former -> frozen LLM.

What trains (``train.stage``): ``align`` is the InstructBLIP recipe (only the Q-Former, its queries and
the projection; tower and LLM frozen); ``finetune`` adds the LLM; ``full`` trains everything.

A :class:`~mmit.data.sample.Sample` becomes one (instruction, answer) pair, as LAVIS's
``text_input`` / ``text_output``: the answer is the last assistant turn; the instruction is the text of
every turn before it (system included), ``<image>`` placeholders removed, joined by newlines (for the
usual single exchange: the user's question). InstructBLIP uses no chat template, so
``model.template`` is not used. Images and video frames all go in front of the text (the
InstructBLIP layout), in media order.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

import torch

from mmit.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER
from mmit.data.collate import CountingPreprocessor
from mmit.data.media import MAX_PIXELS, decode_image, read_media_bytes
from mmit.data.sample import Sample, SampleError
from mmit.families.base import ModelFamily

STAGES = ("align", "finetune", "full")


def instruction_and_answer(sample: Sample):
    """``(instruction, answer)`` of a sample (module docstring). Raises SampleError (reason
    ``no-answer``) when the last turn is not an assistant turn, ``no-supervised-tokens`` when it is empty."""
    turns = list(sample.turns)
    if not turns or turns[-1].role != "assistant":
        raise SampleError(f"sample {sample.id!r}: the last turn must be an assistant answer", "no-answer")
    answer = turns[-1].content.strip()
    if not answer:
        raise SampleError(f"sample {sample.id!r}: the last assistant answer is empty", "no-supervised-tokens")
    parts = [t.content.replace(IMAGE_PLACEHOLDER, "").strip() for t in turns[:-1]]
    return "\n".join(p for p in parts if p), answer


def _uniform(n_total: int, k: int) -> List[int]:
    return torch.linspace(0, n_total - 1, k).round().long().tolist()


def decode_video_frames(data: bytes, where: str, num_frames: int, max_pixels: int = MAX_PIXELS):
    """``num_frames`` uniformly spaced RGB frames (PIL images) of a video, first to last frame included.

    Animated GIF / WebP / PNG decode with PIL; other containers (mp4, webm, ...) need PyAV
    (``pip install av``). Raises SampleError with reason ``no-video-decoder`` when PyAV is missing
    for such a file, ``undecodable-video`` when the bytes cannot be decoded or hold no frame, and
    ``image-too-large`` for frames above ``max_pixels``.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        n = getattr(im, "n_frames", 1)
        if im.width * im.height > max_pixels:
            raise SampleError(f"{where}: {im.width}x{im.height} frames exceed {max_pixels} pixels", "image-too-large")
        frames = []
        for i in _uniform(n, num_frames):
            im.seek(i)
            frames.append(im.convert("RGB"))
        return frames
    except (UnidentifiedImageError, OSError):
        pass  # not an image container: try PyAV
    try:
        import av
    except ImportError:
        raise SampleError(f"{where}: decoding this video needs PyAV (pip install av)", "no-video-decoder") from None
    try:
        with av.open(io.BytesIO(data)) as container:
            decoded = [f.to_image() for f in container.decode(video=0)]
    except Exception as e:  # noqa: BLE001  (PyAV raises many error types)
        raise SampleError(f"{where}: cannot decode video: {e}", "undecodable-video") from None
    if not decoded:
        raise SampleError(f"{where}: video has no frames", "undecodable-video")
    return [decoded[i].convert("RGB") for i in _uniform(len(decoded), num_frames)]


class InstructBlipPreprocessor(CountingPreprocessor):
    """Sample -> ``{"id", "input_ids" [T], "labels" [T or T_dec], "pixel_values" [n,3,H,W] or None,
    "qformer_input_ids" [L]}`` in the InstructBLIP layout (:mod:`mmit.models.instructblip`).

    The instruction is left-truncated to ``max_text_length`` LLM tokens (special tokens kept, LAVIS
    ``truncation_side="left"``) and right-truncated to ``max_text_length`` Q-Former tokens; the
    answer is right-truncated to ``max_output_length`` tokens with eos always kept. Picklable.
    """

    def __init__(self, tokenizer, qformer_tokenizer, image_transform, num_query_tokens: int, image_token_id: int,
                 is_encoder_decoder: bool, max_text_length: int = 128, max_output_length: int = 256,
                 num_frames: int = 4, text_input: bool = True, overflow: str = "skip", max_pixels: int = MAX_PIXELS):
        if overflow not in ("skip", "error"):
            raise ValueError(f"data.overflow must be skip or error, not {overflow!r}")
        if text_input and qformer_tokenizer is None:
            raise ValueError("the Q-Former reads the instruction but no Q-Former tokenizer is loaded "
                             "(model.qformer.tokenizer)")
        self.tokenizer = tokenizer
        self.left_tokenizer = copy.deepcopy(tokenizer)
        self.left_tokenizer.truncation_side = "left"
        self.qformer_tokenizer = qformer_tokenizer
        self.image_transform = image_transform
        self.num_query_tokens, self.image_token_id = int(num_query_tokens), int(image_token_id)
        self.is_encoder_decoder, self.text_input = bool(is_encoder_decoder), bool(text_input)
        self.max_text_length, self.max_output_length = int(max_text_length), int(max_output_length)
        self.num_frames, self.overflow, self.max_pixels = int(num_frames), overflow, max_pixels

    @classmethod
    def for_model(cls, model, tokenizer, overflow: str = "skip") -> "InstructBlipPreprocessor":
        q = model.qformer.cfg
        return cls(tokenizer, model.qformer_tokenizer, model.vision_tower.image_processor, model.num_query_tokens,
                   model.image_token_id, model.is_encoder_decoder, q.max_text_length, q.max_output_length,
                   q.num_frames, q.text_input, overflow)

    @property
    def qformer_pad_id(self) -> int:
        t = self.qformer_tokenizer
        return 0 if t is None or t.pad_token_id is None else int(t.pad_token_id)

    def _frames(self, sample: Sample) -> list:
        frames = []
        for m in sample.media:
            where = f"sample {sample.id!r} ({m.path})"
            data = m.data if m.data is not None else read_media_bytes(m.path)
            if m.kind == "image":
                frames.append(decode_image(data, where, self.max_pixels))
            elif m.kind == "video":
                frames.extend(decode_video_frames(data, where, self.num_frames, self.max_pixels))
            else:
                raise SampleError(f"sample {sample.id!r}: media kind {m.kind!r} is not supported by InstructBLIP",
                                  "unsupported-media")
        return frames

    def encode(self, sample_id: str, instruction: str, answer: Optional[str], frames: list) -> Dict[str, Any]:
        """Tokenize one (instruction, answer) pair with ``frames`` (PIL images; a video's frames in
        order). ``answer`` None gives a generation prompt (no labels)."""
        k = len(frames) * self.num_query_tokens
        instr = self.left_tokenizer(instruction, truncation=True, max_length=self.max_text_length)["input_ids"]
        ids = [self.image_token_id] * k + list(instr)
        item: Dict[str, Any] = {"id": sample_id}
        if answer is not None:
            if self.is_encoder_decoder:
                labels = list(self.tokenizer(answer, truncation=True, max_length=self.max_output_length)["input_ids"])
            else:
                ans = self.tokenizer(answer, add_special_tokens=False)["input_ids"][: self.max_output_length - 1]
                labels = [IGNORE_INDEX] * len(ids) + list(ans) + [self.tokenizer.eos_token_id]
                ids = ids + labels[len(ids):]
            item["labels"] = torch.tensor(labels, dtype=torch.long)
        item["input_ids"] = torch.tensor(ids, dtype=torch.long)
        item["pixel_values"] = self.image_transform(frames) if frames else None
        if self.text_input:
            q = self.qformer_tokenizer(instruction, truncation=True, max_length=self.max_text_length)["input_ids"]
            item["qformer_input_ids"] = torch.tensor(q, dtype=torch.long)
        return item

    def __call__(self, sample: Sample) -> Dict[str, Any]:
        """Raises SampleError (``no-answer``, ``undecodable-image``, ``no-video-decoder``,
        ``unsupported-media``, ``no-supervised-tokens``, ...) naming the sample id."""
        sample.validate()
        instruction, answer = instruction_and_answer(sample)
        return self.encode(sample.id, instruction, answer, self._frames(sample))


def _pad(rows: List[torch.Tensor], value: int):
    T = max(int(r.shape[0]) for r in rows)
    out = torch.full((len(rows), T), int(value), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return out, mask


def collate_instructblip(items: List[Dict[str, Any]], pad_token_id: int, qformer_pad_id: int = 0) -> Dict[str, Any]:
    """Right-pad items into a batch: ``input_ids``/``attention_mask`` ``[B,T]``, ``labels`` ``[B,T]``
    or ``[B,T_dec]`` (-100 on padding), ``pixel_values [I,3,H,W]`` (all images/frames in sample order,
    None if none), ``qformer_input_ids``/``qformer_attention_mask`` ``[I,L]`` (each sample's
    instruction repeated per image/frame), ``ids``, ``num_images``. Raises ``ValueError`` on no items."""
    if not items:
        raise ValueError("collate_instructblip() got no items (every sample of the batch was skipped?)")
    input_ids, mask = _pad([it["input_ids"] for it in items], pad_token_id)
    batch: Dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
    if all("labels" in it for it in items):
        batch["labels"], _ = _pad([it["labels"] for it in items], IGNORE_INDEX)
    counts = [0 if it.get("pixel_values") is None else int(it["pixel_values"].shape[0]) for it in items]
    pixels = [it["pixel_values"] for it in items if it.get("pixel_values") is not None]
    batch["pixel_values"] = torch.cat(pixels) if pixels else None
    q_rows = [it["qformer_input_ids"] for it, n in zip(items, counts) if "qformer_input_ids" in it for _ in range(n)]
    if q_rows:
        batch["qformer_input_ids"], batch["qformer_attention_mask"] = _pad(q_rows, qformer_pad_id)
    batch["ids"], batch["num_images"] = [str(it["id"]) for it in items], counts
    return batch


_MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values", "qformer_input_ids", "qformer_attention_mask")


class InstructBlipFamily(ModelFamily):
    unit = "tokens"

    def build(self, cfg, dtype=torch.float32):
        """The model without ``qformer.init_from`` applied: the trainer's :meth:`apply_stage` applies
        it, so loading a trained checkpoint (``mmit generate``, export) never loads the init
        source (e.g. a whole BLIP-2 model) only for its weights to be replaced."""
        from mmit.models.instructblip import build_instructblip

        return build_instructblip(cfg.model, dtype, init_qformer_weights=False)

    def apply_stage(self, model, cfg):
        """``align``: Q-Former + queries + projection; ``finetune``: + LLM (+ tower unless
        ``vision_tower.frozen``); ``full``: everything. Raises ``ValueError`` for another stage.

        Called once by the trainer before training (after ``model.init_from`` and before a resume
        loads its checkpoint): it first initialises the Q-Former from ``qformer.init_from`` unless
        ``model.init_from`` already gave it weights."""
        stage = cfg.train.stage
        if stage not in STAGES:
            raise ValueError(f"unknown train.stage {stage!r} for instructblip (expected one of {', '.join(STAGES)})")
        if cfg.model.qformer.init_from and not cfg.model.init_from:
            from mmit.models.instructblip import init_qformer

            init_qformer(model.qformer, cfg.model.qformer.init_from)
        trains = {"vision_tower": stage == "full" or (stage == "finetune" and not cfg.model.vision_tower.frozen),
                  "qformer": True, "llm": stage in ("finetune", "full")}
        for name, on in trains.items():
            getattr(model, name).requires_grad_(on)
        return trains

    def parameter_modules(self, model):
        return ["vision_tower", "qformer", "llm"]

    def preprocessor(self, cfg, model, tokenizer):
        pre = InstructBlipPreprocessor.for_model(model, tokenizer, cfg.data.overflow)
        self._qformer_pad_id = pre.qformer_pad_id
        return pre

    def collate(self, items, tokenizer):
        return collate_instructblip(items, tokenizer.pad_token_id, getattr(self, "_qformer_pad_id", 0))

    def loss(self, model, batch):
        """Mean cross-entropy over answer tokens. Raises ``RuntimeError`` for a batch without one."""
        if int((batch["labels"] != IGNORE_INDEX).sum()) == 0:
            raise RuntimeError(f"batch with no supervised token: {batch.get('ids')}")
        return model(**{k: batch[k] for k in _MODEL_INPUTS if batch.get(k) is not None}).loss

    def count(self, batch):
        """Non-padding LLM input tokens (image tokens included) plus, for seq2seq, answer tokens."""
        n = int(batch["attention_mask"].sum())
        if batch["labels"].shape != batch["input_ids"].shape:
            n += int((batch["labels"] != IGNORE_INDEX).sum())
        return n

    def save_extra(self, model, ckpt_dir):
        """Write the Q-Former tokenizer to ``<ckpt>/qformer_tokenizer``."""
        from mmit.models.instructblip import QFORMER_TOKENIZER_DIR

        if model.qformer_tokenizer is not None:
            model.qformer_tokenizer.save_pretrained(str(ckpt_dir / QFORMER_TOKENIZER_DIR))

    def load_extra(self, model, ckpt_dir):
        """Load ``<ckpt>/qformer_tokenizer`` when present (it wins over ``qformer.tokenizer``)."""
        from transformers import AutoTokenizer

        from mmit.models.instructblip import QFORMER_TOKENIZER_DIR

        path = ckpt_dir / QFORMER_TOKENIZER_DIR
        if path.is_dir():
            model.qformer_tokenizer = AutoTokenizer.from_pretrained(str(path))

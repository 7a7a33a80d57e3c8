"""Inference on a trained checkpoint: a prompt (with an image or none) -> the model's answer.

Used by ``mmit generate``. Any family that generates text works the same way: its processor turns
the prompt into a typed batch (the family's own prompt layout: a conversation template for LLaVA,
the bare instruction for InstructBLIP) and the model decodes through the inference contract
(:meth:`~mmit.models.interface.MultimodalModel.generate_tokens`, transformers ``generate`` with a KV
cache; greedy unless told otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from mmit.constants import IMAGE_PLACEHOLDER
from mmit.data.sample import Turn
from mmit.models.interface import model_device


@dataclass
class Answer:
    text: str
    token_ids: List[int]


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


def load_for_inference(checkpoint, dtype: torch.dtype = torch.float32):
    """``(model, processor, cfg)`` of a checkpoint or run folder whose family generates text.

    Raises ``FileNotFoundError`` for a folder without a checkpoint and ``ValueError`` for a family
    that does not produce text (e.g. ``instructpix2pix``: use its own command)."""
    from mmit.families import get_family_class
    from mmit.training.checkpoint import load_model_from_checkpoint

    model, tokenizer, cfg = load_model_from_checkpoint(checkpoint, dtype)
    fam = get_family_class(cfg.family)
    if not fam.generates_text:
        extra = f" (its commands: {', '.join(fam.commands)})" if fam.commands else ""
        raise ValueError(f"{checkpoint}: family {cfg.family!r} does not generate text{extra}")
    return model, fam().processor(cfg, model, tokenizer), cfg


@torch.no_grad()
def generate(model, processor, prompt: str, image=None, max_new_tokens: int = 64, **generate_kwargs) -> Answer:
    """Answer ``prompt`` about ``image``: a PIL image, a list of them (interleaved at the prompt's
    ``<image>`` markers, in order, for families that read several), or None.

    Returns :class:`Answer` with the decoded text (special tokens removed) and the newly generated ids
    (the stop token included when the model emitted one).
    """
    images = [] if image is None else (list(image) if isinstance(image, (list, tuple)) else [image])
    item = processor.prompt(prompt_turns(prompt, len(images)), images)
    batch = processor.collate_prompts([item]).to(model_device(model))
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "eos_token_id": processor.stop_token_ids(),
              "pad_token_id": processor.pad_id, **generate_kwargs}
    new = model.generate_tokens(batch, **kwargs)[0].tolist()
    pad = processor.tokenizer.pad_token_id
    if pad is not None and pad != processor.tokenizer.eos_token_id:
        while new and new[-1] == pad:
            new.pop()
    return Answer(processor.decode(new), new)

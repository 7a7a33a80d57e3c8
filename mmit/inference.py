"""Inference on a trained checkpoint: one image (or none) and a prompt -> the model's answer.

Used by ``mmit generate``. The prompt goes through the same conversation template as training
(``encode_prompt`` with the generation prompt appended), each ``<image>`` is expanded to the
tower's ``num_image_tokens`` ids, and decoding runs through transformers' ``generate`` with a KV
cache (greedy unless told otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from mmit.constants import IMAGE_PLACEHOLDER
from mmit.data.collate import expand_image_tokens
from mmit.data.sample import Turn


@dataclass
class Answer:
    text: str
    token_ids: List[int]


def prompt_turns(prompt: str, with_image: bool) -> List[Turn]:
    """One user turn; ``<image>\\n`` is put first when an image is given and the prompt has no placeholder."""
    if with_image and IMAGE_PLACEHOLDER not in prompt:
        prompt = f"{IMAGE_PLACEHOLDER}\n{prompt}"
    if not with_image and IMAGE_PLACEHOLDER in prompt:
        raise ValueError(f"the prompt contains {IMAGE_PLACEHOLDER} but no image was given")
    return [Turn("user", prompt)]


@torch.no_grad()
def generate(model, tokenizer, template: str, prompt: str, image=None, max_new_tokens: int = 64,
             **generate_kwargs) -> Answer:
    """Answer ``prompt`` about ``image`` (a PIL image or None).

    Returns :class:`Answer` with the decoded text (special tokens removed) and the newly generated ids
    (the eos token included when the model emitted one).
    """
    if hasattr(model, "answer"):  # families with their own prompt layout (InstructBLIP: no chat template)
        return model.answer(tokenizer, prompt, image, max_new_tokens, **generate_kwargs)
    from mmit.templates.labels import encode_prompt

    ids = encode_prompt(tokenizer, prompt_turns(prompt, image is not None), template)
    ids, _, _ = expand_image_tokens(ids, None, model.image_token_id, model.num_image_tokens)
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    pixel_values = None
    if image is not None:
        pixel_values = model.vision_tower.image_processor([image]).to(device)
    from mmit.templates import stop_token_ids

    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "eos_token_id": stop_token_ids(tokenizer, template),
              "pad_token_id": tokenizer.pad_token_id, **generate_kwargs}
    out = model.generate(input_ids, torch.ones_like(input_ids), pixel_values, **kwargs)
    new = out[0].tolist()
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        while new and new[-1] == tokenizer.pad_token_id:
            new.pop()
    return Answer(tokenizer.decode(new, skip_special_tokens=True).strip(), new)

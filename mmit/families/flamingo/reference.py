"""open_flamingo's ``Flamingo`` (the reference implementation, MIT) holding a model's architecture, for
parity tests and ``bench/train_step.py``. Needs the ``open-flamingo`` package (install it with
``--no-deps``: it pins an old torch, but its model code runs on the current one).

OpenFlamingo's ``Flamingo`` hard-codes its Perceiver (depth 6, 8 heads of 64, 64 latents) and blocks
(8 heads of 64, ``ff_mult`` 4): the mmit model must use those sizes for the weights to carry over.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch


def build_reference(model, llm_path: str, every_n: int):
    """A fresh open_flamingo ``Flamingo`` with ``model``'s vision encoder (a copy of its open_clip
    ``visual``), an LLM loaded from ``llm_path`` with ``model``'s vocabulary size, cross-attention
    every ``every_n`` layers, and random Perceiver / blocks. Raises ``ImportError`` without
    open-flamingo, ``ValueError`` for a tower that is not open_clip."""
    from open_flamingo.src.flamingo import Flamingo
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance
    from transformers import AutoModelForCausalLM

    visual = getattr(model.vision_tower, "visual", None)
    if visual is None:
        raise ValueError("the open_flamingo reference needs an open_clip vision tower")
    lang = AutoModelForCausalLM.from_pretrained(llm_path, dtype=torch.float32)
    lang.resize_token_embeddings(model.llm.get_input_embeddings().weight.shape[0])
    extend_instance(lang, FlamingoLMMixin)
    lang.set_decoder_layers_attr_name(model.decoder_layers_attr)
    return Flamingo(SimpleNamespace(visual=copy.deepcopy(visual)), lang, model.endofchunk_token_id,
                    model.media_token_id, vis_dim=model.vision_tower.hidden_size, cross_attn_every_n_layers=every_n)


def tie_to_reference(model, ref, seed: int = 0) -> None:
    """Give the reference non-zero gates (drawn with ``seed``), then copy all its weights into ``model``."""
    from mmit.families.flamingo.export import from_openflamingo

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("_gate"):
                p.copy_(torch.randn(1, generator=g))
    from_openflamingo(model, ref.state_dict(), "open_flamingo")

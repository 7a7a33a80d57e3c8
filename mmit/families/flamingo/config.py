"""The ``model:`` section of a Flamingo / Otter run (``family: flamingo``).

Defaults are OpenFlamingo's (``open_flamingo/src/factory.py``, ``helpers.py``): an open_clip ViT-L/14
tower's final patch tokens (after ``ln_post``), a Perceiver resampler of depth 6 with 64 latents, 8 heads
of 64, and gated cross-attention every 4 decoder layers (the 9B models), each text token attending only
to the latest preceding image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from mmit.config.components import LLMConfig, VisionTowerConfig
from mmit.config.schema import FamilyConfig


def _open_clip_l14() -> VisionTowerConfig:
    return VisionTowerConfig(name="open-clip", name_or_path="ViT-L-14:openai", select_layer=-1,
                             select_feature="patch", image_aspect_ratio="crop")


@FamilyConfig.register_subclass("flamingo")
@dataclass
class FlamingoConfig(FamilyConfig):
    vision_tower: VisionTowerConfig = field(default_factory=_open_clip_l14)
    llm: LLMConfig = field(default_factory=lambda: LLMConfig(name_or_path="huggyllama/llama-7b"))
    #: Apply the tower's final norm to the tokens (open_clip ``ln_post``: OpenFlamingo's ``visual(x)[1]``).
    #: Otter's HF CLIP tower uses the last hidden state without it: set false there.
    vision_post_norm: bool = True
    #: Perceiver resampler (arXiv 2204.14198 §2.1): depth, heads x head width, latents per image.
    perceiver_depth: int = 6
    perceiver_heads: int = 8
    perceiver_dim_head: int = 64
    num_latents: int = 64
    #: Learned embeddings per image slot / per video frame (None: none, as OpenFlamingo's defaults).
    max_num_media: Optional[int] = None
    max_num_frames: Optional[int] = None
    #: A gated cross-attention block before every N-th decoder layer (OpenFlamingo: 1 for 3B, 2 for 4B, 4 for 9B).
    cross_attn_every_n_layers: int = 4
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    ff_mult: int = 4
    #: Each text token attends only to the latest preceding image (OpenFlamingo); false: all preceding images.
    only_attend_immediate_media: bool = True
    #: Attribute path of the decoder's layer list (None: found from the model class, e.g. ``model.layers``).
    decoder_layers_attr: Optional[str] = None
    #: Otter's ``simple`` instruction format: ``<image>User:{instruction} GPT:<answer>{answer}<|endofchunk|>``.
    instruction_format: Literal["simple"] = "simple"
    #: Learn every answer of the sample, in-context examples included (Otter learns only the query's).
    supervise_in_context: bool = False
    #: Token budget per sample (Otter ``max_seq_len`` 1024); images are one token each.
    max_length: int = 1024

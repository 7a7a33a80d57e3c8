"""The ``model:`` section of an InstructPix2Pix run (``family: instructpix2pix``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mmit.config.paths import path_field
from mmit.config.schema import FamilyConfig


@FamilyConfig.register_subclass("instructpix2pix")
@dataclass
class InstructPix2PixConfig(FamilyConfig):
    """InstructPix2Pix diffusion tuning (arXiv 2211.09800): the ``model:`` section of
    ``family: instructpix2pix``."""

    #: Stable Diffusion folder (hub id or local path with unet/ vae/ text_encoder/ tokenizer/ scheduler/),
    #: or ``tiny-sd`` (built locally, no download).
    pretrained_model_name_or_path: str = path_field("stable-diffusion-v1-5/stable-diffusion-v1-5")
    #: Hub revision / weight variant (e.g. ``fp16``) of the pretrained folder; None for the default.
    revision: Optional[str] = None
    variant: Optional[str] = None
    #: Training image size in pixels (both images resized on the short side, then cropped square).
    resolution: int = 256
    #: Centre crop instead of a random crop (the same crop for the input and the edited image).
    center_crop: bool = False
    #: Flip the image pair horizontally with probability 0.5.
    random_flip: bool = True
    #: Conditioning dropout: one r ~ U(0,1) per sample; text dropped alone when r < p_text, both when
    #: p_text <= r < p_text + p_both, image alone when the next p_image. The paper: 0.05 each.
    conditioning_dropout_prob: float = 0.05
    #: Per-case overrides of ``conditioning_dropout_prob`` (None: use it).
    text_dropout_prob: Optional[float] = None
    image_dropout_prob: Optional[float] = None
    both_dropout_prob: Optional[float] = None
    #: Keep an exponential moving average of the UNet weights (diffusers ``EMAModel``).
    use_ema: bool = True
    ema_decay: float = 0.9999
    #: When > 0 and ``data.path`` holds no shards yet, first write this many procedural edit triples
    #: there (coloured shapes; the tiny demo). 0: never write data.
    procedural_triples: int = 0

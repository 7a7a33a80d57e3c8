"""The InstructPix2Pix model (Brooks et al., arXiv 2211.09800): Stable Diffusion whose UNet also reads
the VAE latent of the input image through 4 extra input channels, trained on the noise-prediction loss
with conditioning dropout; the CLIP text encoder and the VAE stay frozen.

Built on diffusers (``UNet2DConditionModel``, ``AutoencoderKL``, ``DDPMScheduler``) and transformers
(``CLIPTextModel``, ``CLIPTokenizer``), as ``examples/instruct_pix2pix/train_instruct_pix2pix.py`` does.
Shapes: B batch, H x W pixels, h x w = H/f x W/f latent cells (f the VAE downsampling factor, 8 for
SD v1.5), L text tokens, D text width.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("mmit.diffusion")

#: Latent channels of the noisy target plus those of the input-image latent.
IP2P_IN_CHANNELS = 8


@torch.no_grad()
def widen_conv_in(unet, in_channels: int = IP2P_IN_CHANNELS):
    """Widen ``unet.conv_in`` to ``in_channels`` inputs in place: the old kernel is copied into the first
    channels, the new channels are zero-initialised (``ddpm_edit.py`` L204-220 of the original repo;
    ``train_instruct_pix2pix.py`` in diffusers), so with zeros in the extra channels the output is
    unchanged. Updates ``unet.config.in_channels``. A UNet that already has ``in_channels`` is returned
    as is (e.g. ``timbrooks/instruct-pix2pix``). Returns the UNet.

    Raises ``ValueError`` if the UNet has more input channels than ``in_channels``.
    """
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"UNet conv_in has {old.in_channels} input channels, cannot narrow to {in_channels}")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.weight[:, :old.in_channels].copy_(old.weight)
    new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def dropout_rates(dcfg) -> Tuple[float, float, float]:
    """``(p_text, p_both, p_image)`` from a :class:`~mmit.families.instructpix2pix.config.InstructPix2PixConfig`: each per-case
    field, or ``conditioning_dropout_prob`` where it is None. Raises ``ValueError`` if a rate is negative
    or they sum to more than 1."""
    p = dcfg.conditioning_dropout_prob
    rates = tuple(float(p if v is None else v) for v in (dcfg.text_dropout_prob, dcfg.both_dropout_prob,
                                                          dcfg.image_dropout_prob))
    if min(rates) < 0 or sum(rates) > 1:
        raise ValueError(f"diffusion dropout rates (text, both, image) = {rates}: each must be >= 0 and "
                         "their sum <= 1")
    return rates


def conditioning_dropout_masks(batch_size: int, p_text: float, p_both: float, p_image: float,
                               device=None, generator: Optional[torch.Generator] = None
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """InstructPix2Pix conditioning dropout (arXiv 2211.09800 §3.2.1): ONE draw r ~ U(0,1) per sample;
    the text alone is dropped when ``r < p_text``, both when ``p_text <= r < p_text + p_both``, the image
    alone when the next ``p_image``. With 0.05 each this is ``ddpm_edit.py::get_input(uncond=0.05)`` and
    diffusers' ``--conditioning_dropout_prob 0.05`` (text: r < 2p; image: p <= r < 3p).

    Returns ``(drop_text, drop_image)``, two BoolTensors ``[batch_size]``.
    """
    r = torch.rand(batch_size, device=device, generator=generator)
    drop_text = r < p_text + p_both
    drop_image = (r >= p_text) & (r < p_text + p_both + p_image)
    return drop_text, drop_image


class InstructPix2PixModel(nn.Module):
    """UNet (8 input channels) + frozen VAE + frozen CLIP text encoder + the DDPM noise schedule.

    Args:
        unet: ``UNet2DConditionModel`` with 8 input channels (see :func:`widen_conv_in`).
        vae: ``AutoencoderKL``; latents of the target image are scaled by ``vae.config.scaling_factor``,
            those of the input image are the unscaled ``latent_dist.mode()`` (as in the paper's code and
            the diffusers pipeline).
        text_encoder: ``CLIPTextModel``; its last hidden state ``[B, L, D]`` is the cross-attention input.
        noise_scheduler: ``DDPMScheduler`` (``prediction_type`` ``epsilon`` or ``v_prediction``).
        null_input_ids: LongTensor ``[1, L]``, the tokenised empty prompt (the dropped-text condition).
        dropout: ``(p_text, p_both, p_image)`` (:func:`conditioning_dropout_masks`).

    ``model.ema`` holds a diffusers ``EMAModel`` of the UNet when the run uses EMA (set by the family).
    """

    def __init__(self, unet, vae, text_encoder, noise_scheduler, null_input_ids: torch.Tensor,
                 dropout: Tuple[float, float, float] = (0.05, 0.05, 0.05)):
        super().__init__()
        if unet.config.in_channels != vae.config.latent_channels * 2:
            raise ValueError(f"UNet has {unet.config.in_channels} input channels; InstructPix2Pix needs "
                             f"2 x {vae.config.latent_channels} (call widen_conv_in)")
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.noise_scheduler = noise_scheduler
        self.register_buffer("null_input_ids", null_input_ids.long(), persistent=False)
        self.dropout = tuple(float(x) for x in dropout)
        self.ema = None
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        """Train mode for the UNet only; the frozen VAE and text encoder always stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        """Activation checkpointing in the UNet (the diffusers example's ``--gradient_checkpointing``)."""
        self.unet.enable_gradient_checkpointing()

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """LongTensor ``[B, L]`` -> FloatTensor ``[B, L, D]`` (last hidden state of the frozen encoder)."""
        return self.text_encoder(input_ids)[0]

    def forward(self, input_pixel_values: torch.Tensor, edited_pixel_values: torch.Tensor,
                input_ids: torch.Tensor, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Noise-prediction loss of one batch.

        Args:
            input_pixel_values: FloatTensor ``[B, 3, H, W]`` in [-1, 1], the image to edit.
            edited_pixel_values: FloatTensor ``[B, 3, H, W]`` in [-1, 1], the edit's result (the target).
            input_ids: LongTensor ``[B, L]``, the tokenised edit instruction.
            generator: optional RNG for the dropout draw (tests); noise, timesteps and the VAE sample use
                torch's global RNG (saved in checkpoints, so a resumed run repeats them).

        Returns ``{"loss": scalar MSE, "drop_text": BoolTensor [B], "drop_image": BoolTensor [B]}``.
        """
        bsz = edited_pixel_values.shape[0]
        with torch.no_grad():
            latents = self.vae.encode(edited_pixel_values).latent_dist.sample() * self.vae.config.scaling_factor
            image_latents = self.vae.encode(input_pixel_values).latent_dist.mode()
            text = self.encode_text(input_ids)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        drop_text, drop_image = conditioning_dropout_masks(bsz, *self.dropout, device=latents.device,
                                                           generator=generator)
        if bool(drop_text.any()):
            null = self.encode_text(self.null_input_ids).to(text.dtype)
            text = torch.where(drop_text[:, None, None], null.expand_as(text), text)
        image_latents = image_latents * (~drop_image).to(image_latents.dtype)[:, None, None, None]
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"unsupported scheduler prediction_type {kind!r} (epsilon or v_prediction)")
        pred = self.unet(torch.cat([noisy, image_latents], dim=1), timesteps, text, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        return {"loss": loss, "drop_text": drop_text, "drop_image": drop_image}


def load_components(dcfg, dtype: torch.dtype = torch.float32):
    """``(unet, vae, text_encoder, tokenizer, noise_scheduler)`` from ``dcfg.pretrained_model_name_or_path``
    (hub id, local Stable Diffusion folder, or ``tiny-sd``), with the UNet widened to 8 input channels.
    Raises ``OSError`` / ``FileNotFoundError`` from the libraries when the folder lacks a component."""
    from mmit.extras import require

    require("diffusers", "the instructpix2pix family")  # a missing package names its extra
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from mmit.families.instructpix2pix.tiny import resolve_sd_path

    src = resolve_sd_path(dcfg.pretrained_model_name_or_path)
    kw = {"revision": dcfg.revision}
    tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
    noise_scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", variant=dcfg.variant, dtype=dtype, **kw)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", variant=dcfg.variant, torch_dtype=dtype, **kw)
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", variant=dcfg.variant, torch_dtype=dtype, **kw)
    widen_conv_in(unet, vae.config.latent_channels * 2)
    return unet, vae, text_encoder, tokenizer, noise_scheduler


def tokenize(tokenizer, prompts) -> torch.Tensor:
    """Prompts -> LongTensor ``[B, tokenizer.model_max_length]`` (padded, truncated), as the pipeline does."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def build_model(dcfg, dtype: torch.dtype = torch.float32):
    """``(InstructPix2PixModel, tokenizer)`` for a :class:`~mmit.families.instructpix2pix.config.InstructPix2PixConfig`."""
    unet, vae, text_encoder, tokenizer, sched = load_components(dcfg, dtype)
    model = InstructPix2PixModel(unet, vae, text_encoder, sched, tokenize(tokenizer, [""]), dropout_rates(dcfg))
    return model, tokenizer

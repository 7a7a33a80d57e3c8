"""Editing with a trained InstructPix2Pix checkpoint: two-scale classifier-free guidance (arXiv
2211.09800 §3.3, ``edit_cli.py::CFGDenoiser`` of the original repository).

Each denoising step runs the UNet on three conditionings, (text, image), (no text, image) and
(no text, no image), and combines the noise predictions as::

    e = e(∅, ∅) + s_T · (e(c_T, c_I) − e(∅, c_I)) + s_I · (e(∅, c_I) − e(∅, ∅))

with ``s_T`` = ``guidance_scale`` (7.5) and ``s_I`` = ``image_guidance_scale`` (1.5). The sampler is
Euler ancestral (the paper's ``edit_cli.py``), built from the training noise schedule. The steps,
tensor order and RNG use follow diffusers' ``StableDiffusionInstructPix2PixPipeline``, so with the same
seed the exported pipeline (:mod:`mmit.families.instructpix2pix.export`) gives the same image.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from mmit.families.instructpix2pix.model import InstructPix2PixModel, tokenize


def load_editor(checkpoint: str | Path, use_ema: bool = True, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, cfg)`` from an mmit checkpoint or run folder; with ``use_ema`` the EMA
    UNet weights (if the run kept them) replace the trained ones. The model is in eval mode.
    Raises ``FileNotFoundError`` for a folder without a checkpoint and ``ValueError`` for a checkpoint
    of another family."""
    from mmit.training.checkpoint import load_model_from_checkpoint

    model, tokenizer, cfg = load_model_from_checkpoint(checkpoint, dtype)
    if not isinstance(model, InstructPix2PixModel):
        raise ValueError(f"{checkpoint}: a {cfg.family!r} checkpoint, not an instructpix2pix one")
    if use_ema and model.ema is not None:
        model.ema.copy_to(model.unet.parameters())
    model.eval()
    return model, tokenizer, cfg


def inference_scheduler(model: InstructPix2PixModel):
    """Euler ancestral sampler (``EulerAncestralDiscreteScheduler``) on the model's training schedule."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler.from_config(model.noise_scheduler.config)


@torch.no_grad()
def edit_image(model: InstructPix2PixModel, tokenizer, image: Image.Image, prompt: str, num_inference_steps: int = 100,
               guidance_scale: float = 7.5, image_guidance_scale: float = 1.5, seed: Optional[int] = None,
               scheduler=None) -> Image.Image:
    """Edit ``image`` (RGB PIL, any size; cropped down to a multiple of the VAE factor) following ``prompt``.

    Guidance runs when ``guidance_scale > 1`` and ``image_guidance_scale >= 1`` (as in diffusers);
    otherwise the plain conditional prediction is used. ``seed`` seeds a CPU ``torch.Generator`` for the
    initial noise and the ancestral steps (None: torch's global RNG). Returns an RGB PIL image of the
    (rounded) input size. Raises ``ValueError`` for ``num_inference_steps < 1``.
    """
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor

    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    unet, vae = model.unet, model.vae
    device = next(unet.parameters()).device
    dtype = model.text_encoder.dtype
    processor = VaeImageProcessor(vae_scale_factor=model.vae_scale_factor)
    guided = guidance_scale > 1.0 and image_guidance_scale >= 1.0
    ids = tokenize(tokenizer, [prompt] + ([""] if guided else [])).to(device)
    text = model.encode_text(ids).to(dtype)
    if guided:  # (text, image), (no text, image), (no text, no image)
        text = torch.cat([text[:1], text[1:], text[1:]])
    sched = scheduler if scheduler is not None else inference_scheduler(model)
    pixels = processor.preprocess(image).to(device=device, dtype=dtype)
    sched.set_timesteps(num_inference_steps, device=device)
    image_latents = vae.encode(pixels).latent_dist.mode()
    if guided:
        image_latents = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
    generator = torch.Generator("cpu").manual_seed(int(seed)) if seed is not None else None
    shape = (1, vae.config.latent_channels, *image_latents.shape[-2:])
    latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * sched.init_noise_sigma
    step_kw = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents] * 3) if guided else latents, t)
        eps = unet(torch.cat([x, image_latents], dim=1), t, encoder_hidden_states=text, return_dict=False)[0]
        if guided:
            e_text, e_image, e_uncond = eps.chunk(3)
            eps = e_uncond + guidance_scale * (e_text - e_image) + image_guidance_scale * (e_image - e_uncond)
        latents = sched.step(eps, t, latents, **step_kw, return_dict=False)[0]
    decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return processor.postprocess(decoded, output_type="pil")[0]


def to_diffusers_pipeline(model: InstructPix2PixModel, tokenizer):
    """A ``StableDiffusionInstructPix2PixPipeline`` sharing the model's modules, with the Euler ancestral
    scheduler and no safety checker."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=tokenizer, unet=model.unet,
        scheduler=inference_scheduler(model), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


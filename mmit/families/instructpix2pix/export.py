"""``mmit export --format diffusers-instructpix2pix``: an mmit InstructPix2Pix checkpoint as a diffusers
``StableDiffusionInstructPix2PixPipeline`` folder (``from_pretrained`` loads it; arXiv 2211.09800)."""

from __future__ import annotations

from pathlib import Path

from mmit.export.card import finish_export


def export_diffusers_instructpix2pix(checkpoint: str | Path, output: str | Path, use_ema: bool = True) -> Path:
    """Write ``output`` (``model_index.json``, ``unet/`` with 8 input channels, ``vae/``, ``text_encoder/``,
    ``tokenizer/``, ``scheduler/`` = Euler ancestral on the training schedule; safetensors; no safety
    checker). With ``use_ema`` the UNet holds the EMA weights when the run kept them, as the diffusers
    example saves its pipeline. Returns ``output``. Raises ``FileNotFoundError`` / ``ValueError`` for a
    missing or non-instructpix2pix checkpoint."""
    from mmit.families.instructpix2pix.pipeline import load_editor, to_diffusers_pipeline

    model, tokenizer, _ = load_editor(checkpoint, use_ema=use_ema)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    to_diffusers_pipeline(model, tokenizer).save_pretrained(str(out), safe_serialization=True)
    return finish_export(checkpoint, out, "diffusers-instructpix2pix")

"""``mmit edit``: edit one image with a trained InstructPix2Pix checkpoint (arXiv 2211.09800)."""

from __future__ import annotations

import argparse
import os
from typing import List

from mmit.data.media import decode_image, read_media_bytes


def edit_main(argv: List[str]) -> int:
    """``mmit edit --checkpoint DIR --image PATH --prompt TEXT --output PNG [--steps N]
    [--guidance-scale 7.5] [--image-guidance-scale 1.5] [--seed S] [--resolution R] [--no-ema]``.
    Returns 0; raises ``FileNotFoundError`` for a missing image or checkpoint (``mmit`` prints it)."""
    p = argparse.ArgumentParser(prog="mmit edit", description="Edit an image following an instruction "
                                "(InstructPix2Pix two-scale classifier-free guidance).")
    p.add_argument("--checkpoint", required=True, help="instructpix2pix checkpoint or run folder")
    p.add_argument("--image", required=True, help="image to edit")
    p.add_argument("--prompt", required=True, help='edit instruction, e.g. "make the square red"')
    p.add_argument("--output", required=True, help="where to write the edited image (PNG)")
    p.add_argument("--steps", type=int, default=100, help="denoising steps (Euler ancestral; default 100)")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="text guidance s_T (default 7.5)")
    p.add_argument("--image-guidance-scale", type=float, default=1.5, help="image guidance s_I (default 1.5)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed of the sampler (default 0)")
    p.add_argument("--resolution", type=int, default=None,
                   help="resize the input so its short side has this many pixels (default: keep its size)")
    p.add_argument("--no-ema", action="store_true", help="use the trained UNet weights, not their EMA")
    a = p.parse_args(argv)
    if not os.path.isfile(a.image):
        raise FileNotFoundError(f"image not found: {a.image}")
    image = decode_image(read_media_bytes(a.image), a.image)
    if a.resolution:
        w, h = image.size
        s = a.resolution / min(w, h)
        image = image.resize((max(1, round(w * s)), max(1, round(h * s))), resample=3)
    from mmit.families.instructpix2pix.pipeline import edit_image, load_editor

    model, tokenizer, _ = load_editor(a.checkpoint, use_ema=not a.no_ema)
    out = edit_image(model, tokenizer, image, a.prompt, a.steps, a.guidance_scale, a.image_guidance_scale, a.seed)
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    out.save(a.output, format="PNG")
    print(f"wrote {a.output} ({out.size[0]}x{out.size[1]})")
    return 0

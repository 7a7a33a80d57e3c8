"""CLIP editing metrics as in InstructPix2Pix's ``metrics/compute_metrics.py`` (arXiv 2211.09800 §4.2).

For an input image x_0 with caption c_0, its edit x_1 and the output caption c_1 (E_I / E_T the
L2-normalised CLIP image / text embeddings):

* ``sim_direction`` (CLIP text-image directional similarity) = cos(E_I(x_1) − E_I(x_0), E_T(c_1) − E_T(c_0)):
  how far the change in the image follows the change in the caption;
* ``sim_image`` (CLIP image similarity) = cos(E_I(x_0), E_I(x_1)): how much of the input is kept;
* ``sim_0`` / ``sim_1`` = cos(E_I(x_k), E_T(c_k)).

Images enter CLIP as in the original: values in [0, 1], bicubic resize to the tower's input size, then
the tower's mean / std. The towers are open_clip models (``ViT-L-14:openai`` as in the paper, any
``ARCH:TAG``, ``local-dir:FOLDER``, ``hf-hub:org/repo``). :func:`sweep` runs the editor over guidance
scales and averages the metrics into a table (CSV + Markdown) and a plot (``sim_direction`` against
``sim_image``, one point per scale pair, as the paper's Figure 8).

CLI::

    python -m mmit.families.instructpix2pix.metrics --checkpoint RUN --data SHARDS --output DIR \\
        [--clip ViT-L-14:openai] [--num 100] [--steps 100] [--guidance-scales 7.5] \\
        [--image-guidance-scales 1.0,1.2,1.4,1.6,1.8,2.0,2.2] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mmit.data.stats import SkipCounter

#: The paper's sweep (``compute_metrics.py``): text scale 7.5, image scales 1.0 ... 2.2.
PAPER_TEXT_SCALES = (7.5,)
PAPER_IMAGE_SCALES = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)
#: Sample ``meta`` key pairs that hold the input / output captions, tried in order.
CAPTION_KEYS = (("input_caption", "output_caption"), ("input", "output"), ("original_prompt", "edited_prompt"),
                ("caption", "output"))
_OPENAI_MEAN, _OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class ClipSimilarity(nn.Module):
    """The paper's ``ClipSimilarity`` on an open_clip model (frozen, eval mode).

    Args:
        source: ``ARCH:TAG`` (e.g. ``ViT-L-14:openai``), ``local-dir:FOLDER``, a folder, or ``hf-hub:org/repo``.
    Raises ``ValueError`` for a source that names no weights.
    """

    def __init__(self, source: str = "ViT-L-14:openai", device: str | torch.device = "cpu"):
        super().__init__()
        from mmit.extras import require

        require("open_clip", "the CLIP metrics")  # a missing package names its extra
        import open_clip

        from mmit.models.encoders.open_clip_tower import parse_open_clip_source

        name, pretrained = parse_open_clip_source(source)
        #: open_clip model name (``ViT-L-14``, ``local-dir:...``), also the tokenizer name.
        self.model_name = name
        self.model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(name)
        size = self.model.visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        mean = getattr(self.model.visual, "image_mean", None) or _OPENAI_MEAN
        std = getattr(self.model.visual, "image_std", None) or _OPENAI_STD
        self.register_buffer("mean", torch.tensor(mean, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, device=device).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """list of B strings -> FloatTensor ``[B, E]``, unit norm."""
        ids = self.tokenizer(list(texts)).to(self.mean.device)
        return F.normalize(self.model.encode_text(ids).float(), dim=-1)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """FloatTensor ``[B, 3, H, W]`` in [0, 1] -> FloatTensor ``[B, E]``, unit norm."""
        x = F.interpolate(images.float().to(self.mean.device), size=self.size, mode="bicubic", align_corners=False)
        return F.normalize(self.model.encode_image((x - self.mean) / self.std).float(), dim=-1)

    def forward(self, image_0: torch.Tensor, image_1: torch.Tensor, text_0: Sequence[str], text_1: Sequence[str]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sim_0, sim_1, sim_direction, sim_image)``, each FloatTensor ``[B]`` (images ``[B,3,H,W]`` in [0,1])."""
        i0, i1 = self.encode_image(image_0), self.encode_image(image_1)
        t0, t1 = self.encode_text(text_0), self.encode_text(text_1)
        return (F.cosine_similarity(i0, t0), F.cosine_similarity(i1, t1),
                F.cosine_similarity(i1 - i0, t1 - t0), F.cosine_similarity(i0, i1))


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> FloatTensor ``[1, 3, H, W]`` in [0, 1]."""
    from mmit.families.instructpix2pix.data import pil_to_tensor

    return pil_to_tensor(image.convert("RGB"))[None]


def captions(meta: dict) -> Optional[Tuple[str, str]]:
    """``(input caption, output caption)`` from a sample's ``meta`` (keys :data:`CAPTION_KEYS`), or None."""
    for a, b in CAPTION_KEYS:
        if isinstance(meta.get(a), str) and isinstance(meta.get(b), str):
            return meta[a], meta[b]
    return None


def load_eval_items(samples, num: int, stats: SkipCounter) -> List[dict]:
    """Up to ``num`` ``{"id", "image" (PIL), "prompt", "caption_0", "caption_1"}`` from editing samples;
    samples without captions or usable images are counted in ``stats`` (``no-captions``, ...)."""
    from mmit.data.media import decode_image, read_media_bytes
    from mmit.data.sample import SampleError
    from mmit.families.instructpix2pix.data import edit_parts

    items = []
    for s in samples:
        if len(items) >= num:
            break
        try:
            src, _, prompt = edit_parts(s)
            caps = captions(s.meta)
            if caps is None:
                raise SampleError(f"sample {s.id!r}: no input/output captions in meta", "no-captions")
            image = decode_image(src.data if src.data is not None else read_media_bytes(src.path), f"sample {s.id!r}")
        except SampleError as e:
            stats.add(e.reason, s.id, str(e))
            continue
        items.append({"id": s.id, "image": image, "prompt": prompt, "caption_0": caps[0], "caption_1": caps[1]})
    return items


def sweep(model, tokenizer, items: List[dict], clip: ClipSimilarity, text_scales=PAPER_TEXT_SCALES,
          image_scales=PAPER_IMAGE_SCALES, steps: int = 100, seed: int = 0) -> List[Dict[str, float]]:
    """Edit every item at every ``(guidance_scale, image_guidance_scale)`` (seed ``seed + item index``)
    and average the four CLIP similarities. Returns one row per scale pair: ``guidance_scale``,
    ``image_guidance_scale``, ``sim_0``, ``sim_1``, ``sim_direction``, ``sim_image``, ``n``.
    Raises ``ValueError`` for an empty ``items``."""
    from mmit.families.instructpix2pix.pipeline import edit_image

    if not items:
        raise ValueError("no evaluation items (every sample skipped?)")
    rows = []
    for gs in text_scales:
        for igs in image_scales:
            sums = torch.zeros(4)
            for k, it in enumerate(items):
                out = edit_image(model, tokenizer, it["image"], it["prompt"], steps, gs, igs, seed + k)
                x0 = to_unit_tensor(it["image"].resize(out.size, Image.BICUBIC))
                sims = clip(x0, to_unit_tensor(out), [it["caption_0"]], [it["caption_1"]])
                sums += torch.stack([s.float().cpu()[0] for s in sims])
            m = (sums / len(items)).tolist()
            rows.append({"guidance_scale": float(gs), "image_guidance_scale": float(igs), "sim_0": m[0],
                         "sim_1": m[1], "sim_direction": m[2], "sim_image": m[3], "n": len(items)})
    return rows


def write_report(rows: List[Dict[str, float]], output: str) -> Dict[str, str]:
    """Write ``metrics.csv``, ``metrics.md`` (a Markdown table), ``metrics.json`` and ``metrics.png``
    (sim_direction on x, sim_image on y, one line per text scale) into ``output``; returns their paths."""
    os.makedirs(output, exist_ok=True)
    cols = ["guidance_scale", "image_guidance_scale", "sim_direction", "sim_image", "sim_0", "sim_1", "n"]
    paths = {k: os.path.join(output, f"metrics.{k}") for k in ("csv", "md", "json", "png")}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(paths["json"], "w") as f:
        json.dump(rows, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for gs in sorted({r["guidance_scale"] for r in rows}):
        sel = [r for r in rows if r["guidance_scale"] == gs]
        ax.plot([r["sim_direction"] for r in sel], [r["sim_image"] for r in sel], "o-", label=f"text scale {gs:g}")
        for r in sel:
            ax.annotate(f"{r['image_guidance_scale']:g}", (r["sim_direction"], r["sim_image"]), fontsize=7)
    ax.set_xlabel("CLIP text-image direction similarity")
    ax.set_ylabel("CLIP image similarity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


def _floats(text: str) -> List[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmit.families.instructpix2pix.metrics",
                                description="CLIP directional / image similarity of an InstructPix2Pix checkpoint "
                                            "over guidance scales (the paper's compute_metrics.py).")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="shards of editing samples with input/output captions in meta")
    p.add_argument("--output", required=True)
    p.add_argument("--clip", default="ViT-L-14:openai", help="open_clip ARCH:TAG, local-dir:FOLDER or hf-hub:org/repo")
    p.add_argument("--num", type=int, default=100, help="samples to edit")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--guidance-scales", default=",".join(map(str, PAPER_TEXT_SCALES)))
    p.add_argument("--image-guidance-scales", default=",".join(map(str, PAPER_IMAGE_SCALES)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true")
    a = p.parse_args(argv)
    from mmit.data.shards import iter_shards
    from mmit.families.instructpix2pix.pipeline import load_editor

    model, tokenizer, _ = load_editor(a.checkpoint, use_ema=not a.no_ema)
    stats = SkipCounter()
    items = load_eval_items(iter_shards(a.data, split_by_node=False, split_by_worker=False), a.num, stats)
    clip = ClipSimilarity(a.clip)
    rows = sweep(model, tokenizer, items, clip, _floats(a.guidance_scales), _floats(a.image_guidance_scales),
                 a.steps, a.seed)
    paths = write_report(rows, a.output)
    with open(paths["md"]) as f:
        print(f.read(), end="")
    if stats:
        print(f"skipped {stats.total} sample(s): {stats.as_dict()}")
    print(f"wrote {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

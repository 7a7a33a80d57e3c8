"""Tiny vision towers that need no download: ``tiny-clip-vit``, ``tiny-open-clip-vit``, ``tiny-timm-vit``.

Each is built from a fixed config with fixed-seed weights, saved in its library's own folder format
into ``<mmit cache>/tiny/<name>/`` (``mmit.models.cache``), and then loaded back BY PATH through the
same code as the full-size members (``CLIPVisionModel.from_pretrained``,
``open_clip.create_model_and_transforms("local-dir:...")``, ``timm.create_model("local-dir:...")``).

All three: 32 x 32 px input, 8 px patches -> 16 patch tokens (17 with ``cls_patch``), width 64,
3 blocks (so ``select_layer=-2`` is a real intermediate layer), 4 heads. A forward pass of 8 images
takes a few milliseconds on a CPU.

Determinism: weights do not depend on the libraries' initialisers or on torch's normal sampler. Every
parameter (in sorted-name order) is set from integers drawn with a seeded ``torch.Generator``:
biases 0, 1-D ``*.weight`` (norm scales) 1, 0-d scalars (``logit_scale``) keep their constant init,
everything else uniform on ``[-a, a]`` with ``a = 0.02 * sqrt(3)`` (std 0.02) computed as
``(k * 2**-23 - 1) * a`` from ``k ~ randint(0, 2**24)``, which is exact IEEE arithmetic and so gives
the same bits on every machine. Construction runs inside ``torch.random.fork_rng`` so the global RNG
is untouched. Creation is safe under concurrency (temporary folder + ``os.replace``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from torch import nn

from mmit.config.components import VisionTowerConfig
from mmit.models.cache import ensure_tiny
from mmit.models.encoders.base import VISION_TOWERS, VisionTower
from mmit.models.encoders.hf_clip import HFCLIPVisionTower, default_clip_image_processor
from mmit.models.encoders.open_clip_tower import OpenCLIPVisionTower, parse_open_clip_source
from mmit.models.encoders.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from mmit.models.encoders.timm_vit import TimmViTTower, parse_timm_source

#: Bump when the init scheme or a builder changes; cached folders with another version are rebuilt.
TINY_FORMAT = 1
TINY_IMAGE_SIZE = 32

TINY_CLIP_CONFIG: Dict[str, Any] = dict(
    image_size=TINY_IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=64, intermediate_size=128,
    num_hidden_layers=3, num_attention_heads=4, projection_dim=32,
)
TINY_OPEN_CLIP_CONFIG: Dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "patch_size": 8, "width": 64, "layers": 3, "head_width": 16, "mlp_ratio": 2.0},
    # A valid (tiny) text tower for the real CLIP tokenizer; mmit only uses the image tower.
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
TINY_OPEN_CLIP_PREPROCESS: Dict[str, Any] = {
    "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD), "interpolation": "bicubic", "resize_mode": "shortest",
}
TINY_TIMM_ARCH = "test_vit"  # timm's own test model family (embed_dim 64)
TINY_TIMM_ARGS: Dict[str, Any] = dict(img_size=TINY_IMAGE_SIZE, patch_size=8, depth=3, num_heads=4, mlp_ratio=2.0)
TINY_TIMM_PRETRAINED_CFG: Dict[str, Any] = dict(input_size=(3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), tag="mmit_tiny")


def uniform_bits(shape, generator: torch.Generator, bound: float) -> torch.Tensor:
    """Machine-independent uniform samples: ``FloatTensor[shape]`` (fp32) on ``[-bound, bound)``,
    from 24-bit integers of ``generator`` and exact float32 arithmetic (module docstring)."""
    k = torch.randint(0, 2**24, tuple(shape), generator=generator, dtype=torch.int64)
    return (k.to(torch.float32) * 2.0**-23 - 1.0) * bound


@torch.no_grad()
def deterministic_init_(model: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Overwrite every parameter of ``model`` deterministically (scheme in the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    bound = std * math.sqrt(3.0)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim == 0:
            continue
        if name.endswith("bias"):
            p.zero_()
        elif p.ndim == 1 and name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.copy_(uniform_bits(p.shape, g, bound).to(p.dtype))
    return model


def _construct(seed: int, fn: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = fn()
    return deterministic_init_(model, seed)


def _build_tiny_clip(out: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    model = _construct(1, lambda: CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP_CONFIG)))
    model.save_pretrained(out)
    default_clip_image_processor(TINY_IMAGE_SIZE).save_pretrained(out)


def _build_tiny_open_clip(out: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    model = _construct(2, lambda: open_clip.CLIP(**json.loads(json.dumps(TINY_OPEN_CLIP_CONFIG))))
    with open(out / "open_clip_config.json", "w", encoding="utf-8") as f:
        json.dump({"model_cfg": TINY_OPEN_CLIP_CONFIG, "preprocess_cfg": TINY_OPEN_CLIP_PREPROCESS}, f, indent=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))


def _build_tiny_timm(out: Path) -> None:
    import timm
    from timm.models import save_for_hf

    model = _construct(
        3,
        lambda: timm.create_model(
            TINY_TIMM_ARCH, pretrained=False, num_classes=0, pretrained_cfg_overlay=TINY_TIMM_PRETRAINED_CFG, **TINY_TIMM_ARGS
        ),
    )
    save_for_hf(model, out, safe_serialization=True)


_TINY_BUILDERS: Dict[str, Callable[[Path], None]] = {
    "tiny-clip-vit": _build_tiny_clip,
    "tiny-open-clip-vit": _build_tiny_open_clip,
    "tiny-timm-vit": _build_tiny_timm,
}
_TINY_SPECS: Dict[str, Any] = {
    "tiny-clip-vit": {"library": "transformers", "config": TINY_CLIP_CONFIG, "seed": 1},
    "tiny-open-clip-vit": {
        "library": "open_clip", "config": TINY_OPEN_CLIP_CONFIG, "preprocess": TINY_OPEN_CLIP_PREPROCESS, "seed": 2,
    },
    "tiny-timm-vit": {
        "library": "timm", "arch": TINY_TIMM_ARCH, "args": TINY_TIMM_ARGS, "pretrained_cfg": TINY_TIMM_PRETRAINED_CFG, "seed": 3,
    },
}


def tiny_tower_names():
    """Names of the tiny members."""
    return sorted(_TINY_BUILDERS)


def ensure_tiny_tower(name: str) -> Path:
    """Return ``<mmit cache>/tiny/<name>``, building it first if absent or stale.

    Raises ``KeyError`` for a name that is not a tiny member, ``OSError`` if the cache is not writable.
    """
    return ensure_tiny("vision tower", name, _TINY_BUILDERS, _TINY_SPECS, TINY_FORMAT)


def _tiny_path(cfg: VisionTowerConfig, name: str) -> str:
    return cfg.name_or_path or str(ensure_tiny_tower(name))


@VISION_TOWERS.register("tiny-clip-vit")
def tiny_clip_vit(cfg: VisionTowerConfig) -> VisionTower:
    """Tiny HF CLIP tower (:class:`HFCLIPVisionTower`): 32 px, 16 patch tokens, D 64, 3 blocks."""
    return HFCLIPVisionTower(cfg, _tiny_path(cfg, "tiny-clip-vit"))


@VISION_TOWERS.register("tiny-open-clip-vit")
def tiny_open_clip_vit(cfg: VisionTowerConfig) -> VisionTower:
    """Tiny open_clip tower (:class:`OpenCLIPVisionTower`): 32 px, 16 patch tokens, D 64, 3 blocks."""
    return OpenCLIPVisionTower(cfg, *parse_open_clip_source(_tiny_path(cfg, "tiny-open-clip-vit")))


@VISION_TOWERS.register("tiny-timm-vit")
def tiny_timm_vit(cfg: VisionTowerConfig) -> VisionTower:
    """Tiny timm ViT (:class:`TimmViTTower`, timm's ``test_vit``): 32 px, 16 patch tokens, D 64, 3 blocks."""
    return TimmViTTower(cfg, parse_timm_source(_tiny_path(cfg, "tiny-timm-vit")))

"""Vision towers: images ``FloatTensor [B, 3, S, S]`` -> features ``[B, N, D_enc]``.

Build one from its config section::

    from mmit.config.components import VisionTowerConfig
    from mmit.models.encoders import build_vision_tower

    tower = build_vision_tower(VisionTowerConfig(name="tiny-clip-vit"))
    pixels = tower.image_processor(pil_images)   # [B, 3, 32, 32]
    feats = tower(pixels)                         # [B, 16, 64]

Registered names (``VISION_TOWERS``):

- transformers CLIP (LLaVA, arXiv 2304.08485 / 2310.03744; CLIP, arXiv 2103.00020):
  ``clip-vit-l-14``, ``clip-vit-l-14-336``, ``clip-vit-b-16``, ``hf-clip`` (needs ``name_or_path``).
- open_clip (arXiv 2212.07143): ``open-clip-vit-b-32``, ``open-clip`` (needs ``name_or_path``).
- timm ViT (arXiv 2010.11929): ``timm-vit-b-16``, ``timm-vit`` (needs ``name_or_path``).
- no download: ``tiny-clip-vit``, ``tiny-open-clip-vit``, ``tiny-timm-vit`` (``tiny.py``).

Importing this package registers every member but loads no modelling library; transformers,
open_clip and timm are imported when a tower is built.
"""

from mmit.models.encoders.base import VISION_TOWERS, VisionTower, build_vision_tower, resolve_layer
from mmit.models.encoders.preprocess import ImageProcessor, expand2square
from mmit.models.encoders import hf_clip, open_clip_tower, timm_vit, tiny  # noqa: F401,E402  (register members)
from mmit.models.encoders import eva  # noqa: F401,E402  (eva-vit-g, tiny-eva-vit: InstructBLIP)
from mmit.models.encoders.tiny import ensure_tiny_tower, tiny_tower_names

__all__ = [
    "VISION_TOWERS",
    "VisionTower",
    "build_vision_tower",
    "resolve_layer",
    "ImageProcessor",
    "expand2square",
    "ensure_tiny_tower",
    "tiny_tower_names",
]

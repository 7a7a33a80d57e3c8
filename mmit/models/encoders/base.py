"""The vision-tower contract and its registry.

A vision tower maps a batch of normalised images ``FloatTensor [B, 3, S, S]`` to a sequence of
features ``FloatTensor [B, N, D_enc]`` taken from one hidden layer of a ViT (Dosovitskiy et al.,
arXiv 2010.11929). LLaVA (arXiv 2304.08485, 2310.03744) uses CLIP ViT-L/14 (arXiv 2103.00020),
the penultimate layer (``select_layer=-2``), with CLS dropped (``select_feature="patch"``).

``select_layer`` uses transformers' ``hidden_states`` convention for every backend: the list
``[embeddings, block_1, ..., block_L]`` (``L + 1`` entries, no final LayerNorm), so ``-1`` is the last
block's output and ``-2`` the penultimate. Python-style negative indices are allowed.
"""

from __future__ import annotations

from typing import Callable

import torch

from mmit.config.components import VisionTowerConfig
from mmit.models.encoders.preprocess import ASPECT_RATIOS
from mmit.models.frozen import MediaEncoder
from mmit.registry import Registry

#: ``name -> factory(cfg: VisionTowerConfig) -> VisionTower``. Members: see ``mmit.models.encoders``.
VISION_TOWERS: Registry[Callable[[VisionTowerConfig], "VisionTower"]] = Registry("vision tower")

SELECT_FEATURES = ("patch", "cls_patch")


def resolve_layer(select_layer: int, num_layers: int, *, allow_embeddings: bool = True) -> int:
    """Turn ``select_layer`` into an absolute index into ``[embeddings, block_1, ..., block_L]``.

    Args:
        select_layer: index in transformers' ``hidden_states`` convention (negative from the end).
        num_layers: ``L``, the number of transformer blocks.
        allow_embeddings: whether index 0 (the embedding output, before any block) is supported.

    Returns:
        ``i`` in ``[0, L]`` (``[1, L]`` when ``allow_embeddings`` is False); block ``i`` is
        ``blocks[i - 1]``.

    Raises:
        ValueError: when out of range, naming the valid range.
    """
    n = num_layers + 1
    idx = select_layer + n if select_layer < 0 else select_layer
    lo = 0 if allow_embeddings else 1
    if not lo <= idx <= num_layers:
        hint = "" if allow_embeddings else " (the embedding output, index 0, is not supported by this backend)"
        raise ValueError(
            f"select_layer={select_layer} is out of range for a tower with {num_layers} blocks: "
            f"valid are {lo - n if lo else -n}..-1 and {lo}..{num_layers}{hint}"
        )
    return idx


class VisionTower(MediaEncoder):
    """Base class of every vision tower.

    Attributes (set by subclasses):
        hidden_size: ``D_enc``, the feature width.
        num_tokens: ``N`` tokens per image after ``select_feature`` (patch tokens, plus the prefix /
            CLS token(s) for ``cls_patch``).
        image_size: input side ``S`` in pixels (square inputs).
        config: the :class:`VisionTowerConfig` it was built from.
        image_processor: picklable ``list[PIL.Image] -> FloatTensor [B, 3, S, S]``
            (:class:`mmit.models.encoders.preprocess.ImageProcessor`); holds no model.
        select_layer, select_feature: as in the config (module docstring for the layer convention).
        frozen (read-only): True when no parameter requires grad. The trainer decides that with
            ``requires_grad_`` per stage (``config.frozen`` is its input; stage ``full`` unfreezes);
            the tower never changes ``requires_grad`` itself. A frozen tower's :meth:`forward` runs
            under ``torch.no_grad()`` (as LLaVA's ``CLIPVisionTower``); an unfrozen one builds a graph.

    Subclasses implement :meth:`_features`.
    """

    hidden_size: int
    num_tokens: int
    image_size: int

    def __init__(self, config: VisionTowerConfig):
        super().__init__()
        if config.select_feature not in SELECT_FEATURES:
            raise ValueError(f"select_feature must be one of {SELECT_FEATURES}, got {config.select_feature!r}")
        if config.image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {config.image_aspect_ratio!r}")
        self.config = config
        self.select_layer = int(config.select_layer)
        self.select_feature = config.select_feature
        self.image_processor = None

    # -- to implement -------------------------------------------------------------------------
    def _features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``FloatTensor [B, 3, S, S]`` (already on the tower's device/dtype) -> ``[B, N, D_enc]``."""
        raise NotImplementedError

    # -- shared (frozen, dtype, device, feature_shape: MediaEncoder) ---------------------------
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            pixel_values: ``FloatTensor [B, 3, S, S]`` from :attr:`image_processor` (any float dtype
                and device; it is moved to the tower's).

        Returns:
            ``Tensor [B, num_tokens, hidden_size]`` in the tower's dtype, from hidden layer
            ``select_layer``; computed without autograd when :attr:`frozen`.

        Raises:
            ValueError: for a tensor that is not ``[B, 3, S, S]`` with ``S == image_size``.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (
            self.image_size,
            self.image_size,
        ):
            raise ValueError(
                f"{type(self).__name__} expects pixel_values [B, 3, {self.image_size}, {self.image_size}], "
                f"got {list(pixel_values.shape)}"
            )
        return self.encode_with(self._features, pixel_values)

    def _select(self, prefix: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Apply ``select_feature``: ``patch`` -> ``patches``; ``cls_patch`` -> ``cat([prefix, patches], 1)``."""
        if self.select_feature == "patch":
            return patches
        return torch.cat([prefix, patches], dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing of the transformer blocks on or off (for training the tower)."""
        raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")

    def save_pretrained(self, save_directory: str) -> None:
        """Write the tower (weights + preprocessing config) as a folder its backend loads by path.

        Raises ``NotImplementedError`` for backends without a single-folder format.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be saved as a folder")

    def extra_repr(self) -> str:
        return (
            f"name={self.config.name!r}, hidden_size={self.hidden_size}, num_tokens={self.num_tokens}, "
            f"image_size={self.image_size}, select_layer={self.select_layer}, "
            f"select_feature={self.select_feature!r}, frozen={self.frozen}"
        )


def build_vision_tower(cfg: VisionTowerConfig) -> VisionTower:
    """Build the tower named ``cfg.name`` (a ``VISION_TOWERS`` key).

    Full-size members load weights with their library's ``from_pretrained`` / ``create_model`` path
    (hub id or local folder from ``cfg.name_or_path``); ``tiny-*`` members are built locally into the
    mmit cache (``mmit.models.cache``) on first use and then loaded back by path.

    Raises:
        mmit.registry.UnknownNameError: unknown name (lists close matches).
        ValueError: bad ``select_layer`` / ``select_feature`` / ``image_aspect_ratio``, or a member
            that needs ``name_or_path`` without one.
        OSError / RuntimeError: from the backend when weights cannot be found or loaded.
    """
    import mmit.models.encoders  # noqa: F401  (registers every member)

    factory = VISION_TOWERS.get(cfg.name)
    return factory(cfg)

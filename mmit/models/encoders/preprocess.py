"""Image preprocessing for vision towers: PIL images -> normalised pixel batches.

:class:`ImageProcessor` wraps the preprocessing that ships with each backend (transformers'
``CLIPImageProcessor``, open_clip's validation transform, timm's ``create_transform``) and adds the
aspect-ratio policy of ``VisionTowerConfig.image_aspect_ratio``:

- ``crop``: the backend's own pipeline unchanged (resize the shorter side, centre crop).
- ``pad``: LLaVA-1.5's ``expand2square`` (pad to a square with the mean colour,
  ``tuple(int(x * 255) for x in image_mean)``), then the backend's pipeline. Source:
  haotian-liu/LLaVA ``llava/mm_utils.py::expand2square`` and ``train.py`` (LLaVA-1.5, arXiv 2310.03744).
- ``resize``: squash to ``image_size x image_size`` (the backend's interpolation), then
  ``to_tensor`` and normalise with the backend's mean/std; no crop.

The processor holds only preprocessing state (no model), so it pickles into DataLoader workers.
"""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, Union

import torch
from PIL import Image

ASPECT_RATIOS = ("pad", "crop", "resize")

#: OpenAI CLIP normalisation (Radford et al., arXiv 2103.00020), as in transformers' ``OPENAI_CLIP_MEAN``.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def resample_name(resample: Union[int, str]) -> str:
    """Name an interpolation given as a PIL resample code (``3`` -> ``"bicubic"``) or a name."""
    if isinstance(resample, str):
        return resample.lower()
    try:
        return _PIL_RESAMPLE_NAMES[int(resample)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"unknown PIL resample code {resample!r}") from None


def expand2square(img: Image.Image, background_color: Tuple[int, ...]) -> Image.Image:
    """Pad ``img`` to a square, centred, filling with ``background_color`` (LLaVA-1.5's ``expand2square``).

    Args:
        img: a PIL image of size ``(W, H)``.
        background_color: fill colour as 0-255 ints, one per band (LLaVA: the processor mean x 255).

    Returns:
        A ``max(W, H)`` square PIL image in ``img.mode``; ``img`` itself when already square.
    """
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background_color)
    result.paste(img, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return result


class ImageProcessor:
    """A picklable callable ``list[PIL.Image] -> FloatTensor [B, 3, image_size, image_size]``.

    Args:
        transform: the backend's preprocessing. With ``batched=False`` a per-image callable
            ``PIL.Image -> FloatTensor [3, S, S]`` (open_clip / timm / torchvision transforms); with
            ``batched=True`` a transformers image processor called as
            ``transform(images, return_tensors="pt")["pixel_values"]``.
        image_size: the side ``S`` the tower expects, in pixels.
        image_mean, image_std: per-channel normalisation the backend applies (0-1 scale); used for the
            ``pad`` colour and for ``resize``.
        interpolation: interpolation name for ``resize`` (``"bicubic"``, ``"bilinear"``, ...).
        aspect_ratio: ``pad`` | ``crop`` | ``resize`` (module docstring).
        batched: see ``transform``.

    Calling it with a single image is allowed and gives a batch of one. Images are converted to RGB
    first (LLaVA opens every image with ``.convert("RGB")``). Raises ``ValueError`` for an unknown
    ``aspect_ratio`` and ``TypeError`` for a non-PIL input.
    """

    def __init__(
        self,
        transform: Callable,
        *,
        image_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        interpolation: str = "bicubic",
        aspect_ratio: str = "pad",
        batched: bool = False,
    ):
        if aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {aspect_ratio!r}")
        self.transform = transform
        self.image_size = int(image_size)
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)
        self.interpolation = resample_name(interpolation)
        self.aspect_ratio = aspect_ratio
        self.batched = batched

    @property
    def background_color(self) -> Tuple[int, int, int]:
        """The ``pad`` fill colour: ``tuple(int(x * 255) for x in image_mean)``, as LLaVA-1.5."""
        return tuple(int(x * 255) for x in self.image_mean)

    def _resize(self, img: Image.Image) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        size = [self.image_size, self.image_size]
        img = TF.resize(img, size, interpolation=InterpolationMode(self.interpolation), antialias=True)
        return TF.normalize(TF.to_tensor(img), self.image_mean, self.image_std)

    def _base(self, images: List[Image.Image]) -> torch.Tensor:
        if self.batched:
            out = self.transform(images, return_tensors="pt")["pixel_values"]
            return torch.as_tensor(out)
        return torch.stack([torch.as_tensor(self.transform(im)) for im in images])

    def __call__(self, images: Union[Image.Image, Sequence[Image.Image]]) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise TypeError(f"image {i}: expected a PIL.Image, got {type(im).__name__}")
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        if self.aspect_ratio == "resize":
            out = torch.stack([self._resize(im) for im in images])
        else:
            if self.aspect_ratio == "pad":
                images = [expand2square(im, self.background_color) for im in images]
            out = self._base(images)
        return out.to(torch.float32)

    def __repr__(self) -> str:
        return (
            f"ImageProcessor(image_size={self.image_size}, aspect_ratio={self.aspect_ratio!r}, "
            f"interpolation={self.interpolation!r}, transform={type(self.transform).__name__})"
        )

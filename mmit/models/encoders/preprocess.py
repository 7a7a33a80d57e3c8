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

Fast path (:class:`HFFastPath`): for a transformers torchvision-backend processor whose settings are
the plain resize -> (centre crop) -> rescale + normalise chain (``CLIPImageProcessor``,
``BlipImageProcessor``, ``SiglipImageProcessor`` as shipped), the same torchvision calls run here on a
uint8 channels-last view of the PIL image's pixels instead of the processor's contiguous CHW copy
(``pad``'s square written around those pixels rather than by PIL), normalising into a contiguous
float tensor, with none of its per-call keyword validation and grouping. Same arithmetic, same output (tests compare bit for bit), about half the time per image.
Any other setting uses the processor itself.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
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


#: The TorchvisionBackend methods the fast path reproduces; a processor class overriding any of them
#: (LLaVA-NeXT tiling, padding processors, ...) is left to itself.
_HF_CHAIN = ("__call__", "preprocess", "_standardize_kwargs", "_preprocess_image_like_inputs",
             "_prepare_image_like_inputs", "process_image", "convert_to_rgb", "_preprocess", "resize",
             "center_crop", "rescale_and_normalize", "normalize", "_fuse_mean_std_and_rescale_factor")


class HFFastPath:
    """transformers' torchvision-backend image processing, reproduced for RGB PIL images.

    Build with :meth:`from_processor`, which returns ``None`` unless ``processor`` is an instance of
    ``transformers.image_processing_backends.TorchvisionBackend`` that overrides none of the methods in
    ``_HF_CHAIN`` and is set to: ``do_resize`` with ``resample`` bicubic and ``size`` either
    ``{"shortest_edge": S}`` or ``{"height": H, "width": W}``; ``do_center_crop`` on with a
    ``crop_size`` ``{"height", "width"}`` no larger than the resized image (no zero padding), or off
    with a fixed ``size`` (every output has one size); ``do_rescale`` and ``do_normalize`` both on with
    3-channel ``image_mean``/``image_std`` (no zero std); ``do_convert_rgb`` on; no ``do_pad``,
    ``device`` or non-channels-first ``data_format``. So: ``CLIPImageProcessor`` (LLaVA, OpenAI CLIP),
    ``SiglipImageProcessor``, ``BlipImageProcessor`` (InstructBLIP) as they ship.

    Per image (uint8 ``[3, h, w]`` view of the ``[h, w, 3]`` pixel array, channels-last in memory):
    ``tvF.resize`` to HF's ``get_resize_output_image_size`` (antialias), crop at
    ``int((h - ch) / 2.0)``, ``int((w - cw) / 2.0)`` as HF's ``center_crop``, then HF's fused
    rescale+normalise: ``(x.float() - mean / rescale_factor) / (std / rescale_factor)`` in float32
    (``tvF.normalize(..., inplace=True)``: ``sub_`` then ``div_``).
    Calling it with a list of RGB PIL images returns FloatTensor ``[B, 3, H', W']``, contiguous.
    """

    def __init__(self, *, shortest_edge: Optional[int], height: Optional[int], width: Optional[int],
                 crop: Optional[Tuple[int, int]], image_mean: Sequence[float], image_std: Sequence[float],
                 rescale_factor: float):
        self.shortest_edge, self.height, self.width, self.crop = shortest_edge, height, width, crop
        # the exact expression of TorchvisionBackend._fuse_mean_std_and_rescale_factor
        self.mean = torch.tensor(tuple(image_mean)) * (1.0 / rescale_factor)
        self.std = torch.tensor(tuple(image_std)) * (1.0 / rescale_factor)

    @classmethod
    def from_processor(cls, processor) -> Optional["HFFastPath"]:
        """The fast path for ``processor``, or ``None`` when its settings are not the ones reproduced."""
        try:
            from transformers.image_processing_backends import TorchvisionBackend
        except ImportError:
            return None
        if not isinstance(processor, TorchvisionBackend):
            return None
        kind = type(processor)
        if any(getattr(kind, m, None) is not getattr(TorchvisionBackend, m, None) for m in _HF_CHAIN):
            return None
        g = lambda name: getattr(processor, name, None)  # noqa: E731
        if not (g("do_resize") and g("do_rescale") and g("do_normalize") and g("do_convert_rgb")):
            return None
        if g("do_pad") or g("device") is not None or str(g("data_format") or "channels_first") != "channels_first":
            return None
        try:  # a PIL code / PILImageResampling, or a torchvision InterpolationMode
            if resample_name(getattr(g("resample"), "value", g("resample"))) != "bicubic":
                return None
        except ValueError:
            return None
        rescale = g("rescale_factor")
        mean, std = g("image_mean"), g("image_std")
        if not isinstance(rescale, (int, float)) or rescale <= 0 or not isinstance(mean, (list, tuple)) \
                or not isinstance(std, (list, tuple)) or len(mean) != 3 or len(std) != 3 or 0 in std:
            return None  # (HF raises on a zero std; a per-channel mean/std has 3 values)
        size = dict(g("size") or {})
        if set(size) == {"shortest_edge"}:
            short, height, width = int(size["shortest_edge"]), None, None
            room = (short, short)
        elif set(size) == {"height", "width"}:
            short, height, width = None, int(size["height"]), int(size["width"])
            room = (height, width)
        else:
            return None
        crop = None
        if g("do_center_crop"):
            cs = dict(g("crop_size") or {})
            if set(cs) != {"height", "width"} or cs["height"] > room[0] or cs["width"] > room[1]:
                return None
            crop = (int(cs["height"]), int(cs["width"]))
        elif short is not None:  # images of different sizes: not a batch
            return None
        return cls(shortest_edge=short, height=height, width=width, crop=crop,
                   image_mean=g("image_mean"), image_std=g("image_std"), rescale_factor=float(rescale))

    @property
    def out_size(self) -> Tuple[int, int]:
        """``(H', W')`` of every output image: the crop, else the fixed resize size."""
        return self.crop if self.crop is not None else (self.height, self.width)

    @staticmethod
    def _pixels(im: Image.Image, pad: Optional[Tuple[int, int, int]]) -> np.ndarray:
        """uint8 ``[h, w, 3]`` (writable) of RGB ``im``; with ``pad`` (0-255 fill colour) the square
        of :func:`expand2square` instead (same fill, same offsets), written row-wise here rather than
        filled and pasted by PIL and then copied out."""
        w, h = im.size
        if pad is None or w == h:
            return np.array(im)
        x = np.asarray(im).reshape(h, w * 3)
        side = max(w, h)
        out = np.empty((side, side * 3), dtype=np.uint8)
        row = np.tile(np.asarray(pad, dtype=np.uint8), side)
        if w > h:  # bands above and below
            top = (w - h) // 2
            out[:top], out[top + h:], out[top:top + h] = row, row, x
        else:  # bands left and right
            left = (h - w) // 2
            out[:, :left * 3], out[:, (left + w) * 3:] = row[:left * 3], row[:(side - left - w) * 3]
            out[:, left * 3:(left + w) * 3] = x
        return out.reshape(side, side, 3)

    def _resized(self, im: Image.Image, pad: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
        """uint8 ``[3, H', W']`` (channels-last memory): ``im`` (padded square with ``pad``) resized
        and cropped as HF does."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as tvF

        x = torch.from_numpy(self._pixels(im, pad)).permute(2, 0, 1)  # uint8 [3, h, w], channels-last memory
        if self.shortest_edge is not None:
            from transformers.image_transforms import get_resize_output_image_size
            from transformers.image_utils import ChannelDimension

            size = get_resize_output_image_size(x, self.shortest_edge, default_to_square=False,
                                                input_data_format=ChannelDimension.FIRST)
        else:
            size = (self.height, self.width)
        # torchvision's uint8 antialiased kernel is fastest on channels-last memory (HF makes it contiguous)
        x = tvF.resize(x, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        if self.crop is not None:
            (h, w), (ch, cw) = x.shape[-2:], self.crop
            top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
            x = x[..., top:top + ch, left:left + cw]
        return x

    def __call__(self, images: Sequence[Image.Image], pad: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
        """FloatTensor ``[B, 3, H', W']`` for RGB PIL ``images``, each first padded to a square with
        fill colour ``pad`` (0-255 ints; :func:`expand2square`) when given."""
        if pad is not None and not all(isinstance(c, int) and 0 <= c <= 255 for c in pad):
            images, pad = [expand2square(im, tuple(pad)) for im in images], None  # PIL's own handling
        out = torch.empty((len(images), 3) + tuple(self.out_size), dtype=torch.float32)
        mean, std = self.mean.view(3, 1, 1), self.std.view(3, 1, 1)
        for i, im in enumerate(images):
            # uint8 -> float32 straight into the contiguous output, then tvF.normalize's in-place
            # sub_/div_ (same float ops as HF's, on contiguous memory: twice as fast as channels-last)
            out[i].copy_(self._resized(im, pad)).sub_(mean).div_(std)
        return out


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
    first (LLaVA opens every image with ``.convert("RGB")``). With ``batched=True`` the processor runs
    through :class:`HFFastPath` when that reproduces it (``self.fast`` is then set; ``None`` otherwise).
    Raises ``ValueError`` for an unknown ``aspect_ratio`` and ``TypeError`` for a non-PIL input.
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
        self.fast = HFFastPath.from_processor(transform) if batched else None

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
        elif self.fast is not None:
            out = self.fast(images, self.background_color if self.aspect_ratio == "pad" else None)
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

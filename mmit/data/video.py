"""Video decoding for every family: uniformly spaced RGB frames of a video's bytes.

Animated GIF / WebP / PNG decode with PIL; other containers (mp4, webm, ...) with PyAV (``av``) when
it is installed. Errors are :class:`~mmit.data.sample.SampleError` with a skip reason, so a reader or
processor counts an unreadable video instead of crashing.
"""

from __future__ import annotations

from typing import List

import torch

from mmit.data.media import MAX_PIXELS
from mmit.data.sample import SampleError


def uniform_indices(n_total: int, k: int) -> List[int]:
    """``k`` indices spread evenly over ``range(n_total)``, first and last included (repeats when k > n)."""
    return torch.linspace(0, n_total - 1, k).round().long().tolist()


def decode_video_frames(data: bytes, where: str, num_frames: int, max_pixels: int = MAX_PIXELS):
    """``num_frames`` uniformly spaced RGB frames (PIL images) of a video, first to last frame included.

    Animated GIF / WebP / PNG decode with PIL; other containers (mp4, webm, ...) need PyAV
    (``pip install av``). Raises SampleError with reason ``no-video-decoder`` when PyAV is missing
    for such a file, ``undecodable-video`` when the bytes cannot be decoded or hold no frame, and
    ``image-too-large`` for frames above ``max_pixels``.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        n = getattr(im, "n_frames", 1)
        if im.width * im.height > max_pixels:
            raise SampleError(f"{where}: {im.width}x{im.height} frames exceed {max_pixels} pixels", "image-too-large")
        frames = []
        for i in uniform_indices(n, num_frames):
            im.seek(i)
            frames.append(im.convert("RGB"))
        return frames
    except (UnidentifiedImageError, OSError):
        pass  # not an image container: try PyAV
    try:
        import av
    except ImportError:
        raise SampleError(f"{where}: decoding this video needs PyAV (pip install av)", "no-video-decoder") from None
    try:
        with av.open(io.BytesIO(data)) as container:
            decoded = [f.to_image() for f in container.decode(video=0)]
    except Exception as e:  # noqa: BLE001  (PyAV raises many error types)
        raise SampleError(f"{where}: cannot decode video: {e}", "undecodable-video") from None
    if not decoded:
        raise SampleError(f"{where}: video has no frames", "undecodable-video")
    return [decoded[i].convert("RGB") for i in uniform_indices(len(decoded), num_frames)]

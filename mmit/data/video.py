"""Video decoding for every family: uniformly spaced RGB frames of a video's bytes.

Animated GIF / WebP / PNG decode with PIL; other containers (mp4, webm, mkv, mov, avi, ...) with
PyAV (``av``, FFmpeg bindings). Errors are :class:`~mmit.data.sample.SampleError` with a skip reason,
so a reader or processor counts an unreadable video instead of crashing.

Sampling (:func:`decode_video`): ``N`` frame indices spread evenly over the whole clip, first and last
frame included (:func:`uniform_indices`; Video-LLaMA's segment starts with ``sampling="segment-start"``), 8 per
video. PyAV decodes sequentially, without seeking (every frame has to be decoded anyway for a short
inter-coded clip), and keeps only the sampled frames in memory, converted to RGB as they pass; the
others are dropped as soon as they are decoded. The frame count comes from the container header
(``nb_frames``) or, when that is missing, from duration x frame rate; in the rare case where the
decoded count differs from it the clip is decoded a second time with the true count, so the result
is always exactly ``uniform_indices(decoded_count, N)``.

Skip reasons: ``undecodable-video`` (garbage or truncated bytes, a text file named ``.mp4``, a
container without a video stream, no frame), ``no-video-decoder`` (PyAV is not installed and the
bytes are not a PIL-readable animation), ``image-too-large`` (frame above ``max_pixels``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from mmit.data.media import MAX_PIXELS, VIDEO_EXTS, sniff_ext
from mmit.data.sample import SampleError

if TYPE_CHECKING:
    from PIL import Image

#: Frames sampled per video by default (Video-LLaMA, arXiv 2306.02858, samples 8).
DEFAULT_NUM_FRAMES = 8


def uniform_indices(n_total: int, k: int) -> List[int]:
    """``k`` indices spread evenly over ``range(n_total)``, first and last included (repeats when k > n)."""
    return torch.linspace(0, n_total - 1, k).round().long().tolist()


def segment_start_indices(n_total: int, k: int) -> List[int]:
    """The first frame of each of ``k`` equal segments: ``floor(i * n_total / k)``, i < k.

    Video-LLaMA's ``load_video(sampling="uniform")`` (``np.arange(0, n, n / k).astype(int)``, arXiv
    2306.02858); the last frame is not included. Repeats when k > n (Video-LLaMA returns fewer frames).
    """
    return [int(np.floor(i * n_total / k)) for i in range(k)]


#: ``sampling`` name -> ``(n_total, k) -> indices``, for :func:`decode_video`.
SAMPLINGS = {"uniform": uniform_indices, "segment-start": segment_start_indices}


@dataclass
class DecodedVideo:
    """Frames sampled from one video, with what was learnt about the clip.

    frames:     ``N`` RGB ``PIL.Image.Image`` (all the size of the first frame), or, with
                ``as_tensor=True``, a ``torch.uint8`` tensor ``[N, H, W, 3]`` (values 0..255).
    indices:    ``N`` frame indices into the decoded stream (0-based, non-decreasing, repeats
                when the clip has fewer than ``N`` frames).
    timestamps: ``N`` presentation times in seconds, relative to the first frame (first is 0.0).
    fps:        average frame rate in Hz (frames / second); from the header, or
                ``num_total_frames / duration`` when the header has none (0.0 if unknown).
    duration:   clip length in seconds (stream duration, else container duration, else
                ``num_total_frames / fps``; for GIF/WebP the sum of the frame delays).
    num_total_frames: how many frames the clip has (counted while decoding).
    """

    frames: Union[List["Image.Image"], torch.Tensor]
    indices: List[int]
    timestamps: List[float]
    fps: float
    duration: float
    num_total_frames: int


def decode_video(data: bytes, where: str, num_frames: int = DEFAULT_NUM_FRAMES,
                 max_pixels: int = MAX_PIXELS, *, as_tensor: bool = False,
                 threads: Optional[int] = None, sampling: str = "uniform") -> DecodedVideo:
    """Decode ``num_frames`` uniformly spaced RGB frames of a video held in memory.

    Args:
        data: the encoded file (mp4/mov/webm/mkv/avi/... via PyAV; animated GIF/WebP/PNG via PIL;
            a still image also works and gives ``num_frames`` copies of itself).
        where: file path or sample id, put at the start of every error message.
        num_frames: ``N`` >= 1, frames returned, spread by index over the whole clip with the first
            and last frame included (:func:`uniform_indices`).
        max_pixels: reject videos whose ``width * height`` exceeds this (checked before decoding).
        as_tensor: return ``frames`` as a ``torch.uint8`` tensor ``[N, H, W, 3]`` instead of PIL images.
        sampling: ``"uniform"`` (:func:`uniform_indices`, first and last frame included) or
            ``"segment-start"`` (:func:`segment_start_indices`, Video-LLaMA's indices).
        threads: PyAV decoder threads. ``None`` keeps FFmpeg's default (slice threads); ``1``
            decodes on one core (what a DataLoader worker should use); ``0`` lets FFmpeg pick with
            frame threading. Ignored for PIL formats.

    Returns:
        :class:`DecodedVideo` (frames, indices, timestamps in s, fps in Hz, duration in s, count).

    Raises:
        SampleError: reason ``undecodable-video``, ``no-video-decoder`` or ``image-too-large``
            (module doc); the message starts with ``where``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {sorted(SAMPLINGS)}, got {sampling!r}")
    pick = SAMPLINGS[sampling]
    out = None
    if sniff_ext(data) not in VIDEO_EXTS:  # PIL cannot read containers; skip the attempt for them
        out = _decode_pil(data, where, num_frames, max_pixels, pick)
    if out is None:
        out = _decode_pyav(data, where, num_frames, max_pixels, threads, pick)
    arrays, indices, times, fps, duration, n = out
    t0 = times[0] if times else 0.0
    if as_tensor:
        frames = torch.from_numpy(np.stack(arrays))
    else:
        from PIL import Image

        frames = [Image.fromarray(a) for a in arrays]  # uint8 [H, W, 3] -> mode RGB
    return DecodedVideo(frames, indices, [round(t - t0, 6) for t in times], fps, duration, n)


def decode_video_frames(data: bytes, where: str, num_frames: int, max_pixels: int = MAX_PIXELS):
    """``num_frames`` uniformly spaced RGB frames (PIL images) of a video, first to last frame included.

    The list of :attr:`DecodedVideo.frames` of :func:`decode_video` (same errors): animated
    GIF / WebP / PNG decode with PIL; other containers (mp4, webm, ...) need PyAV
    (``pip install av``). Raises SampleError with reason ``no-video-decoder`` when PyAV is missing
    for such a file, ``undecodable-video`` when the bytes cannot be decoded or hold no frame, and
    ``image-too-large`` for frames above ``max_pixels``.
    """
    return decode_video(data, where, num_frames, max_pixels).frames


_Result = Tuple[List[np.ndarray], List[int], List[float], float, float, int]


def _decode_pil(data: bytes, where: str, num_frames: int, max_pixels: int, pick=uniform_indices
                ) -> Optional[_Result]:
    """PIL path (GIF / WebP / APNG / still images); None when PIL does not recognise the bytes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise SampleError(f"{where}: frames too large: {e}", "image-too-large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None  # not an image container: try PyAV
    if im.width * im.height > max_pixels:
        raise SampleError(f"{where}: {im.width}x{im.height} frames exceed {max_pixels} pixels",
                          "image-too-large")
    try:
        n = getattr(im, "n_frames", 1)
        indices = pick(n, num_frames)
        wanted = set(indices)
        kept, start, duration = {}, {}, 0.0
        for j in range(n):  # one forward walk: keep the sampled frames, add up the delays
            im.seek(j)
            im.load()  # WebP sets info["duration"] only when the frame is loaded
            if j in wanted:
                kept[j], start[j] = np.asarray(im.convert("RGB")), duration
            duration += float(im.info.get("duration") or 0) / 1000.0
    except (OSError, EOFError, ValueError, SyntaxError):
        return None  # a truncated animation: let PyAV try, which reports undecodable-video
    arrays, times = [kept[i] for i in indices], [start[i] for i in indices]
    arrays = _same_size(arrays)
    fps = n / duration if duration > 0 else 0.0
    return arrays, indices, times, fps, duration, n


def _same_size(arrays: List[np.ndarray]) -> List[np.ndarray]:
    """Resize frames to the first frame's size when a stream changes size mid-way (rare)."""
    if all(a.shape == arrays[0].shape for a in arrays):
        return arrays
    from PIL import Image

    h, w = arrays[0].shape[:2]
    return [a if a.shape == arrays[0].shape
            else np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR)) for a in arrays]


def _decode_pyav(data: bytes, where: str, num_frames: int, max_pixels: int,
                 threads: Optional[int], pick=uniform_indices) -> _Result:
    try:
        import av  # noqa: F401
    except ImportError:
        raise SampleError(f"{where}: decoding this video needs PyAV (pip install av)",
                          "no-video-decoder") from None
    if not data:
        raise SampleError(f"{where}: cannot decode video: empty file (0 bytes)", "undecodable-video")
    n_est, fps, duration = _probe(data, where, max_pixels)
    wanted = pick(n_est, num_frames) if n_est > 0 else []
    kept, n, times_by_index = _pass(data, where, set(wanted), threads)
    if n == 0:
        raise SampleError(f"{where}: video has no frames", "undecodable-video")
    indices = pick(n, num_frames)
    if n != n_est:  # header count was wrong or missing: decode again with the true count
        kept, n2, times_by_index = _pass(data, where, set(indices), threads)
        if n2 != n:
            raise SampleError(f"{where}: video decodes to {n} then {n2} frames", "undecodable-video")
    if fps <= 0 and duration > 0:
        fps = n / duration
    if duration <= 0 and fps > 0:
        duration = n / fps
    arrays = _same_size([kept[i] for i in indices])
    return arrays, indices, [times_by_index[i] for i in indices], fps, duration, n


def _probe(data: bytes, where: str, max_pixels: int) -> Tuple[int, float, float]:
    """(estimated frame count or 0, fps in Hz or 0.0, duration in s or 0.0) from the headers."""
    import av

    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as c:
            if not c.streams.video:
                raise SampleError(f"{where}: no video stream in the file", "undecodable-video")
            st = c.streams.video[0]
            w, h = st.codec_context.width, st.codec_context.height
            fps = float(st.average_rate or st.guessed_rate or 0)
            if st.duration and st.time_base:
                duration = float(st.duration * st.time_base)
            else:
                duration = c.duration / 1e6 if c.duration else 0.0
            n = st.frames or (round(duration * fps) if duration > 0 and fps > 0 else 0)
    except SampleError:
        raise
    except Exception as e:  # noqa: BLE001  (PyAV raises many error types)
        raise SampleError(f"{where}: cannot decode video ({len(data)} bytes): {e}",
                          "undecodable-video") from None
    if w * h > max_pixels:
        raise SampleError(f"{where}: {w}x{h} frames exceed {max_pixels} pixels", "image-too-large")
    return int(n), fps, duration


def _pass(data: bytes, where: str, wanted: set, threads: Optional[int]
          ) -> Tuple[Dict[int, np.ndarray], int, Dict[int, float]]:
    """Decode every frame once; keep RGB arrays (and times in s) of the ``wanted`` indices only."""
    import av

    kept: Dict[int, np.ndarray] = {}
    times: Dict[int, float] = {}
    n = 0
    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as c:
            st = c.streams.video[0]
            if threads is not None:
                st.codec_context.thread_type = "AUTO"
                st.codec_context.thread_count = int(threads)
            for frame in c.decode(st):
                if n in wanted:
                    kept[n] = frame.to_ndarray(format="rgb24")
                    times[n] = float(frame.time) if frame.time is not None else n / float(
                        st.average_rate or 1)
                n += 1
    except Exception as e:  # noqa: BLE001
        raise SampleError(f"{where}: cannot decode video after {n} frames: {e}",
                          "undecodable-video") from None
    return kept, n, times

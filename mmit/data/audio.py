"""Audio decoding for every family: a mono float waveform at a fixed rate, and ImageBind-style clips.

:func:`decode_audio` turns the bytes of any file FFmpeg reads (wav, flac, mp3, ogg, aac/m4a, and the
audio track of mp4/mov/webm/mkv videos) into one mono ``float32`` waveform in [-1, 1] at
``sample_rate`` Hz (16 kHz by default, the rate of ImageBind's audio encoder, arXiv 2305.05665, which
Video-LLaMA's audio branch uses, arXiv 2306.02858). Decoding uses PyAV (``av``): FFmpeg's resampler
(libswresample) converts to float and to the target rate; channels are then averaged (the mean of
all channels, as ``torchaudio``'s usual ``waveform.mean(0)``; FFmpeg's own stereo-to-mono matrix
would scale by 1/sqrt(2) instead).

:func:`audio_clips` cuts the ``M`` uniformly spaced fixed-length segments ImageBind feeds its audio
encoder (3 clips of 2 s by default; ImageBind's ``ConstantClipsPerVideoSampler``).

Skip reasons (:class:`~mmit.data.sample.SampleError`): ``undecodable-audio`` (zero bytes, garbage,
truncated, a container with neither audio nor video, no samples), ``no-audio-track`` (a video
without audio under ``no_audio="skip"``), ``no-audio-decoder`` (PyAV is not installed).
"""

from __future__ import annotations

import io
import math
from typing import List, Optional, Tuple

import numpy as np
import torch

from mmit.data.sample import SampleError

#: Default target rate in Hz (ImageBind / Video-LLaMA audio branch).
DEFAULT_SAMPLE_RATE = 16000
#: What :func:`decode_audio` does with a video that has no audio stream.
NO_AUDIO_POLICIES = ("skip", "silence")


def decode_audio(data: bytes, where: str, sample_rate: int = DEFAULT_SAMPLE_RATE,
                 max_seconds: Optional[float] = None, no_audio: str = "skip"
                 ) -> Tuple[torch.Tensor, int]:
    """Decode the first audio stream of ``data`` to a mono float waveform at ``sample_rate`` Hz.

    Args:
        data: the encoded file (wav, flac, mp3, ogg, m4a, or a video container with an audio track).
        where: file path or sample id, put at the start of every error message.
        sample_rate: output rate in Hz (> 0); any input rate is resampled to it.
        max_seconds: keep at most this many seconds from the start (decoding stops there);
            None keeps everything.
        no_audio: what to do when ``data`` is a video without an audio stream: ``"skip"`` raises
            ``SampleError`` (reason ``no-audio-track``); ``"silence"`` returns zeros as long as
            the video (``round(duration_s * sample_rate)`` samples, capped by ``max_seconds``).

    Returns:
        ``(waveform, sample_rate)``: ``waveform`` is a ``torch.float32`` tensor ``[num_samples]``
        with values in [-1, 1] (channels averaged; clipped), ``num_samples`` is about
        ``duration_s * sample_rate``; ``sample_rate`` is the rate asked for, in Hz.

    Raises:
        SampleError: reason ``undecodable-audio``, ``no-audio-track`` or ``no-audio-decoder``
            (module doc); the message starts with ``where``.
        ValueError: ``sample_rate`` <= 0, ``max_seconds`` < 0 or an unknown ``no_audio`` policy.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
    if max_seconds is not None and max_seconds < 0:
        raise ValueError(f"max_seconds must be >= 0, got {max_seconds}")
    if no_audio not in NO_AUDIO_POLICIES:
        raise ValueError(f"no_audio must be one of {NO_AUDIO_POLICIES}, got {no_audio!r}")
    if not data:
        raise SampleError(f"{where}: cannot decode audio: empty file (0 bytes)", "undecodable-audio")
    try:
        import av
    except ImportError:
        raise SampleError(f"{where}: decoding audio needs PyAV (pip install av)",
                          "no-audio-decoder") from None
    limit = None if max_seconds is None else int(math.ceil(max_seconds * sample_rate))
    chunks: List[np.ndarray] = []
    got = 0
    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as c:
            if not c.streams.audio:
                return _no_audio_track(c, where, sample_rate, limit, no_audio)
            resampler = av.AudioResampler(format="fltp", layout=None, rate=sample_rate)
            for frame in c.decode(c.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
                    got += chunks[-1].shape[0]
                if limit is not None and got >= limit:
                    break
            else:
                for out in resampler.resample(None):  # flush what the resampler holds back
                    chunks.append(out.to_ndarray().mean(axis=0))
    except SampleError:
        raise
    except Exception as e:  # noqa: BLE001  (PyAV raises many error types)
        raise SampleError(f"{where}: cannot decode audio ({len(data)} bytes): {e}",
                          "undecodable-audio") from None
    if not chunks or sum(x.shape[0] for x in chunks) == 0:
        raise SampleError(f"{where}: audio stream has no samples", "undecodable-audio")
    wave = np.concatenate(chunks).astype(np.float32, copy=False)
    if limit is not None:
        wave = wave[:limit]
    np.clip(wave, -1.0, 1.0, out=wave)
    return torch.from_numpy(np.ascontiguousarray(wave)), sample_rate


def _no_audio_track(container, where: str, sample_rate: int, limit: Optional[int],
                    policy: str) -> Tuple[torch.Tensor, int]:
    """Apply the ``no_audio`` policy to an opened container without an audio stream."""
    if not container.streams.video:
        raise SampleError(f"{where}: no audio (or video) stream in the file", "undecodable-audio")
    if policy == "skip":
        raise SampleError(f"{where}: video has no audio track", "no-audio-track")
    st = container.streams.video[0]
    if st.duration and st.time_base:
        seconds = float(st.duration * st.time_base)
    else:
        seconds = container.duration / 1e6 if container.duration else 0.0
    if seconds <= 0:
        raise SampleError(f"{where}: video has no audio track and no known duration",
                          "no-audio-track")
    n = int(round(seconds * sample_rate))
    if limit is not None:
        n = min(n, limit)
    return torch.zeros(n, dtype=torch.float32), sample_rate


def audio_clips(waveform: torch.Tensor, sr: int, clip_seconds: float = 2.0,
                num_clips: int = 3) -> torch.Tensor:
    """``num_clips`` uniformly spaced segments of ``clip_seconds`` each, stacked.

    The segment starts are ``linspace(0, T - L, M)`` samples (``T`` the waveform length, ``L`` the
    clip length): the first clip starts at 0 and the last ends at the end of the audio, so with
    enough audio the whole clip is covered, as ImageBind (arXiv 2305.05665) samples 3 clips of 2 s
    per audio and Video-LLaMA (arXiv 2306.02858) feeds them to its audio branch. Clips overlap when
    ``M * L > T``; audio shorter than one clip is padded at the end with zeros (then all clips are
    that same padded segment).

    Args:
        waveform: ``[T]`` float tensor (e.g. from :func:`decode_audio`).
        sr: its sample rate in Hz.
        clip_seconds: segment length in seconds (> 0); ``L = round(clip_seconds * sr)`` samples.
        num_clips: ``M`` >= 1.

    Returns:
        ``[M, L]`` tensor, same dtype and device as ``waveform``.
    """
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be 1-D [num_samples], got shape {tuple(waveform.shape)}")
    if sr <= 0 or clip_seconds <= 0 or num_clips < 1:
        raise ValueError(f"need sr > 0, clip_seconds > 0, num_clips >= 1; got {sr}, "
                         f"{clip_seconds}, {num_clips}")
    clip = int(round(clip_seconds * sr))
    total = waveform.shape[0]
    if total < clip:
        waveform = torch.nn.functional.pad(waveform, (0, clip - total))
        total = clip
    starts = torch.linspace(0, total - clip, num_clips).round().long().tolist()
    return torch.stack([waveform[s:s + clip] for s in starts])

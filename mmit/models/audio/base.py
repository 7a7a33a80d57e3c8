"""The audio-encoder contract, its registry, and ImageBind-style clip sampling.

An audio encoder turns mono waveforms into a sequence of features, in two steps:

1. ``encoder.feature_extractor(waveforms, sample_rate=None)``: a list of ``FloatTensor [num_samples]``
   (or 1-D numpy arrays) at ``encoder.sample_rate`` Hz, any lengths -> ``FloatTensor
   [B, num_clips, *input_shape]`` (float32, CPU). Each waveform is cut into ``num_clips`` clips of
   ``clip_seconds`` s with starts spaced uniformly over it (ImageBind's sampler, pytorchvideo
   ``ConstantClipsPerVideoSampler``: audio shorter than a clip gives ``num_clips`` copies of the whole
   waveform), and each clip goes through the member's own transformers feature extractor (which pads it
   to the member's window).
2. ``encoder(inputs) -> FloatTensor [B, num_tokens, hidden_size]``: each clip gives ``tokens_per_clip``
   tokens, concatenated in clip order (``num_tokens = num_clips * tokens_per_clip``).

Video-LLaMA (arXiv 2306.02858) feeds ImageBind-Huge (arXiv 2305.05665) 8 clips of 2 s, one 1024-d
embedding per clip, to its audio Q-Former; the other members give token sequences per clip.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmit.config.audio import AudioEncoderConfig
from mmit.models.frozen import MediaEncoder
from mmit.registry import Registry

#: ``name -> factory(cfg: AudioEncoderConfig) -> AudioEncoder``. Members: see ``mmit.models.audio``.
AUDIO_ENCODERS: Registry[Callable[[AudioEncoderConfig], "AudioEncoder"]] = Registry("audio encoder")


def clip_bounds(num_samples: int, sample_rate: int, clip_seconds: float, num_clips: int) -> List[Tuple[int, int]]:
    """Sample ranges ``[(start, end), ...]`` of ``num_clips`` clips of ``clip_seconds`` s.

    ImageBind's ``ConstantClipsPerVideoSampler`` in exact arithmetic: clip ``i`` starts at
    ``i * max(duration - clip_seconds, 0) / max(num_clips - 1, 1)`` seconds; bounds are floored to
    samples. ``end`` may pass ``num_samples`` (the clip is then shorter and padded by the extractor).
    """
    clip = Fraction(clip_seconds).limit_denominator(10**6)
    max_start = max(Fraction(num_samples, sample_rate) - clip, Fraction(0))
    step = max_start / max(num_clips - 1, 1)
    return [(math.floor(step * i * sample_rate), math.floor((step * i + clip) * sample_rate)) for i in range(num_clips)]


def resolve_sample_rate(cfg: AudioEncoderConfig, native: int) -> int:
    """``cfg.sample_rate`` checked against the member's rate ``native`` (Hz); None means ``native``.

    Raises:
        ValueError: when they differ, naming the expected rate.
    """
    if cfg.sample_rate is None or int(cfg.sample_rate) == int(native):
        return int(native)
    raise ValueError(
        f"audio encoder {cfg.name!r} expects audio at {native} Hz (its feature extractor's sampling rate), "
        f"but sample_rate={cfg.sample_rate} Hz: resample the audio to {native} Hz and set sample_rate: {native} (or null)"
    )


def resolve_clip_seconds(cfg: AudioEncoderConfig, native: float, longest: float) -> float:
    """``cfg.clip_seconds`` (None: ``native``) checked to be in ``(0, longest]`` seconds; also checks
    ``cfg.num_clips >= 1``. Raises ``ValueError`` naming the limit."""
    if int(cfg.num_clips) < 1:
        raise ValueError(f"num_clips must be >= 1, got {cfg.num_clips}")
    secs = float(native if cfg.clip_seconds is None else cfg.clip_seconds)
    if not 0 < secs <= longest + 1e-9:
        raise ValueError(
            f"clip_seconds={secs} is out of range for audio encoder {cfg.name!r}: its window holds at most "
            f"{longest:g} s (use clip_seconds <= {longest:g}, or null for {native:g} s)"
        )
    return secs


class AudioFeatureExtractor:
    """Picklable ``waveforms -> FloatTensor [B, num_clips, *input_shape]`` (holds no model).

    Args:
        sample_rate: Hz the waveforms must be at.
        clip_seconds, num_clips: the clip layout (:func:`clip_bounds`).
        min_samples: clips shorter than this are zero-padded to it (one analysis window).

    Subclasses implement :meth:`_featurize` (a list of 1-D float32 clips -> ``[n, *input_shape]``).
    """

    def __init__(self, sample_rate: int, clip_seconds: float, num_clips: int, min_samples: int = 1):
        self.sample_rate = int(sample_rate)
        self.clip_seconds = float(clip_seconds)
        self.num_clips = int(num_clips)
        self.min_samples = int(min_samples)

    def _featurize(self, clips: List[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def clips(self, waveform: np.ndarray) -> List[np.ndarray]:
        """The ``num_clips`` clips of one 1-D waveform (float32), each at least ``min_samples`` long."""
        out = []
        for a, b in clip_bounds(len(waveform), self.sample_rate, self.clip_seconds, self.num_clips):
            c = waveform[a:b]
            if len(c) < self.min_samples:
                c = np.pad(c, (0, self.min_samples - len(c)))
            out.append(c)
        return out

    def __call__(self, waveforms: Sequence, sample_rate: Optional[int] = None) -> torch.Tensor:
        """Featurize a batch.

        Args:
            waveforms: non-empty sequence of mono waveforms, each a 1-D ``FloatTensor [num_samples]`` or
                numpy array (any float dtype, values in about [-1, 1]), at ``sample_rate`` Hz.
            sample_rate: the waveforms' rate in Hz, checked when given (None: assumed ``self.sample_rate``).

        Returns:
            ``FloatTensor [B, num_clips, *input_shape]`` (float32, CPU).

        Raises:
            ValueError: ``sample_rate`` differs from the extractor's (the message names the expected
                rate; nothing is resampled), a waveform that is not 1-D (stereo: average the channels
                first) or is empty, or an empty batch.
        """
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise ValueError(
                f"{type(self).__name__} expects audio sampled at {self.sample_rate} Hz, got {sample_rate} Hz: "
                f"resample it to {self.sample_rate} Hz first (e.g. torchaudio.functional.resample)"
            )
        if len(waveforms) == 0:
            raise ValueError("no waveforms given")
        clips = []
        for i, w in enumerate(waveforms):
            w = w.detach().to("cpu", torch.float32).numpy() if torch.is_tensor(w) else np.asarray(w, dtype=np.float32)
            if w.ndim != 1:
                raise ValueError(f"waveform {i} has shape {list(w.shape)}: expected mono audio [num_samples]")
            if w.size == 0:
                raise ValueError(f"waveform {i} is empty")
            clips.extend(self.clips(w))
        feats = torch.from_numpy(np.ascontiguousarray(self._featurize(clips), dtype=np.float32))
        return feats.reshape(len(waveforms), self.num_clips, *feats.shape[1:])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sample_rate={self.sample_rate}, clip_seconds={self.clip_seconds}, "
                f"num_clips={self.num_clips})")


class AudioEncoder(MediaEncoder):
    """Base class of every audio encoder.

    Attributes (set by subclasses):
        hidden_size: ``D``, the feature width.
        tokens_per_clip: tokens each clip gives.
        num_tokens: ``T = num_clips * tokens_per_clip`` (fixed for the config, whatever the waveform lengths).
        sample_rate: Hz the feature extractor expects.
        clip_seconds, num_clips: the resolved clip layout.
        input_shape: the model input per clip (e.g. Whisper ``(n_mels, frames)``).
        feature_extractor: :class:`AudioFeatureExtractor`, picklable.
        config: the :class:`AudioEncoderConfig` it was built from.
        frozen (read-only): True when no parameter requires grad. As for vision towers, the trainer
            decides that with ``requires_grad_`` (``config.frozen`` is its input); the encoder never
            changes ``requires_grad`` itself. A frozen encoder runs :meth:`forward` under
            ``torch.no_grad()`` and stays in eval mode when ``train()`` is called (no dropout or
            stochastic depth in a frozen tower, as Video-LLaMA's ``.eval()`` on ImageBind).

    Subclasses implement :meth:`_clip_features`.
    """

    hidden_size: int
    tokens_per_clip: int
    sample_rate: int
    input_shape: Tuple[int, ...]

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = config
        self.select_layer = int(config.select_layer)
        self.num_clips = int(config.num_clips)
        self.clip_seconds: float = 0.0
        self.feature_extractor: Optional[AudioFeatureExtractor] = None

    # -- to implement -------------------------------------------------------------------------
    def _clip_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, *input_shape]`` (on the encoder's device/dtype) -> ``[N, tokens_per_clip, hidden_size]``."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.num_clips * self.tokens_per_clip

    def train(self, mode: bool = True) -> "AudioEncoder":
        return super().train(bool(mode) and not self.frozen)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encode a batch.

        Args:
            inputs: ``FloatTensor [B, num_clips, *input_shape]`` from :attr:`feature_extractor` (any float
                dtype and device; moved to the encoder's).

        Returns:
            ``Tensor [B, num_tokens, hidden_size]`` in the encoder's dtype; computed without autograd
            when :attr:`frozen`.

        Raises:
            ValueError: for a tensor of another shape.
        """
        want = (self.num_clips, *self.input_shape)
        if inputs.ndim != len(want) + 1 or tuple(inputs.shape[1:]) != want:
            raise ValueError(f"{type(self).__name__} expects inputs [B, {', '.join(map(str, want))}], got {list(inputs.shape)}")
        b = inputs.shape[0]
        feats = self.encode_with(self._clip_features, inputs.flatten(0, 1))
        return feats.reshape(b, self.num_tokens, self.hidden_size)

    def save_pretrained(self, save_directory: str) -> None:
        """Write weights and feature-extractor settings as a folder this member loads by path."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved as a folder")

    def extra_repr(self) -> str:
        return (
            f"name={self.config.name!r}, hidden_size={self.hidden_size}, num_tokens={self.num_tokens} "
            f"({self.num_clips} clips x {self.tokens_per_clip}), sample_rate={self.sample_rate}, "
            f"clip_seconds={self.clip_seconds:g}, select_layer={self.select_layer}, frozen={self.frozen}"
        )


def only_last_layer(cfg: AudioEncoderConfig, what: str) -> None:
    """Raise ``ValueError`` unless ``cfg.select_layer == -1`` (members with one output layer)."""
    if int(cfg.select_layer) != -1:
        raise ValueError(f"audio encoder {cfg.name!r} only supports select_layer=-1 ({what}), got {cfg.select_layer}")


def quiet_class(cls: type, ignore: Sequence[str]) -> type:
    """A subclass of the transformers model class ``cls`` (same name) whose ``from_pretrained`` ignores
    checkpoint keys matching the regexes ``ignore`` (e.g. a decoder that is not loaded), so loading an
    encoder out of a full checkpoint prints no load report. Cached per ``(cls, ignore)``."""
    key = (cls, tuple(ignore))
    if key not in _QUIET:
        attrs = {"_keys_to_ignore_on_load_unexpected": list(ignore), "__module__": cls.__module__}
        _QUIET[key] = type(cls.__name__, (cls,), attrs)
    return _QUIET[key]


_QUIET: dict = {}


def check_loaded(name_or_path: str, info: dict, what: str) -> None:
    """Raise ``ValueError`` when transformers' loading info reports missing weights."""
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"{name_or_path}: not a {what} checkpoint, weights missing: {missing[:8]}")


def build_audio_encoder(cfg: AudioEncoderConfig) -> AudioEncoder:
    """Build the encoder named ``cfg.name`` (an ``AUDIO_ENCODERS`` key).

    Full-size members load weights with their library's ``from_pretrained`` (hub id or local folder
    from ``cfg.name_or_path``); ``tiny-*`` members are built locally into the mmit cache
    (``mmit.models.cache``) on first use and then loaded back by path through the same code. The
    encoder is returned in eval mode (as ``from_pretrained`` models are), with every parameter
    trainable: the trainer freezes it (``requires_grad_``) according to ``cfg.frozen`` and the stage.

    Raises:
        mmit.registry.UnknownNameError: unknown name (lists close matches).
        ValueError: ``sample_rate`` differs from the member's rate, ``clip_seconds`` longer than its
            window, ``num_clips < 1``, ``select_layer`` out of range, or a member that needs
            ``name_or_path`` without one.
        ImportError: ``imagebind-audio`` without the optional ImageBind package.
        OSError / RuntimeError: from the backend when weights cannot be found or loaded.
    """
    import mmit.models.audio  # noqa: F401  (registers every member)

    return AUDIO_ENCODERS.get(cfg.name)(cfg).eval()

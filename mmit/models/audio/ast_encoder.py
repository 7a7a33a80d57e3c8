"""The Audio Spectrogram Transformer (Gong et al., arXiv 2104.01778) as an :class:`AudioEncoder`.

Input: ``ASTFeatureExtractor`` Kaldi-style log-mel filterbanks at 16 kHz (128 bins, 25 ms windows,
10 ms hop), padded or cut to ``max_length`` frames (1024 for the AudioSet checkpoints: 10.255 s of
audio) and normalised with AST's AudioSet statistics (``(x - mean) / (2 * std)``, transformers'
convention); ``input_shape`` is ``(max_length, num_mel_bins)``.

Output: every token of the selected layer, ``[CLS], [DIST], patches`` (16 x 16 patches with stride
10 in frequency and time, frequency-major as AST orders them): 2 + 12 x 101 = 1214 tokens of 768 per
clip for the hub default ``MIT/ast-finetuned-audioset-10-10-0.4593``. ``select_layer`` indexes
transformers' ``hidden_states`` ``[embeddings, block_1, ..., block_L]`` (no final LayerNorm).

Weights: an ``ASTModel`` or ``ASTForAudioClassification`` checkpoint (the classifier is not loaded).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from functools import partial
from typing import List, Optional

import numpy as np
import torch

from mmit.config.audio import AudioEncoderConfig
from mmit.models.audio.base import (AUDIO_ENCODERS, AudioEncoder, AudioFeatureExtractor, check_loaded, quiet_class,
                                    resolve_clip_seconds, resolve_sample_rate)
from mmit.models.encoders.base import resolve_layer

_PROCESSOR_FILE = "preprocessor_config.json"
#: Kaldi fbank frame: 25 ms window, 10 ms shift at 16 kHz (``snip_edges``: frames = 1 + (n - 400) // 160).
KALDI_WINDOW, KALDI_HOP = 400, 160


def kaldi_frames(num_samples: int) -> int:
    """Frames of a Kaldi fbank (25 ms / 10 ms at 16 kHz, ``snip_edges=True``) of ``num_samples``."""
    return 1 + (num_samples - KALDI_WINDOW) // KALDI_HOP if num_samples >= KALDI_WINDOW else 0


def kaldi_window_seconds(frames: int, sample_rate: int = 16000) -> float:
    """Seconds of audio that fill ``frames`` Kaldi frames exactly."""
    return (KALDI_WINDOW + (frames - 1) * KALDI_HOP) / sample_rate


@contextlib.contextmanager
def quiet_mel_warning():
    """Hide transformers' "At least one mel filter has all zero values" warning: with 128 Kaldi mel
    bins over a 512-point FFT at 16 kHz the lowest filters are narrower than one FFT bin, as in Kaldi /
    torchaudio themselves (AST and ImageBind were trained with them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        yield


def load_ast_feature_extractor(name_or_path: str, model_config):
    """``ASTFeatureExtractor.from_pretrained``; for a local folder without a preprocessor config, one
    with the model's ``num_mel_bins`` and ``max_length`` and AudioSet statistics."""
    from transformers import ASTFeatureExtractor

    with quiet_mel_warning():
        if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, _PROCESSOR_FILE)):
            return ASTFeatureExtractor(num_mel_bins=int(model_config.num_mel_bins), max_length=int(model_config.max_length))
        return ASTFeatureExtractor.from_pretrained(name_or_path)


class ASTFeatures(AudioFeatureExtractor):
    """Clips -> ``[n, max_length, num_mel_bins]`` normalised filterbanks (``ASTFeatureExtractor``)."""

    def __init__(self, hf_extractor, clip_seconds: float, num_clips: int):
        super().__init__(hf_extractor.sampling_rate, clip_seconds, num_clips, min_samples=KALDI_WINDOW)
        self.hf_extractor = hf_extractor

    def _featurize(self, clips: List[np.ndarray]) -> np.ndarray:
        return np.stack(self.hf_extractor(clips, sampling_rate=self.sample_rate, return_tensors="np")["input_values"])


class ASTAudioEncoder(AudioEncoder):
    """A transformers ``ASTModel`` as an :class:`AudioEncoder`.

    Args:
        cfg: the encoder config (``sample_rate`` 16000 or None; ``clip_seconds`` at most the window of
            ``max_length`` frames, None meaning all of it).
        name_or_path: hub id or local folder with an AST checkpoint.

    Attributes: see :class:`AudioEncoder`; also ``model`` (the ``ASTModel``) and ``processor`` (the
    ``ASTFeatureExtractor``). ``hidden_size`` is ``config.hidden_size``; ``tokens_per_clip`` is
    ``2 + f_dim * t_dim``.

    Raises:
        OSError: checkpoint not found (transformers).
        ValueError: no AST weights, extractor and model disagree (mel bins, ``max_length``), bad
            ``sample_rate`` / ``clip_seconds`` / ``select_layer``.
    """

    def __init__(self, cfg: AudioEncoderConfig, name_or_path: str):
        super().__init__(cfg)
        from transformers import ASTModel

        self.name_or_path = str(name_or_path)
        model, info = quiet_class(ASTModel, [r"^classifier\."]).from_pretrained(self.name_or_path, output_loading_info=True)
        check_loaded(self.name_or_path, info, "AST")
        self.model = model
        mcfg = model.config
        self.processor = fe = load_ast_feature_extractor(self.name_or_path, mcfg)
        if int(fe.num_mel_bins) != int(mcfg.num_mel_bins) or int(fe.max_length) != int(mcfg.max_length):
            raise ValueError(
                f"{self.name_or_path}: feature extractor ({fe.num_mel_bins} mel bins, max_length {fe.max_length}) does "
                f"not match the model ({mcfg.num_mel_bins} mel bins, max_length {mcfg.max_length})"
            )
        self.sample_rate = resolve_sample_rate(cfg, int(fe.sampling_rate))
        window_s = kaldi_window_seconds(int(mcfg.max_length), self.sample_rate)
        self.clip_seconds = resolve_clip_seconds(cfg, window_s, window_s)
        self.hidden_size = int(mcfg.hidden_size)
        self.num_layers = int(mcfg.num_hidden_layers)
        self._layer = resolve_layer(self.select_layer, self.num_layers)
        f_dim, t_dim = model.embeddings.get_shape(mcfg)
        self.tokens_per_clip = 2 + int(f_dim) * int(t_dim)
        self.input_shape = (int(mcfg.max_length), int(mcfg.num_mel_bins))
        self.feature_extractor = ASTFeatures(fe, self.clip_seconds, self.num_clips)

    def _clip_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=x, output_hidden_states=True).hidden_states[self._layer]

    def save_pretrained(self, save_directory: str) -> None:
        """Write the ``ASTModel`` (``config.json`` + ``model.safetensors``) and the ``ASTFeatureExtractor``."""
        self.model.save_pretrained(save_directory)
        self.processor.save_pretrained(save_directory)


def _build_ast(cfg: AudioEncoderConfig, default: Optional[str] = None) -> ASTAudioEncoder:
    return ASTAudioEncoder(cfg, cfg.name_or_path or default)


#: registry name -> default hub id.
AST_CHECKPOINTS = {"ast": "MIT/ast-finetuned-audioset-10-10-0.4593"}

for _name, _repo in AST_CHECKPOINTS.items():
    AUDIO_ENCODERS.register(_name, partial(_build_ast, default=_repo))

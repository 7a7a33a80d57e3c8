"""The Whisper encoder (Radford et al., arXiv 2212.04356) as an :class:`AudioEncoder`.

Input: ``WhisperFeatureExtractor`` log-mel spectrograms at 16 kHz (80 bins for whisper-base, 10 ms
hop), each clip zero-padded to the model's window (``chunk_length``, 30 s = 3000 frames; transformers'
encoder accepts exactly that length). Output: the encoder states of the clip's own frames, i.e. the
first ``ceil(frames / 2)`` of the window's ``max_source_positions`` positions (the second conv has
stride 2: 50 tokens per second), so a 2 s clip gives 100 tokens and a 30 s clip 1500.

Weights: the encoder half of a ``WhisperModel`` / ``WhisperForConditionalGeneration`` checkpoint
(hub default ``openai/whisper-base``, D 512, 6 blocks); the decoder is not loaded.
``select_layer`` indexes transformers' ``hidden_states``: ``[embeddings, block_1, ..., block_{L-1},
LayerNorm(block_L)]``, so ``-1`` is the encoder output with its final LayerNorm (``last_hidden_state``),
the features Whisper's decoder reads.
"""

from __future__ import annotations

import os
from functools import partial
from typing import List, Optional

import numpy as np
import torch

from mmit.config.audio import AudioEncoderConfig
from mmit.models.audio.base import (AUDIO_ENCODERS, AudioEncoder, AudioFeatureExtractor, check_loaded,
                                    resolve_clip_seconds, resolve_sample_rate)
from mmit.models.encoders.base import resolve_layer

_PROCESSOR_FILE = "preprocessor_config.json"
_ENCODER_ONLY: dict = {}


def whisper_encoder_class() -> type:
    """``WhisperEncoderOnly``: a ``WhisperPreTrainedModel`` holding just ``encoder`` (a ``WhisperEncoder``).

    Its parameter names (``encoder.*``) are those of a ``WhisperModel`` checkpoint, and
    ``model.encoder.*`` of ``WhisperForConditionalGeneration`` load through transformers' base-model
    prefix; decoder and ``proj_out`` weights are skipped without a report. Built on first use so that
    importing mmit does not import transformers.
    """
    if "cls" not in _ENCODER_ONLY:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder, WhisperPreTrainedModel

        class WhisperEncoderOnly(WhisperPreTrainedModel):
            _keys_to_ignore_on_load_unexpected = [r"(^|\.)decoder\.", r"^proj_out\."]

            def __init__(self, config):
                super().__init__(config)
                self.encoder = WhisperEncoder(config)
                self.post_init()

        _ENCODER_ONLY["cls"] = WhisperEncoderOnly
    return _ENCODER_ONLY["cls"]


def load_whisper_feature_extractor(name_or_path: str, model_config):
    """``WhisperFeatureExtractor.from_pretrained``; for a local folder without a preprocessor config, one
    matching the model (``num_mel_bins`` bins, window ``2 * max_source_positions`` frames of 10 ms)."""
    from transformers import WhisperFeatureExtractor

    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, _PROCESSOR_FILE)):
        frames = 2 * int(model_config.max_source_positions)
        return WhisperFeatureExtractor(feature_size=int(model_config.num_mel_bins), chunk_length=frames // 100)
    return WhisperFeatureExtractor.from_pretrained(name_or_path)


class WhisperFeatures(AudioFeatureExtractor):
    """Clips -> ``[n, n_mels, window_frames]`` log-mel (``WhisperFeatureExtractor``, each clip padded
    to the window with silence)."""

    def __init__(self, hf_extractor, clip_seconds: float, num_clips: int):
        super().__init__(hf_extractor.sampling_rate, clip_seconds, num_clips, min_samples=1)
        self.hf_extractor = hf_extractor

    def _featurize(self, clips: List[np.ndarray]) -> np.ndarray:
        return self.hf_extractor(clips, sampling_rate=self.sample_rate, return_tensors="np")["input_features"]


class WhisperAudioEncoder(AudioEncoder):
    """A transformers Whisper encoder as an :class:`AudioEncoder`.

    Args:
        cfg: the encoder config (``sample_rate`` must be the extractor's, 16000 for OpenAI's checkpoints;
            ``clip_seconds`` at most ``chunk_length``; None means the whole 30 s window).
        name_or_path: hub id or local folder with a Whisper checkpoint (full or encoder-only).

    Attributes: see :class:`AudioEncoder`; also ``model`` (``WhisperEncoderOnly``; ``model.encoder`` is
    transformers' ``WhisperEncoder``) and ``processor`` (the ``WhisperFeatureExtractor``).
    ``hidden_size`` is ``d_model``; ``tokens_per_clip`` is ``ceil((clip samples // hop) / 2)``.

    Raises:
        OSError: checkpoint not found (transformers).
        ValueError: no encoder weights, extractor and model disagree (mel bins, window length), bad
            ``sample_rate`` / ``clip_seconds`` / ``select_layer``.
    """

    def __init__(self, cfg: AudioEncoderConfig, name_or_path: str):
        super().__init__(cfg)
        self.name_or_path = str(name_or_path)
        model, info = whisper_encoder_class().from_pretrained(self.name_or_path, output_loading_info=True)
        check_loaded(self.name_or_path, info, "Whisper encoder")
        self.model = model
        mcfg = model.config
        self.processor = load_whisper_feature_extractor(self.name_or_path, mcfg)
        fe = self.processor
        window = 2 * int(mcfg.max_source_positions)
        if int(fe.feature_size) != int(mcfg.num_mel_bins) or int(fe.nb_max_frames) != window:
            raise ValueError(
                f"{self.name_or_path}: feature extractor ({fe.feature_size} mel bins, {fe.nb_max_frames} frames) "
                f"does not match the model ({mcfg.num_mel_bins} mel bins, {window} frames)"
            )
        self.sample_rate = resolve_sample_rate(cfg, int(fe.sampling_rate))
        window_s = fe.n_samples / self.sample_rate
        self.clip_seconds = resolve_clip_seconds(cfg, window_s, window_s)
        self.hidden_size = int(mcfg.d_model)
        self.num_layers = int(mcfg.encoder_layers)
        self._layer = resolve_layer(self.select_layer, self.num_layers)
        frames = int(round(self.clip_seconds * self.sample_rate)) // int(fe.hop_length)
        self.tokens_per_clip = min((frames + 1) // 2, int(mcfg.max_source_positions))
        self.input_shape = (int(mcfg.num_mel_bins), window)
        self.feature_extractor = WhisperFeatures(fe, self.clip_seconds, self.num_clips)

    def _clip_features(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.model.encoder
        if self._layer == self.num_layers:
            hidden = enc(input_features=x).last_hidden_state
        else:
            hidden = enc(input_features=x, output_hidden_states=True).hidden_states[self._layer]
        return hidden[:, : self.tokens_per_clip]

    def save_pretrained(self, save_directory: str) -> None:
        """Write the encoder (``config.json`` + ``model.safetensors``, keys ``encoder.*``) and the
        ``WhisperFeatureExtractor`` (``preprocessor_config.json``)."""
        self.model.save_pretrained(save_directory)
        self.processor.save_pretrained(save_directory)


def _build_whisper(cfg: AudioEncoderConfig, default: Optional[str] = None) -> WhisperAudioEncoder:
    return WhisperAudioEncoder(cfg, cfg.name_or_path or default)


#: registry name -> default hub id.
WHISPER_CHECKPOINTS = {"whisper-encoder": "openai/whisper-base"}

for _name, _repo in WHISPER_CHECKPOINTS.items():
    AUDIO_ENCODERS.register(_name, partial(_build_whisper, default=_repo))

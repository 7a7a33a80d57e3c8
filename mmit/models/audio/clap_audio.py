"""CLAP's audio tower (HTS-AT; Wu et al., arXiv 2211.06687) as an :class:`AudioEncoder`.

Input: ``ClapFeatureExtractor`` log-mel (dB) spectrograms at 48 kHz (64 bins, 10 ms hop), each clip
repeated then zero-padded to the 10 s window (``padding="repeatpad"``, CLAP's own handling of short
audio); ``input_shape`` is ``(channels, frames, mel_bins)`` with 4 channels for fused checkpoints
(``truncation="fusion"``) and 1 otherwise. Clips never exceed the window, so no random crop or
fusion of long audio happens: fused models are called with ``is_longer`` all False and the features
are deterministic.

Output: the final HTS-AT feature map (after its LayerNorm, before the average pool and the
projection), ``last_hidden_state [N, C, F', T']``, as tokens in time order (``T'`` outer, ``F'``
inner): ``laion/clap-htsat-unfused`` (the hub default) gives 2 x 32 = 64 tokens of 768 per clip.
Only ``select_layer=-1`` is supported (the Swin stages have different widths).

Weights: the ``audio_model.*`` part of a ``ClapModel`` checkpoint (text tower, projections and
``logit_scale`` are not loaded) or of a ``ClapAudioModelWithProjection``.
"""

from __future__ import annotations

import os
from functools import partial
from typing import List, Optional

import numpy as np
import torch

from mmit.config.audio import AudioEncoderConfig
from mmit.models.audio.base import (AUDIO_ENCODERS, AudioEncoder, AudioFeatureExtractor, check_loaded,
                                    only_last_layer, resolve_clip_seconds, resolve_sample_rate)

_PROCESSOR_FILE = "preprocessor_config.json"
_AUDIO_ONLY: dict = {}


def clap_audio_class() -> type:
    """``ClapAudioOnly``: a ``ClapPreTrainedModel`` (``ClapAudioConfig``) holding just ``audio_model``
    (a ``ClapAudioModel``), named as in ``ClapModel`` / ``ClapAudioModelWithProjection`` checkpoints;
    their other weights are skipped without a report. Built on first use."""
    if "cls" not in _AUDIO_ONLY:
        from transformers import ClapAudioConfig, ClapAudioModel
        from transformers.models.clap.modeling_clap import ClapPreTrainedModel

        class ClapAudioOnly(ClapPreTrainedModel):
            config_class = ClapAudioConfig
            main_input_name = "input_features"
            _keys_to_ignore_on_load_unexpected = [r"^text_", r"^audio_projection\.", r"^logit_scale"]

            def __init__(self, config):
                super().__init__(config)
                self.audio_model = ClapAudioModel(config)
                self.post_init()

        _AUDIO_ONLY["cls"] = ClapAudioOnly
    return _AUDIO_ONLY["cls"]


def load_clap_feature_extractor(name_or_path: str, audio_config):
    """``ClapFeatureExtractor.from_pretrained``; for a local folder without a preprocessor config, the
    default one with ``num_mel_bins`` bins (``rand_trunc`` unless the model is fused)."""
    from transformers import ClapFeatureExtractor

    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, _PROCESSOR_FILE)):
        trunc = "fusion" if audio_config.enable_fusion else "rand_trunc"
        return ClapFeatureExtractor(feature_size=int(audio_config.num_mel_bins), truncation=trunc)
    return ClapFeatureExtractor.from_pretrained(name_or_path)


class ClapFeatures(AudioFeatureExtractor):
    """Clips -> ``[n, channels, frames, mel_bins]`` (``ClapFeatureExtractor``)."""

    def __init__(self, hf_extractor, clip_seconds: float, num_clips: int):
        super().__init__(hf_extractor.sampling_rate, clip_seconds, num_clips, min_samples=1)
        self.hf_extractor = hf_extractor

    def _featurize(self, clips: List[np.ndarray]) -> np.ndarray:
        return self.hf_extractor(clips, sampling_rate=self.sample_rate, return_tensors="np")["input_features"]


class ClapAudioEncoder(AudioEncoder):
    """A transformers ``ClapAudioModel`` (HTS-AT) as an :class:`AudioEncoder`.

    Args:
        cfg: the encoder config (``sample_rate`` 48000 or None; ``clip_seconds`` at most the extractor's
            ``max_length_s``, None meaning all of it; ``select_layer`` -1).
        name_or_path: hub id or local folder with a CLAP checkpoint.

    Attributes: see :class:`AudioEncoder`; also ``model`` (``ClapAudioOnly``; ``model.audio_model`` is
    transformers' ``ClapAudioModel``) and ``processor`` (the ``ClapFeatureExtractor``). ``hidden_size``
    is the last stage's width; ``tokens_per_clip`` is ``(spec_size / 2**(stages-1) / patch_stride)**2``.

    Raises:
        OSError: checkpoint not found (transformers).
        ValueError: no audio weights, extractor and model disagree (mel bins, window frames), bad
            ``sample_rate`` / ``clip_seconds`` / ``select_layer``.
    """

    def __init__(self, cfg: AudioEncoderConfig, name_or_path: str):
        super().__init__(cfg)
        only_last_layer(cfg, "the final HTS-AT feature map")
        self.name_or_path = str(name_or_path)
        model, info = clap_audio_class().from_pretrained(self.name_or_path, output_loading_info=True)
        check_loaded(self.name_or_path, info, "CLAP audio")
        self.model = model
        acfg = model.config
        self.processor = fe = load_clap_feature_extractor(self.name_or_path, acfg)
        enc = model.audio_model.audio_encoder
        frames = int(fe.nb_max_samples) // int(fe.hop_length) + 1
        if int(fe.feature_size) != int(acfg.num_mel_bins) or frames > enc.spec_size * enc.freq_ratio:
            raise ValueError(
                f"{self.name_or_path}: feature extractor ({fe.feature_size} mel bins, {frames} frames) does not "
                f"fit the model ({acfg.num_mel_bins} mel bins, at most {enc.spec_size * enc.freq_ratio} frames)"
            )
        self.fused = bool(acfg.enable_fusion)
        self.sample_rate = resolve_sample_rate(cfg, int(fe.sampling_rate))
        window_s = float(fe.max_length_s)
        self.clip_seconds = resolve_clip_seconds(cfg, window_s, window_s)
        self.hidden_size = int(enc.num_features)
        stride = acfg.patch_stride if isinstance(acfg.patch_stride, int) else acfg.patch_stride[0]
        side = int(acfg.spec_size) // 2 ** (len(acfg.depths) - 1) // int(stride)
        self.tokens_per_clip = side * side
        self.input_shape = (4 if fe.truncation == "fusion" else 1, frames, int(acfg.num_mel_bins))
        self.feature_extractor = ClapFeatures(fe, self.clip_seconds, self.num_clips)

    def _clip_features(self, x: torch.Tensor) -> torch.Tensor:
        kw = {"is_longer": torch.zeros(x.shape[0], 1, dtype=torch.bool, device=x.device)} if self.fused else {}
        fmap = self.model.audio_model(input_features=x, **kw).last_hidden_state  # [N, C, F', T']
        return fmap.permute(0, 3, 2, 1).reshape(x.shape[0], -1, fmap.shape[1])

    def save_pretrained(self, save_directory: str) -> None:
        """Write the audio tower (``config.json`` with the ``ClapAudioConfig`` + ``model.safetensors``,
        keys ``audio_model.*``) and the ``ClapFeatureExtractor``."""
        self.model.save_pretrained(save_directory)
        self.processor.save_pretrained(save_directory)


def _build_clap(cfg: AudioEncoderConfig, default: Optional[str] = None) -> ClapAudioEncoder:
    return ClapAudioEncoder(cfg, cfg.name_or_path or default)


#: registry name -> default hub id.
CLAP_CHECKPOINTS = {"clap-audio": "laion/clap-htsat-unfused"}

for _name, _repo in CLAP_CHECKPOINTS.items():
    AUDIO_ENCODERS.register(_name, partial(_build_clap, default=_repo))

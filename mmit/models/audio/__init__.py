"""Audio encoders: mono waveforms -> features ``FloatTensor [B, T, D]`` (Video-LLaMA's audio branch).

Build one from its config section::

    from mmit.config.audio import AudioEncoderConfig
    from mmit.models.audio import build_audio_encoder

    enc = build_audio_encoder(AudioEncoderConfig(name="tiny-whisper-encoder", clip_seconds=1.0, num_clips=2))
    inputs = enc.feature_extractor([wave_a, wave_b])   # 1-D FloatTensors at enc.sample_rate Hz -> [2, 2, 16, 200]
    feats = enc(inputs)                                 # [2, enc.num_tokens, enc.hidden_size] = [2, 100, 32]

Registered names (``AUDIO_ENCODERS``; ``docs/audio.md`` has the table):

- ``whisper-encoder``: the Whisper encoder (arXiv 2212.04356), hub default ``openai/whisper-base``, 16 kHz.
- ``clap-audio``: CLAP's HTS-AT audio tower (arXiv 2211.06687), ``laion/clap-htsat-unfused``, 48 kHz.
- ``ast``: the Audio Spectrogram Transformer (arXiv 2104.01778),
  ``MIT/ast-finetuned-audioset-10-10-0.4593``, 16 kHz.
- ``imagebind-audio``: ImageBind's audio tower (arXiv 2305.05665), Video-LLaMA's encoder; OPTIONAL
  extra, CC BY-NC-SA 4.0 (non-commercial): needs the ``imagebind`` package and a local checkpoint.
- no download: ``tiny-whisper-encoder``, ``tiny-clap-audio``, ``tiny-ast``, ``tiny-imagebind-audio`` (``tiny.py``).

Importing this package registers every member but loads no modelling library; transformers (and
ImageBind) are imported when an encoder is built.
"""

from mmit.models.audio.base import (AUDIO_ENCODERS, AudioEncoder, AudioFeatureExtractor, build_audio_encoder,
                                    clip_bounds)
from mmit.models.audio import ast_encoder, clap_audio, imagebind_audio, whisper_encoder, tiny  # noqa: F401,E402
from mmit.models.audio.imagebind_audio import imagebind_available
from mmit.models.audio.tiny import ensure_tiny_audio, tiny_audio_names

__all__ = [
    "AUDIO_ENCODERS",
    "AudioEncoder",
    "AudioFeatureExtractor",
    "build_audio_encoder",
    "clip_bounds",
    "ensure_tiny_audio",
    "imagebind_available",
    "tiny_audio_names",
]

"""Tiny audio encoders that need no download: ``tiny-whisper-encoder``, ``tiny-clap-audio``,
``tiny-ast`` and ``tiny-imagebind-audio``.

Each is built from a fixed config with fixed-seed weights (the machine-independent scheme of
:func:`mmit.models.encoders.tiny.deterministic_init_`), saved in its library's own format into
``<mmit cache>/tiny/<name>/`` (:func:`mmit.models.cache.build_dir_once`) and then loaded back BY PATH
through the same code as the full-size member. The transformers ones are saved as the hub checkpoints
are (a full ``WhisperForConditionalGeneration``, a full ``ClapModel`` with a text tower, an
``ASTForAudioClassification``), so loading exercises the skipping of the parts that are not used.

All have a 2 s window, so the default clip layout (2 s) fits:

========================  =======  =================================  ==============  ====
member                    rate Hz  input per clip                     tokens / clip   D
========================  =======  =================================  ==============  ====
tiny-whisper-encoder      16000    16 mel x 200 frames (2 s)          100 (2 s clip)  32
tiny-clap-audio           48000    1 x 201 frames x 16 mel            64              32
tiny-ast                  16000    204 frames x 32 mel                40              32
tiny-imagebind-audio      16000    1 x 128 mel x 204 frames (real)    1               16
========================  =======  =================================  ==============  ====

``tiny-imagebind-audio`` needs the optional ImageBind package (CC BY-NC-SA 4.0), like ``imagebind-audio``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import torch
from torch import nn

from mmit.config.audio import AudioEncoderConfig
from mmit.models.audio.ast_encoder import ASTAudioEncoder
from mmit.models.audio.base import AUDIO_ENCODERS, AudioEncoder
from mmit.models.audio.clap_audio import ClapAudioEncoder
from mmit.models.audio.imagebind_audio import ImageBindAudioEncoder, ImageBindAudioModel, import_imagebind_model
from mmit.models.audio.whisper_encoder import WhisperAudioEncoder
from mmit.models.cache import ensure_tiny
from mmit.models.encoders.tiny import deterministic_init_

#: Bump when a builder changes; cached folders with another version are rebuilt.
TINY_AUDIO_FORMAT = 1

TINY_WHISPER_CONFIG: Dict[str, Any] = dict(
    d_model=32, encoder_layers=3, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=16,
    max_source_positions=100, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
    max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    decoder_start_token_id=1, begin_suppress_tokens=None, suppress_tokens=None,
)
TINY_WHISPER_FEATURES: Dict[str, Any] = dict(feature_size=16, chunk_length=2)
TINY_CLAP_AUDIO_CONFIG: Dict[str, Any] = dict(
    spec_size=64, num_mel_bins=16, patch_size=4, patch_stride=4, depths=[1, 1], num_attention_heads=[2, 2],
    window_size=4, patch_embeds_hidden_size=16, hidden_size=32, projection_dim=8, enable_fusion=False,
)
TINY_CLAP_TEXT_CONFIG: Dict[str, Any] = dict(
    vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=32, projection_dim=8,
)
TINY_CLAP_FEATURES: Dict[str, Any] = dict(feature_size=16, max_length_s=2, truncation="rand_trunc", padding="repeatpad")
TINY_AST_CONFIG: Dict[str, Any] = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, num_mel_bins=32,
    max_length=204, num_labels=4,
)
TINY_AST_FEATURES: Dict[str, Any] = dict(num_mel_bins=32, max_length=204)
TINY_IMAGEBIND_SPEC: Dict[str, Any] = dict(
    audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=2, audio_kernel_size=16, audio_stride=10,
    audio_num_mel_bins=128, audio_target_len=204, audio_drop_path=0.0, out_embed_dim=16,
)


def _construct(seed: int, fn: Callable[[], nn.Module]) -> nn.Module:
    """``fn()`` under a forked, seeded global RNG, then :func:`deterministic_init_` with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = fn()
    return deterministic_init_(model, seed)


def _build_tiny_whisper(out: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    _construct(11, lambda: WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER_CONFIG))).save_pretrained(out)
    WhisperFeatureExtractor(**TINY_WHISPER_FEATURES).save_pretrained(out)


def _build_tiny_clap(out: Path) -> None:
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    cfg = ClapConfig(text_config=TINY_CLAP_TEXT_CONFIG, audio_config=TINY_CLAP_AUDIO_CONFIG, projection_dim=8)
    _construct(12, lambda: ClapModel(cfg)).save_pretrained(out)
    ClapFeatureExtractor(**TINY_CLAP_FEATURES).save_pretrained(out)


def _build_tiny_ast(out: Path) -> None:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    _construct(13, lambda: ASTForAudioClassification(ASTConfig(**TINY_AST_CONFIG))).save_pretrained(out)
    ASTFeatureExtractor(**TINY_AST_FEATURES).save_pretrained(out)


def _build_tiny_imagebind(out: Path) -> None:
    import json

    from safetensors.torch import save_file

    from mmit.models.audio.imagebind_audio import CONFIG_FILE, WEIGHTS_FILE

    model = _construct(14, lambda: ImageBindAudioModel(TINY_IMAGEBIND_SPEC))
    (out / CONFIG_FILE).write_text(json.dumps({"model": TINY_IMAGEBIND_SPEC}, indent=2), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))


_TINY_BUILDERS: Dict[str, Callable[[Path], None]] = {
    "tiny-whisper-encoder": _build_tiny_whisper,
    "tiny-clap-audio": _build_tiny_clap,
    "tiny-ast": _build_tiny_ast,
    "tiny-imagebind-audio": _build_tiny_imagebind,
}
_TINY_SPECS: Dict[str, Any] = {
    "tiny-whisper-encoder": {"library": "transformers", "config": TINY_WHISPER_CONFIG, "features": TINY_WHISPER_FEATURES,
                             "seed": 11},
    "tiny-clap-audio": {"library": "transformers", "audio": TINY_CLAP_AUDIO_CONFIG, "text": TINY_CLAP_TEXT_CONFIG,
                        "features": TINY_CLAP_FEATURES, "seed": 12},
    "tiny-ast": {"library": "transformers", "config": TINY_AST_CONFIG, "features": TINY_AST_FEATURES, "seed": 13},
    "tiny-imagebind-audio": {"library": "imagebind", "spec": TINY_IMAGEBIND_SPEC, "seed": 14},
}


def tiny_audio_names():
    """Names of the tiny members."""
    return sorted(_TINY_BUILDERS)


def ensure_tiny_audio(name: str) -> Path:
    """Return ``<mmit cache>/tiny/<name>``, building it first if absent or stale.

    Raises ``KeyError`` for a name that is not a tiny member, ``ImportError`` for
    ``tiny-imagebind-audio`` without ImageBind, ``OSError`` if the cache is not writable.
    """
    return ensure_tiny("audio encoder", name, _TINY_BUILDERS, _TINY_SPECS, TINY_AUDIO_FORMAT)


def _tiny_path(cfg: AudioEncoderConfig, name: str) -> str:
    return cfg.name_or_path or str(ensure_tiny_audio(name))


@AUDIO_ENCODERS.register("tiny-whisper-encoder")
def tiny_whisper_encoder(cfg: AudioEncoderConfig) -> AudioEncoder:
    """Tiny Whisper encoder (:class:`WhisperAudioEncoder`): 16 kHz, 2 s window, 50 tokens/s, D 32, 3 blocks."""
    return WhisperAudioEncoder(cfg, _tiny_path(cfg, "tiny-whisper-encoder"))


@AUDIO_ENCODERS.register("tiny-clap-audio")
def tiny_clap_audio(cfg: AudioEncoderConfig) -> AudioEncoder:
    """Tiny CLAP audio tower (:class:`ClapAudioEncoder`): 48 kHz, 2 s window, 64 tokens per clip, D 32."""
    return ClapAudioEncoder(cfg, _tiny_path(cfg, "tiny-clap-audio"))


@AUDIO_ENCODERS.register("tiny-ast")
def tiny_ast(cfg: AudioEncoderConfig) -> AudioEncoder:
    """Tiny AST (:class:`ASTAudioEncoder`): 16 kHz, 204 frames (2.055 s), 40 tokens per clip, D 32, 3 blocks."""
    return ASTAudioEncoder(cfg, _tiny_path(cfg, "tiny-ast"))


@AUDIO_ENCODERS.register("tiny-imagebind-audio")
def tiny_imagebind_audio(cfg: AudioEncoderConfig) -> AudioEncoder:
    """Tiny ImageBind audio tower (:class:`ImageBindAudioEncoder`): ImageBind's real input (16 kHz,
    128 x 204 per 2 s clip), one 16-d embedding per clip. Needs the optional ImageBind package."""
    import_imagebind_model()
    return ImageBindAudioEncoder(cfg, _tiny_path(cfg, "tiny-imagebind-audio"))

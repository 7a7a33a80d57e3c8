"""ImageBind's audio tower (Girdhar et al., arXiv 2305.05665), Video-LLaMA's audio encoder (arXiv 2306.02858).

OPTIONAL and NON-COMMERCIAL: ImageBind's code (the ``imagebind`` package, e.g. PyPI
``imagebind-unofficial``) and its weights are licensed CC BY-NC-SA 4.0. mmit does not install,
import or copy it unless this member is built; install it yourself (``pip install --no-deps
imagebind-unofficial==0.1.1 && pip install ftfy regex iopath einops``; its declared dependencies
torchaudio / pytorchvideo / decord are only needed by ``imagebind.data``, which mmit replaces).

Input: per clip a 128-bin Kaldi log-mel filterbank (25 ms windows, 10 ms hop, Hanning window, no
dither) of 16 kHz audio, zero-padded or cut to 204 frames (a 2 s clip fills 198), then normalised
with ImageBind's statistics ``(x - (-4.268)) / 9.138``, laid out ``[1, 128, 204]`` (mel bins, frames):
ImageBind's ``data.load_and_transform_audio_data``. The filterbank is transformers'
``ASTFeatureExtractor(num_mel_bins=128, max_length=204, do_normalize=False)``; the normalisation is
applied here because ``ASTFeatureExtractor`` divides by ``2 * std`` (AST's convention; ImageBind's
9.138 is already twice AST's 4.569). Clips: ``num_clips`` of 2 s spaced uniformly (Video-LLaMA: 8).

Output: one embedding per clip, ``[B, num_clips, out_embed_dim]`` (1024 for ImageBind-Huge): the audio
head's projection of the CLS token, L2-normalised and scaled by 20, i.e. Video-LLaMA's
``audio_imagebind_finalout`` from ``get_audio_feature`` (ImageBind's own ``forward`` also averages the
clips). Only ``select_layer=-1``.

Weights: ``imagebind_huge.pth`` (the full ImageBind state dict; only the ``modality_*.audio.*`` weights
are kept), a folder holding it, or a folder written by :meth:`ImageBindAudioEncoder.save_pretrained`
(``imagebind_audio_config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from mmit.config.audio import AudioEncoderConfig
from mmit.models.audio.ast_encoder import KALDI_WINDOW, kaldi_window_seconds, quiet_mel_warning
from mmit.models.audio.base import (AUDIO_ENCODERS, AudioEncoder, AudioFeatureExtractor, only_last_layer,
                                    resolve_clip_seconds, resolve_sample_rate)

logger = logging.getLogger(__name__)

LICENSE = "CC BY-NC-SA 4.0"
INSTALL_HINT = "pip install --no-deps imagebind-unofficial==0.1.1 && pip install ftfy regex iopath einops"
HUGE_URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
HUGE_FILE = "imagebind_huge.pth"
CONFIG_FILE = "imagebind_audio_config.json"
WEIGHTS_FILE = "model.safetensors"

#: ImageBind's audio preprocessing (``imagebind.data.load_and_transform_audio_data``).
SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
TARGET_LENGTH = 204
MEAN = -4.268
STD = 9.138
CLIP_SECONDS = 2.0

#: ``ImageBindModel`` keyword arguments of ImageBind-Huge's audio tower (``imagebind_huge``).
HUGE_AUDIO_SPEC: Dict[str, Any] = dict(
    audio_embed_dim=768, audio_num_blocks=12, audio_num_heads=12, audio_kernel_size=16, audio_stride=10,
    audio_num_mel_bins=NUM_MEL_BINS, audio_target_len=TARGET_LENGTH, audio_drop_path=0.1, out_embed_dim=1024,
)
_AUDIO_PREFIXES = tuple(f"modality_{part}.audio." for part in ("preprocessors", "trunks", "heads", "postprocessors"))
# The other modalities are built at this size only to be discarded (ImageBind builds them together).
_SMALL = dict(embed_dim=8, num_blocks=1, num_heads=1)


def import_imagebind_model() -> types.ModuleType:
    """``imagebind.models.imagebind_model``, importable without torchaudio / pytorchvideo.

    The ``imagebind`` package's ``__init__`` imports ``imagebind.data`` (which needs torchaudio and
    pytorchvideo); when that fails, a stub module is put at ``sys.modules["imagebind.data"]`` (any
    attribute access on it raises) and the import is retried.

    Raises:
        ImportError: ImageBind is not installed (the message says how to install the optional extra).
    """
    try:
        from imagebind.models import imagebind_model

        return imagebind_model
    except ImportError as e:
        err: Exception = e
    if "imagebind.data" not in sys.modules and _has_spec("imagebind"):
        stub = types.ModuleType("imagebind.data", "Stub installed by mmit: ImageBind's data loading needs torchaudio.")

        def _missing(name: str):
            raise AttributeError(f"imagebind.data.{name}: imagebind.data is a stub (mmit computes ImageBind's audio "
                                 "features itself)")

        stub.__getattr__ = _missing  # type: ignore[attr-defined]
        sys.modules["imagebind.data"] = stub
        try:
            from imagebind.models import imagebind_model

            return imagebind_model
        except ImportError as e:
            err = e
            sys.modules.pop("imagebind.data", None)
    raise ImportError(
        f"the audio encoder 'imagebind-audio' needs the optional ImageBind package ({LICENSE}, non-commercial), "
        f"which is not importable ({err}): install the extra with `{INSTALL_HINT}`"
    ) from err


def _has_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError, AttributeError):  # e.g. sys.modules[name] is None
        return False


def imagebind_available() -> bool:
    """Whether :func:`import_imagebind_model` succeeds."""
    try:
        import_imagebind_model()
        return True
    except ImportError:
        return False


class ImageBindAudioModel(nn.Module):
    """ImageBind's audio modules only, named as in ``ImageBindModel`` (``modality_{preprocessors,
    trunks,heads,postprocessors}.audio.*``), built by ImageBind's own constructors.

    Args:
        spec: ``ImageBindModel`` keyword arguments of the audio tower (:data:`HUGE_AUDIO_SPEC` keys).

    ``forward(x: FloatTensor [N, 1, mel_bins, frames]) -> FloatTensor [N, out_embed_dim]``.
    """

    def __init__(self, spec: Dict[str, Any]):
        super().__init__()
        M = import_imagebind_model().ImageBindModel
        self.spec = dict(spec)
        s = self.spec
        small = {f"{m}_{k}": v for m in ("vision", "text", "depth", "thermal", "imu") for k, v in _SMALL.items()}
        emb = {k: v for k, v in small.items() if k.endswith("embed_dim")}
        pre = M._create_modality_preprocessors(
            None, audio_embed_dim=s["audio_embed_dim"], audio_kernel_size=s["audio_kernel_size"],
            audio_stride=s["audio_stride"], audio_num_mel_bins=s["audio_num_mel_bins"],
            audio_target_len=s["audio_target_len"], **emb,
        )
        trunks = M._create_modality_trunks(
            None, audio_embed_dim=s["audio_embed_dim"], audio_num_blocks=s["audio_num_blocks"],
            audio_num_heads=s["audio_num_heads"], audio_drop_path=s["audio_drop_path"], **small,
        )
        heads = M._create_modality_heads(None, out_embed_dim=s["out_embed_dim"], audio_embed_dim=s["audio_embed_dim"], **emb)
        post = M._create_modality_postprocessors(None, s["out_embed_dim"])
        self.modality_preprocessors = nn.ModuleDict({"audio": pre["audio"]})
        self.modality_trunks = nn.ModuleDict({"audio": trunks["audio"]})
        self.modality_heads = nn.ModuleDict({"audio": heads["audio"]})
        self.modality_postprocessors = nn.ModuleDict({"audio": post["audio"]})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.modality_preprocessors["audio"](audio=x)
        h = self.modality_trunks["audio"](**v["trunk"])
        h = self.modality_heads["audio"](h, **v["head"])
        return self.modality_postprocessors["audio"](h)


def audio_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The ``modality_*.audio.*`` entries of a full ImageBind state dict (``module.`` prefixes dropped)."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return {k: v for k, v in state.items() if k.startswith(_AUDIO_PREFIXES)}


def load_imagebind_audio(path: str, spec: Optional[Dict[str, Any]] = None) -> Tuple[ImageBindAudioModel, Dict[str, Any]]:
    """Load the audio tower from ``path``.

    Args:
        path: a folder written by :meth:`ImageBindAudioEncoder.save_pretrained`, a folder holding
            ``imagebind_huge.pth``, or a file with a full ImageBind state dict (``.pth`` / ``.pt`` via
            ``torch.load(weights_only=True)``, or ``.safetensors``).
        spec: the tower's ``ImageBindModel`` arguments for a state-dict file (default: ImageBind-Huge).

    Returns:
        ``(model, spec)``, the model in eval mode.

    Raises:
        ImportError: ImageBind not installed. FileNotFoundError: nothing loadable at ``path``.
        ValueError: the file holds no audio weights. RuntimeError: weights do not fit ``spec``.
    """
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir() and (p / CONFIG_FILE).is_file():
        spec = json.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))["model"]
        state = load_file(str(p / WEIGHTS_FILE))
    else:
        if p.is_dir():
            p = p / HUGE_FILE
        if not p.is_file():
            raise FileNotFoundError(f"{path}: no ImageBind checkpoint (expected {CONFIG_FILE}, {HUGE_FILE} or a state-dict file)")
        spec = dict(HUGE_AUDIO_SPEC if spec is None else spec)
        raw = load_file(str(p)) if p.suffix == ".safetensors" else torch.load(str(p), map_location="cpu", weights_only=True)
        state = audio_state_dict(raw)
        if not state:
            raise ValueError(f"{path}: no ImageBind audio weights (keys starting with {', '.join(_AUDIO_PREFIXES)})")
    model = ImageBindAudioModel(spec)
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


class ImageBindFeatures(AudioFeatureExtractor):
    """Clips -> ``[n, 1, num_mel_bins, target_length]``: ImageBind's normalised Kaldi filterbanks
    (module docstring), computed with transformers' ``ASTFeatureExtractor``."""

    def __init__(self, clip_seconds: float = CLIP_SECONDS, num_clips: int = 3, num_mel_bins: int = NUM_MEL_BINS,
                 target_length: int = TARGET_LENGTH, mean: float = MEAN, std: float = STD, sample_rate: int = SAMPLE_RATE):
        super().__init__(sample_rate, clip_seconds, num_clips, min_samples=KALDI_WINDOW)
        from transformers import ASTFeatureExtractor

        with quiet_mel_warning():
            self.hf_extractor = ASTFeatureExtractor(
                sampling_rate=sample_rate, num_mel_bins=num_mel_bins, max_length=target_length, do_normalize=False
            )
        self.mean, self.std = float(mean), float(std)

    def _featurize(self, clips: List[np.ndarray]) -> np.ndarray:
        fbank = np.stack(self.hf_extractor(clips, sampling_rate=self.sample_rate, return_tensors="np")["input_values"])
        return ((fbank - self.mean) / self.std).transpose(0, 2, 1)[:, None]


class ImageBindAudioEncoder(AudioEncoder):
    """ImageBind's audio tower as an :class:`AudioEncoder` (optional extra, CC BY-NC-SA 4.0).

    Args:
        cfg: the encoder config (``sample_rate`` 16000 or None; ``clip_seconds`` at most 2.055 s (204
            frames), None meaning 2 s; ``select_layer`` -1).
        name_or_path: see :func:`load_imagebind_audio`.

    Attributes: see :class:`AudioEncoder`; also ``model`` (:class:`ImageBindAudioModel`) and ``spec``.
    ``hidden_size`` is ``out_embed_dim``; ``tokens_per_clip`` is 1; ``input_shape`` is ``(1, 128, 204)``.

    Raises:
        ImportError: ImageBind not installed. ValueError: bad ``sample_rate`` / ``clip_seconds`` /
        ``select_layer``. FileNotFoundError / RuntimeError: see :func:`load_imagebind_audio`.
    """

    def __init__(self, cfg: AudioEncoderConfig, name_or_path: str):
        super().__init__(cfg)
        only_last_layer(cfg, "one embedding per clip, Video-LLaMA's ImageBind output")
        self.sample_rate = resolve_sample_rate(cfg, SAMPLE_RATE)
        self.name_or_path = str(name_or_path)
        self.model, self.spec = load_imagebind_audio(self.name_or_path)
        mel, frames = int(self.spec["audio_num_mel_bins"]), int(self.spec["audio_target_len"])
        self.clip_seconds = resolve_clip_seconds(cfg, CLIP_SECONDS, kaldi_window_seconds(frames, self.sample_rate))
        self.hidden_size = int(self.spec["out_embed_dim"])
        self.tokens_per_clip = 1
        self.input_shape = (1, mel, frames)
        self.feature_extractor = ImageBindFeatures(self.clip_seconds, self.num_clips, mel, frames, sample_rate=self.sample_rate)
        logger.info("ImageBind audio tower from %s: ImageBind is %s (non-commercial use only)", self.name_or_path, LICENSE)

    def _clip_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, None, :]

    def save_pretrained(self, save_directory: str) -> None:
        """Write ``imagebind_audio_config.json`` (the tower's ``ImageBindModel`` arguments and the
        feature settings) and ``model.safetensors`` (the ``modality_*.audio.*`` weights)."""
        from safetensors.torch import save_file

        os.makedirs(save_directory, exist_ok=True)
        feats = dict(sample_rate=SAMPLE_RATE, num_mel_bins=int(self.spec["audio_num_mel_bins"]),
                     target_length=int(self.spec["audio_target_len"]), mean=MEAN, std=STD, clip_seconds=CLIP_SECONDS)
        meta = {"model": self.spec, "features": feats, "license": f"ImageBind weights: {LICENSE}"}
        Path(save_directory, CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(Path(save_directory, WEIGHTS_FILE)))


@AUDIO_ENCODERS.register("imagebind-audio")
def imagebind_audio(cfg: AudioEncoderConfig) -> ImageBindAudioEncoder:
    """ImageBind-Huge's audio tower: 16 kHz, 2 s clips, one 1024-d embedding per clip (Video-LLaMA).
    Needs ``name_or_path`` (the checkpoint is not downloaded by mmit)."""
    import_imagebind_model()
    if not cfg.name_or_path:
        raise ValueError(
            f"audio encoder 'imagebind-audio' needs name_or_path: the ImageBind-Huge checkpoint {HUGE_FILE} "
            f"({HUGE_URL}; {LICENSE}, non-commercial), a folder holding it, or a folder written by save_pretrained"
        )
    return ImageBindAudioEncoder(cfg, cfg.name_or_path)

"""The config section of an audio encoder (:mod:`mmit.models.audio`).

Defaults are Video-LLaMA's audio branch (arXiv 2306.02858): ImageBind-Huge's audio tower
(arXiv 2305.05665), frozen, fed 8 clips of 2 s at 16 kHz (ImageBind's own default is 3 clips), one
embedding per clip (``select_layer=-1``: the tower's final, normalised output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mmit.config.paths import path_field


@dataclass
class AudioEncoderConfig:
    #: Registry key (``mmit.models.audio.AUDIO_ENCODERS``): ``imagebind-audio``, ``whisper-encoder``,
    #: ``clap-audio``, ``ast`` or a ``tiny-*`` member (built locally, no download).
    name: str = "imagebind-audio"
    #: Where the weights come from: hub id or local folder (``imagebind-audio``: the ``imagebind_huge.pth``
    #: file, a folder holding it, or a folder written by ``save_pretrained``). None: the member's default.
    name_or_path: Optional[str] = path_field(None)
    #: Hidden layer in transformers' ``hidden_states`` convention (-1: last). ``clap-audio`` and
    #: ``imagebind-audio`` only support -1 (their final feature map / per-clip embedding).
    select_layer: int = -1
    #: Keep the encoder frozen (Video-LLaMA). A frozen encoder runs without autograd and stays in eval mode.
    frozen: bool = True
    #: Hz of the waveforms given to the feature extractor; must equal the member's rate (16000 for
    #: ImageBind, Whisper and AST, 48000 for CLAP). None: the member's rate.
    sample_rate: Optional[int] = 16000
    #: Seconds per clip (ImageBind / Video-LLaMA: 2.0). None: the member's native window (Whisper 30 s,
    #: CLAP 10 s, AST 10.255 s (1024 frames), ImageBind 2 s). At most the native window.
    clip_seconds: Optional[float] = 2.0
    #: Clips per waveform, spaced uniformly over it as ImageBind's sampler does (Video-LLaMA: 8).
    num_clips: int = 8

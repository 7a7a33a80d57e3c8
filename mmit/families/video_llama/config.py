"""The ``model:`` section of a Video-LLaMA run (``family: video-llama``; arXiv 2306.02858).

Defaults are Video-LLaMA's (``video_llama/models/video_llama.py``, ``configs/models/video_llama.yaml``,
``train_configs/*.yaml``): EVA ViT-g + the frozen BLIP-2 image Q-Former (32 queries) per frame, a
learned frame position embedding (32 positions), a 2-layer video Q-Former with 32 queries and
cross-attention in every layer, ``llama_proj``; the audio branch (when ``audio_encoder`` is set):
ImageBind-Huge's audio tower over 8 clips of 2 s, an audio position embedding (8 positions), a 2-layer
audio Q-Former with 8 queries, ``audio_llama_proj``; Vicuna's ``###`` conversation template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from mmit.config.audio import AudioEncoderConfig
from mmit.config.components import LLMConfig, QFormerConfig, VisionTowerConfig
from mmit.config.schema import FamilyConfig


def _eva_vit_g() -> VisionTowerConfig:
    """BLIP-2's tower: EVA ViT-g, the last block's tokens with CLS kept, then ``ln_vision``."""
    return VisionTowerConfig(name="eva-vit-g", select_layer=-1, select_feature="cls_patch", image_aspect_ratio="crop")


def _image_qformer() -> QFormerConfig:
    """BLIP-2's image Q-Former (frozen in Video-LLaMA): 12 layers, cross-attention every 2, no text."""
    return QFormerConfig(num_query_tokens=32, text_input=False, cross_attention_frequency=2)


def _branch_qformer(queries: int) -> QFormerConfig:
    """Video-LLaMA's ``init_video_Qformer``: a fresh 2-layer BERT-base Q-Former, cross-attention in
    every layer, ``queries`` query tokens, no text input."""
    return QFormerConfig(num_query_tokens=queries, num_hidden_layers=2, cross_attention_frequency=1,
                         text_input=False)


@FamilyConfig.register_subclass("video-llama")
@dataclass
class VideoLlamaConfig(FamilyConfig):
    vision_tower: VisionTowerConfig = field(default_factory=_eva_vit_g)
    #: BLIP-2's image Q-Former, run per frame (``init_from``: a ``Blip2ForConditionalGeneration``
    #: folder or hub id such as ``Salesforce/blip2-flan-t5-xxl``, Video-LLaMA's
    #: ``blip2_pretrained_flant5xxl.pth``). Its output width is the video Q-Former's input width.
    image_qformer: QFormerConfig = field(default_factory=_image_qformer)
    #: The video Q-Former over all frames' query outputs (``video_Qformer``, ``video_query_tokens``).
    video_qformer: QFormerConfig = field(default_factory=lambda: _branch_qformer(32))
    #: Rows of the learned frame position embedding (``video_frame_position_embedding``, ``max_frame_pos``).
    max_frame_pos: int = 32
    #: Frames sampled per video (``n_frms``), at most ``max_frame_pos``.
    num_frames: int = 8
    #: Frame indices: ``segment-start`` (Video-LLaMA's ``load_video``) or ``uniform`` (first and last included).
    frame_sampling: Literal["segment-start", "uniform"] = "segment-start"
    #: Write Video-LLaMA's "The video contains N frames sampled at t1, t2, ... seconds. " after each video.
    frame_time_message: bool = True
    #: The audio encoder (``mmit.models.audio``); None: no audio branch (Video-LLaMA's ``equip_audio_branch``).
    audio_encoder: Optional[AudioEncoderConfig] = None
    #: The audio Q-Former (``audio_Qformer``, ``audio_query_tokens``: 8 queries).
    audio_qformer: QFormerConfig = field(default_factory=lambda: _branch_qformer(8))
    #: Rows of the audio position embedding (``audio_position_embedding``: one per clip; Video-LLaMA 8).
    max_audio_pos: int = 8
    #: What a video without an audio track gives the audio branch: ``skip`` the sample (counted) or ``silence``.
    no_audio: Literal["skip", "silence"] = "skip"
    llm: LLMConfig = field(default_factory=lambda: LLMConfig(name_or_path="lmsys/vicuna-7b-v1.5"))
    #: Which branch trains in stage ``align``: ``video`` (VL stages), ``audio`` (AL stages) or ``both``.
    train_branch: Literal["video", "audio", "both"] = "video"
    #: Conversation template: ``video-llama`` (Vicuna, ``###Human: ... ###Assistant: ...###``) or
    #: ``video-llama-2`` (LLaMA-2-Chat, ``[INST] <<SYS>>\\n \\n<</SYS>>\\n\\n... [/INST]``).
    template: str = "video-llama"
    #: Token budget per sample, media tokens included (Video-LLaMA ``max_txt_len`` 320 / 512 + 32 queries).
    max_length: int = 512

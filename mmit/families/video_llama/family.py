"""The Video-LLaMA family's hooks (arXiv 2306.02858).

Stages: ``align`` is Video-LLaMA's recipe for both of its training stages (the stages differ only in
data: stage 1 video/image captions, WebVid-2.5M + CC595k; stage 2 instruction data, VideoChat + MiniGPT-4
+ LLaVA): the vision tower, the BLIP-2 image Q-Former, the audio encoder and the LLM are frozen; the
branch named by ``model.train_branch`` trains: ``video`` (video Q-Former, its queries, the frame position
embedding and ``llama_proj``), ``audio`` (audio Q-Former, queries, audio position embedding,
``audio_llama_proj``) or ``both``. ``finetune`` adds the LLM; ``full`` trains everything (the audio
encoder too unless ``audio_encoder.frozen``). ``image_qformer.init_from`` (a BLIP-2 checkpoint) is applied
in :meth:`VideoLlamaFamily.prepare_for_training`, never when a checkpoint is loaded.

Video-LLaMA trains its audio branch on ImageBind *vision* features of the same video/image data (its
``train_flag == 1``, relying on ImageBind's shared embedding space). Here the audio branch trains on
real audio (clips decoded from a video's track or from audio files); feeding it ImageBind's vision
tower instead is not implemented (it needs ImageBind's vision weights beside the audio tower).
"""

from __future__ import annotations

import torch

from mmit.data.batch import has_supervision
from mmit.families.base import ModelFamily
from mmit.families.video_llama.config import VideoLlamaConfig


class VideoLlamaFamily(ModelFamily):
    config_class = VideoLlamaConfig
    stages = ("align", "finetune", "full")
    unit = "tokens"
    media_kinds = ("image", "video", "audio")
    exporters = {"video-llama": "mmit.families.video_llama.export:export_video_llama"}
    importers = {"video-llama": "mmit.families.video_llama.export:import_video_llama"}

    def build(self, cfg, dtype=torch.float32):
        from mmit.families.video_llama.model import build_video_llama

        return build_video_llama(cfg.model, dtype)

    def trainable_modules(self, cfg):
        stage, branch = cfg.train.stage, cfg.model.train_branch
        video = branch in ("video", "both") or stage == "full"
        audio = branch in ("audio", "both") or stage == "full"
        out = {"vision_tower": stage == "full", "image_qformer": stage == "full",
               "frame_position_embedding": video, "video_qformer": video, "llm": stage in ("finetune", "full")}
        if cfg.model.audio_encoder is not None:
            out.update({"audio_encoder": stage == "full" and not cfg.model.audio_encoder.frozen,
                        "audio_position_embedding": audio, "audio_qformer": audio})
        return out

    def prepare_for_training(self, model, cfg):
        """Initialise the image Q-Former from ``image_qformer.init_from`` unless ``model.init_from`` gave it weights."""
        if cfg.model.image_qformer.init_from and not cfg.model.init_from:
            from mmit.models.connectors.qformer import init_qformer

            init_qformer(model.image_qformer, cfg.model.image_qformer.init_from)

    def persistent_modules(self, cfg):
        """The image Q-Former: frozen, its BLIP-2 weights come from ``image_qformer.init_from``."""
        return ("image_qformer",)

    def param_groups(self, model, cfg):
        """Branch modules at ``train.projector_lr`` (None: ``train.lr``), the rest (the LLM, the towers) in ``model``."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        branch = ("video_qformer.", "frame_position_embedding.", "audio_qformer.", "audio_position_embedding.")
        return {"branches": ([(n, p) for n, p in named if n.startswith(branch)], cfg.train.projector_lr),
                "model": ([(n, p) for n, p in named if not n.startswith(branch)], None)}

    def processor(self, cfg, model, tokenizer):
        from mmit.families.video_llama.processor import VideoLlamaProcessor

        m = cfg.model
        enc = model.audio_encoder
        return VideoLlamaProcessor(
            tokenizer, m.template, model.vision_tower.image_processor,
            None if enc is None else enc.feature_extractor, model.num_video_query_tokens,
            model.num_audio_query_tokens, m.num_frames, m.frame_sampling, m.frame_time_message,
            16000 if enc is None else enc.sample_rate, m.no_audio, m.max_length, cfg.data.overflow)

    def loss(self, model, batch):
        """Mean cross-entropy over answer tokens. Raises ``RuntimeError`` for a batch without one."""
        if not has_supervision(batch.labels):
            raise RuntimeError(f"batch with no supervised token: {batch.ids}")
        return model(batch).loss

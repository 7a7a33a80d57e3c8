"""The Video-LLaMA model (Zhang et al., arXiv 2306.02858): a vision-language and an audio-language branch
that each turn media into a few query tokens spliced into a frozen LLM.

Source: DAMO-NLP-SG/Video-LLaMA ``video_llama/models/video_llama.py`` (``encode_videoQformer_visual``,
``encode_audioQformer``). The Q-Formers are transformers' ``InstructBlipQFormerModel`` (LAVIS's
``BertLMHeadModel`` with cross-attention, without text input), through
:class:`~mmit.models.connectors.qformer.QFormerConnector`.

Vision-language branch (V videos of F frames; an image is a 1-frame video, as Video-LLaMA repeats it
along time)::

    frames [V*F,3,H,W] -> vision_tower -> [V*F,N,D_enc] -> image_qformer (BLIP-2, no projection) -> [V*F,32,H]
    + frame_position_embedding[f] (same vector for the 32 queries of frame f)  -> [V,F*32,H]
    -> video_qformer (32 queries, cross-attention every layer) -> language_projection (llama_proj) -> [V,32,D]

Audio-language branch (A audio items, C clips each, ``tokens_per_clip`` features per clip; ImageBind: 1)::

    features [A,C,...] -> audio_encoder -> [A,C*k,d] + audio_position_embedding[clip] -> audio_qformer
    (8 queries) -> language_projection (audio_llama_proj) -> [A,8,D]

Splice: ``input_ids`` hold ``M_v`` copies of the visual token (``<ImageHere>``) per image/video and
``M_a`` copies of the audio token (``<AudioHere>``) per audio item; the branch outputs replace those
embeddings in sample, then text order. Shapes: B batch, T tokens, D LLM width, H Q-Former width.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
from torch import nn

from mmit.data.batch import Batch
from mmit.models.interface import MultimodalModel, SpliceDecoderMixin, enable_activation_checkpointing

log = logging.getLogger(__name__)

#: Video-LLaMA's patch tokens: ``<ImageHere>`` for images and videos, ``<AudioHere>`` for audio.
VISUAL_TOKEN = "<ImageHere>"
AUDIO_TOKEN = "<AudioHere>"


class VideoLlamaLM(SpliceDecoderMixin, MultimodalModel):
    """Both branches + an HF causal LM (module docstring). The inference contract comes from
    :class:`~mmit.models.interface.SpliceDecoderMixin` over :meth:`embed_batch`.

    Args:
        vision_tower: ``[I,3,H,W] -> [I,N,D_enc]``.
        image_qformer: ``QFormerConnector`` without projection, ``[I,N,D_enc] -> [I,M_img,H]``.
        frame_position_embedding: ``nn.Embedding(max_frame_pos, H)``.
        video_qformer: ``QFormerConnector`` ``[V,F*M_img,H] -> [V,M_v,D]``.
        llm: ``AutoModelForCausalLM``.
        visual_token_id / audio_token_id: ids of ``<ImageHere>`` / ``<AudioHere>``.
        audio_encoder, audio_position_embedding (``nn.Embedding(max_audio_pos, d)``), audio_qformer
            (``[A,C*k,d] -> [A,M_a,D]``): the audio branch, all three or none.
    """

    def __init__(self, vision_tower: nn.Module, image_qformer: nn.Module, frame_position_embedding: nn.Embedding,
                 video_qformer: nn.Module, llm: nn.Module, visual_token_id: int, audio_token_id: int,
                 audio_encoder: Optional[nn.Module] = None, audio_position_embedding: Optional[nn.Embedding] = None,
                 audio_qformer: Optional[nn.Module] = None):
        super().__init__()
        if (audio_encoder is None) != (audio_qformer is None) or (audio_qformer is None) != (audio_position_embedding is None):
            raise ValueError("the audio branch needs audio_encoder, audio_position_embedding and audio_qformer together")
        self.vision_tower = vision_tower
        self.image_qformer = image_qformer
        self.frame_position_embedding = frame_position_embedding
        self.video_qformer = video_qformer
        self.audio_encoder = audio_encoder
        self.audio_position_embedding = audio_position_embedding
        self.audio_qformer = audio_qformer
        self.llm = llm
        self.visual_token_id = int(visual_token_id)
        self.audio_token_id = int(audio_token_id)

    @property
    def num_video_query_tokens(self) -> int:
        """M_v: LLM tokens per image or video."""
        return self.video_qformer.num_query_tokens

    @property
    def num_audio_query_tokens(self) -> int:
        """M_a: LLM tokens per audio item (0 without an audio branch)."""
        return 0 if self.audio_qformer is None else self.audio_qformer.num_query_tokens

    def train(self, mode: bool = True) -> "VideoLlamaLM":
        """As ``nn.Module.train``, but a frozen image Q-Former stays in eval mode (no dropout), as
        Video-LLaMA's ``disabled_train``; frozen encoders do the same themselves."""
        super().train(mode)
        if not any(p.requires_grad for p in self.image_qformer.parameters()):
            self.image_qformer.eval()
        return self

    # -- branches ---------------------------------------------------------------------------------------
    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames`` FloatTensor ``[V,F,3,H,W]`` (F <= max_frame_pos) -> ``[V,M_v,D]``.

        Raises ``ValueError`` when F exceeds the frame position embedding's rows."""
        v, f = frames.shape[:2]
        if f > self.frame_position_embedding.num_embeddings:
            raise ValueError(f"{f} frames but the frame position embedding has "
                             f"{self.frame_position_embedding.num_embeddings} rows (max_frame_pos)")
        feats = self.vision_tower(frames.flatten(0, 1))
        q = self.image_qformer(feats)  # [V*F, M_img, H]
        q = q.reshape(v, f, q.shape[1], q.shape[2])
        pos = self.frame_position_embedding(torch.arange(f, device=q.device))  # [F, H]
        q = q + pos[None, :, None, :].to(q.dtype)
        return self.video_qformer(q.flatten(1, 2))

    def encode_audio(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` ``[A,C,*input_shape]`` (the audio encoder's feature extractor output) -> ``[A,M_a,D]``.

        The audio position of a feature is its clip index (Video-LLaMA: one ImageBind embedding per
        clip). Raises ``ValueError`` without an audio branch or with more clips than position rows."""
        if self.audio_encoder is None:
            raise ValueError("this model has no audio branch (model.audio_encoder is not set)")
        feats = self.audio_encoder(inputs)  # [A, C*k, d]
        clips = inputs.shape[1]
        if clips > self.audio_position_embedding.num_embeddings:
            raise ValueError(f"{clips} audio clips but the audio position embedding has "
                             f"{self.audio_position_embedding.num_embeddings} rows (max_audio_pos)")
        per_clip = feats.shape[1] // clips
        idx = torch.arange(clips, device=feats.device).repeat_interleave(per_clip)
        pos = self.audio_position_embedding(idx)
        qdtype = self.audio_position_embedding.weight.dtype
        return self.audio_qformer(feats.to(qdtype) + pos[None])

    # -- splice -----------------------------------------------------------------------------------------
    def visual_features(self, batch: Batch) -> Optional[torch.Tensor]:
        """``[U,M_v,D]``: every image and video of the batch through the vision-language branch, in
        sample then position order (None without visual media)."""
        units = []  # (sample, position, features [M_v, D])
        for kind in ("image", "video"):
            m = batch.media.get(kind)
            if m is None:
                continue
            frames = m.values.unsqueeze(1) if kind == "image" else m.values
            feats = self.encode_video(frames)
            units += [(b, p, feats[j]) for j, (b, p) in enumerate(zip(m.sample_index.tolist(), m.position.tolist()))]
        if not units:
            return None
        units.sort(key=lambda u: (u[0], u[1]))
        return torch.stack([u[2] for u in units])

    def _scatter(self, embeds: torch.Tensor, is_tok: torch.Tensor, feats: Optional[torch.Tensor], what: str,
                 per_item: int) -> torch.Tensor:
        n = 0 if feats is None else feats.shape[0]
        if int(is_tok.sum()) != n * per_item:
            raise ValueError(f"{int(is_tok.sum())} {what} token positions in input_ids but {n} item(s) x {per_item}")
        if n == 0:
            return embeds
        return embeds.masked_scatter(is_tok.unsqueeze(-1), feats.to(embeds.dtype).reshape(-1, embeds.shape[-1]))

    def embed(self, input_ids: torch.Tensor, visual: Optional[torch.Tensor] = None,
              audio: Optional[torch.Tensor] = None) -> torch.Tensor:
        """LLM input embeddings ``[B,T,D]``: token embeddings with ``visual [U,M_v,D]`` spliced at the
        visual-token positions and ``audio [A,M_a,D]`` at the audio-token positions, in order.

        Raises ``ValueError`` when a count of positions does not match the features."""
        is_vis = input_ids == self.visual_token_id
        is_aud = input_ids == self.audio_token_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_vis | is_aud, 0))
        embeds = self._scatter(embeds, is_vis, visual, VISUAL_TOKEN, self.num_video_query_tokens)
        return self._scatter(embeds, is_aud, audio, AUDIO_TOKEN, self.num_audio_query_tokens)

    def embed_batch(self, batch: Batch) -> torch.Tensor:
        """:meth:`embed` of a typed batch: ``media["image"]`` ``[I,3,H,W]``, ``media["video"]``
        ``[V,F,3,H,W]`` and ``media["audio"]`` ``[A,C,...]``."""
        audio = batch.values("audio")
        return self.embed(batch.input_ids, self.visual_features(batch),
                          None if audio is None else self.encode_audio(audio))

    @torch.no_grad()
    def generate_tokens(self, batch: Batch, **generate_kwargs) -> torch.Tensor:
        """New ids only; the patch tokens are never generated (they have LM-head rows only because the
        vocabulary was resized; Video-LLaMA's LLM has none)."""
        generate_kwargs.setdefault("suppress_tokens", [self.visual_token_id, self.audio_token_id])
        return super().generate_tokens(batch, **generate_kwargs)

    def forward(self, batch: Batch):
        """Causal-LM forward of a typed batch (labels ``[B,T]``, -100 outside the answers). Returns the
        LLM's output (``loss`` the mean cross-entropy over supervised tokens, ``logits [B,T,V]``)."""
        return self.llm(inputs_embeds=self.embed_batch(batch), attention_mask=batch.attention_mask,
                        labels=batch.labels)

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing in the LLM and the branch Q-Formers (transformers, non-reentrant)."""
        mods = [self.llm, self.video_qformer.qformer]
        if self.audio_qformer is not None:
            mods.append(self.audio_qformer.qformer)
        enable_activation_checkpointing(*mods)


# ----------------------------------------------------------------------------------------------------
def build_video_llama(cfg, dtype: torch.dtype = torch.float32) -> Tuple[VideoLlamaLM, object]:
    """Build from a :class:`~mmit.families.video_llama.config.VideoLlamaConfig`: tower, image Q-Former
    (random until ``image_qformer.init_from`` is applied by the family), frame position embedding, video
    Q-Former, LLM (``<ImageHere>``/``<AudioHere>`` added to its tokenizer, embeddings resized) and, when
    ``audio_encoder`` is set, the audio branch. Writes nothing. Returns ``(model, tokenizer)``.

    Raises ``ValueError`` for ``num_frames > max_frame_pos`` or ``audio_encoder.num_clips >
    max_audio_pos``; :class:`~mmit.registry.UnknownNameError` for unknown tower/encoder names.
    """
    from mmit.models.connectors.qformer import QFormerConnector
    from mmit.models.encoders import VISION_TOWERS, build_vision_tower
    from mmit.models.llm import load_llm
    from mmit.models.tokenizer import ensure_special_token

    if cfg.num_frames > cfg.max_frame_pos:
        raise ValueError(f"model.num_frames={cfg.num_frames} exceeds model.max_frame_pos={cfg.max_frame_pos}")
    VISION_TOWERS.resolve(cfg.vision_tower.name)
    tower = build_vision_tower(cfg.vision_tower)
    llm, tokenizer, _ = load_llm(cfg.llm, dtype)
    visual_id, audio_id = (ensure_special_token(tokenizer, t) for t in (VISUAL_TOKEN, AUDIO_TOKEN))
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    d_llm = llm.config.get_text_config().hidden_size
    image_qformer = QFormerConnector(cfg.image_qformer, tower.hidden_size, None)
    h = cfg.image_qformer.hidden_size
    frame_pos = nn.Embedding(cfg.max_frame_pos, h)
    video_qformer = QFormerConnector(cfg.video_qformer, h, d_llm)
    audio = {}
    if cfg.audio_encoder is not None:
        from mmit.models.audio import build_audio_encoder

        if cfg.audio_encoder.num_clips > cfg.max_audio_pos:
            raise ValueError(f"model.audio_encoder.num_clips={cfg.audio_encoder.num_clips} exceeds "
                             f"model.max_audio_pos={cfg.max_audio_pos}")
        enc = build_audio_encoder(cfg.audio_encoder)
        audio = {"audio_encoder": enc, "audio_position_embedding": nn.Embedding(cfg.max_audio_pos, enc.hidden_size),
                 "audio_qformer": QFormerConnector(cfg.audio_qformer, enc.hidden_size, d_llm)}
    model = VideoLlamaLM(tower, image_qformer, frame_pos, video_qformer, llm, visual_id, audio_id, **audio)
    return model.to(dtype), tokenizer

"""The Flamingo model (arXiv 2204.14198; OpenFlamingo arXiv 2308.01390; Otter arXiv 2305.03726).

Vision tower (any registered tower; OpenFlamingo's is open_clip ViT-L/14, final patch tokens after
``ln_post``) -> Perceiver resampler (``[B,T_img,F,v,D_v] -> [B,T_img,n,D_v]``) -> tanh-gated
cross-attention blocks before every N-th decoder layer of any HF causal LM. The images are not spliced
into the token sequence: each stays one ``<image>`` token, and a text token attends to the latents of
the latest ``<image>`` before it (``only_attend_immediate_media``). Same layout and math as
``open_flamingo/src/flamingo.py``, which makes ``mmit import/export --format openflamingo`` exact.

Shapes: B samples, T text tokens, T_img images per sample (padded to the batch's most), F frames,
v vision tokens per frame, n latents, D_v vision width, D LLM width.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from mmit.data.batch import Batch
from mmit.models.connectors.perceiver import PerceiverResampler
from mmit.models.cross_attention import add_cross_attention, condition, decoder_layers_attr
from mmit.models.interface import (MultimodalModel, Prefix, enable_activation_checkpointing, extend_cached,
                                   output_cache)


class FlamingoLM(MultimodalModel):
    """Vision tower + Perceiver + cross-attention LLM; the inference contract of
    :mod:`mmit.models.interface` keeps the media latents in the prefix and selects them per row.

    Args:
        vision_tower: ``[I,3,H,W] -> [I,v,D_v]``; ``post_norm`` (or None) is applied to its tokens.
        perceiver: :class:`~mmit.models.connectors.perceiver.PerceiverResampler` of width ``D_v``.
        llm: an HF causal LM whose decoder layers :func:`~mmit.models.cross_attention.add_cross_attention`
            wrapped; ``xattn`` the blocks it returned (registered here once).
        media_token_id, endofchunk_token_id, answer_token_id: ids of ``<image>``, ``<|endofchunk|>``, ``<answer>``.
    """

    def __init__(self, vision_tower: nn.Module, post_norm: Optional[nn.Module], perceiver: nn.Module,
                 xattn: nn.ModuleList, llm: nn.Module, media_token_id: int, endofchunk_token_id: int,
                 answer_token_id: int):
        super().__init__()
        self.vision_tower, self.perceiver, self.xattn, self.llm = vision_tower, perceiver, xattn, llm
        object.__setattr__(self, "post_norm", post_norm)  # part of the tower (e.g. open_clip ln_post)
        self.media_token_id, self.endofchunk_token_id = int(media_token_id), int(endofchunk_token_id)
        self.answer_token_id = int(answer_token_id)
        self._generation_media = None
        llm.register_forward_pre_hook(self._condition_generation_step, with_kwargs=True)

    # -- media ------------------------------------------------------------------------------------------
    def vision_x(self, batch: Batch) -> Optional[torch.Tensor]:
        """OpenFlamingo's ``vision_x`` ``[B,T_img,1,3,H,W]`` from a typed batch (zeros where a sample has
        fewer images than the batch's most; those slots are never attended), or None without images."""
        m = batch.media.get("image")
        if m is None:
            return None
        counts = batch.count("image")
        out = m.values.new_zeros(batch.size, max(counts), 1, *m.values.shape[1:])
        seen = [0] * batch.size
        for v, b in zip(m.values, m.sample_index.tolist()):
            out[b, seen[b], 0] = v
            seen[b] += 1
        return out

    def encode_media(self, vision_x: torch.Tensor) -> torch.Tensor:
        """``vision_x`` ``[B,T_img,F,3,H,W]`` -> latents ``[B,T_img,n,D_v]``."""
        B, T, F = vision_x.shape[:3]
        feats = self.vision_tower(vision_x.flatten(0, 2))  # [B*T*F, v, D_v]
        if self.post_norm is not None:
            feats = self.post_norm(feats)
        feats = feats.reshape(B, T, F, *feats.shape[1:])
        return self.perceiver(feats.to(next(self.perceiver.parameters()).dtype))

    def _media(self, input_ids: torch.Tensor, vision_x: Optional[torch.Tensor]):
        locations = input_ids == self.media_token_id
        if vision_x is None:
            p = next(self.perceiver.parameters())
            n = self.perceiver.num_latents
            return p.new_zeros(input_ids.shape[0], 1, n, p.shape[-1]), locations
        return self.encode_media(vision_x), locations

    # -- training forward (OpenFlamingo's signature) ------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, vision_x: Optional[torch.Tensor] = None, **kwargs):
        """``input_ids``/``attention_mask``/``labels`` ``[B,T]``, ``vision_x`` ``[B,T_img,F,3,H,W]`` or None.
        Returns the LLM's output (``loss`` mean over supervised tokens, ``logits [B,T,V]``)."""
        media, locations = self._media(input_ids, vision_x)
        condition(self.llm, media, locations, use_cached_media=False)
        return self.llm(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    # -- inference contract ---------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, batch: Batch, all_logits: bool = False) -> Prefix:
        media, locations = self._media(batch.input_ids, self.vision_x(batch))
        condition(self.llm, media, locations, use_cached_media=False)
        mask = batch.attention_mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.llm(input_ids=batch.input_ids, attention_mask=mask, position_ids=pos, use_cache=True)
        return Prefix(out.logits if all_logits else out.logits[:, -1], output_cache(out), mask,
                      {"media": media, "locations": locations})

    @torch.no_grad()
    def extend(self, prefix: Prefix, rows: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               consume: bool = False) -> torch.Tensor:
        """Continuations attend to the last image of their prompt row (OpenFlamingo's cached media)."""
        condition(self.llm, prefix.state["media"][rows], prefix.state["locations"][rows], use_cached_media=True)
        return extend_cached(self.llm, prefix, rows, input_ids, attention_mask, consume)

    @torch.no_grad()
    def generate_tokens(self, batch: Batch, **generate_kwargs) -> torch.Tensor:
        """transformers ``generate`` over the LLM; after the prompt step every new token attends to the
        prompt's last image. New ids only."""
        media, locations = self._media(batch.input_ids, self.vision_x(batch))
        n = int(generate_kwargs.get("num_beams", 1))
        self._generation_media = (media.repeat_interleave(n, 0), locations.repeat_interleave(n, 0))
        try:
            out = self.llm.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **generate_kwargs)
        finally:
            self._generation_media = None
        return out[:, batch.input_ids.shape[1]:]

    def _condition_generation_step(self, module, args, kwargs):
        if self._generation_media is None:
            return None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = 0 if cache is None else int(cache.get_seq_length())
        media, locations = self._generation_media
        condition(self.llm, media, locations, use_cached_media=past > 0)
        return None

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing in the LLM (transformers, non-reentrant)."""
        enable_activation_checkpointing(self.llm)


def _post_norm(tower) -> Optional[nn.Module]:
    """The tower's final token norm: open_clip's ``visual.ln_post``, HF CLIP's ``post_layernorm``."""
    visual = getattr(tower, "visual", None)
    if visual is not None and getattr(visual, "ln_post", None) is not None:
        return visual.ln_post
    vm = getattr(getattr(tower, "vision_model", None), "vision_model", None)
    if vm is not None and getattr(vm, "post_layernorm", None) is not None:
        return vm.post_layernorm
    return None


def build_flamingo(cfg, dtype: torch.dtype = torch.float32) -> Tuple[FlamingoLM, object]:
    """Build from a :class:`~mmit.families.flamingo.config.FlamingoConfig`: tower, LLM (``<image>``,
    ``<|endofchunk|>``, ``<answer>`` added to the tokenizer, embeddings resized), Perceiver and gated
    cross-attention blocks (gates at 0). Writes nothing. Raises ``ValueError`` when ``vision_post_norm``
    is set for a tower without a final norm, :class:`~mmit.registry.UnknownNameError` for unknown names."""
    from mmit.families.flamingo.processor import ANSWER, ENDOFCHUNK
    from mmit.models.encoders import VISION_TOWERS, build_vision_tower
    from mmit.models.llm import load_llm
    from mmit.models.tokenizer import ensure_special_token

    VISION_TOWERS.resolve(cfg.vision_tower.name)
    tower = build_vision_tower(cfg.vision_tower)
    post_norm = _post_norm(tower) if cfg.vision_post_norm else None
    if cfg.vision_post_norm and post_norm is None:
        raise ValueError(f"vision_post_norm: tower {cfg.vision_tower.name!r} has no final norm (set it false)")
    llm, tokenizer, media_id = load_llm(cfg.llm, dtype)
    eoc_id, answer_id = (ensure_special_token(tokenizer, t) for t in (ENDOFCHUNK, ANSWER))
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    dv = tower.hidden_size
    perceiver = PerceiverResampler(dim=dv, depth=cfg.perceiver_depth, dim_head=cfg.perceiver_dim_head,
                                   heads=cfg.perceiver_heads, num_latents=cfg.num_latents,
                                   max_num_media=cfg.max_num_media, max_num_frames=cfg.max_num_frames,
                                   ff_mult=cfg.ff_mult)
    xattn = add_cross_attention(llm, dv, cfg.cross_attn_every_n_layers, cfg.only_attend_immediate_media,
                                cfg.decoder_layers_attr, dim_head=cfg.xattn_dim_head, heads=cfg.xattn_heads,
                                ff_mult=cfg.ff_mult)
    model = FlamingoLM(tower, post_norm, perceiver, xattn, llm, media_id, eoc_id, answer_id)
    model.decoder_layers_attr = decoder_layers_attr(llm, cfg.decoder_layers_attr)
    return model.to(dtype), tokenizer

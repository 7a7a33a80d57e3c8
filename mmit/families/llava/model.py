"""The LLaVA model: vision tower -> projector -> splice into an HF decoder.

LLaVA (arXiv 2304.08485) and LLaVA-1.5 (arXiv 2310.03744) style *splice* fusion: the tokenizer's
``<image>`` token is repeated ``num_image_tokens`` times per image in ``input_ids`` (the collator
does this, before truncation, so no image is ever cut), and the projected vision features replace
the embeddings at exactly those positions. transformers' ``LlavaForConditionalGeneration`` uses the
same layout, which is what makes ``mmit export --format hf-llava`` exact.

Shapes: B batch, T text length (image tokens included), I total images in the batch, N tokens per
image, D_enc vision width, D the LLM width, V vocabulary.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmit.data.batch import Batch
from mmit.models.interface import (MultimodalModel, SpliceDecoderMixin, enable_activation_checkpointing,
                                   packed_attention_mask)


class LlavaLM(SpliceDecoderMixin, MultimodalModel):
    """Vision tower + projector + causal LM with splice fusion; the inference contract comes from
    :class:`~mmit.models.interface.SpliceDecoderMixin` over :meth:`embed_batch`.

    Args:
        vision_tower: ``mmit.models.encoders.VisionTower``: ``[I,3,H,W] -> [I,N,D_enc]``.
        projector: ``[I,N,D_enc] -> [I,N,D]``.
        llm: any HF causal LM (``AutoModelForCausalLM``).
        image_token_id: id of ``<image>`` in the LLM's tokenizer.
    """

    def __init__(self, vision_tower: nn.Module, projector: nn.Module, llm: PreTrainedModel, image_token_id: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.projector = projector
        self.llm = llm
        self.image_token_id = int(image_token_id)

    @property
    def num_image_tokens(self) -> int:
        """Tokens each image occupies in the LLM sequence (N)."""
        return int(self.vision_tower.num_tokens)

    # ------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` FloatTensor ``[I,3,H,W]`` -> projected features ``[I,N,D]`` (LLM dtype)."""
        feats = self.vision_tower(pixel_values)  # runs without autograd when the tower is frozen
        proj_dtype = next(iter(self.projector.parameters()), feats).dtype
        return self.projector(feats.to(proj_dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings ``[B,T,D]`` with image features spliced at ``<image>`` positions.

        Raises ``ValueError`` when the number of ``<image>`` positions is not ``I * N``.
        """
        is_image = input_ids == self.image_token_id
        n_positions = int(is_image.sum())
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if n_positions != n_images * self.num_image_tokens:
            raise ValueError(
                f"{n_positions} <image> token positions in input_ids but {n_images} image(s) x "
                f"{self.num_image_tokens} tokens each; expand every <image> to num_image_tokens copies")
        if n_images:
            feats = self.encode_images(pixel_values).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        return embeds

    def embed_batch(self, batch: Batch) -> torch.Tensor:
        """:meth:`embed` of a typed batch (its ``image`` media, in sample then position order)."""
        return self.embed(batch.input_ids, batch.values("image"))

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, **kwargs):
        """Causal-LM forward.

        input_ids LongTensor ``[B,T]``; attention_mask ``[B,T]`` (1 = token, 0 = padding); labels
        ``[B,T]`` with -100 where no loss is taken (shifted inside the LLM); pixel_values
        ``[I,3,H,W]`` for the images of all samples in order, or None. position_ids ``[B,T]``: packed
        rows (:func:`mmit.training.batching.pack_sequences`, positions restart at 0 per sample); the
        mask then becomes block-diagonal causal (:func:`mmit.models.interface.packed_attention_mask`),
        so samples of one row never see each other. Returns the LLM's ``CausalLMOutputWithPast``
        (``loss`` a scalar mean over supervised tokens, ``logits [B,T,V]``).
        """
        embeds = self.embed(input_ids, pixel_values)
        if position_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            attention_mask = packed_attention_mask(self.llm, position_ids, attention_mask, embeds.dtype)
            kwargs["position_ids"] = position_ids
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 pixel_values: Optional[torch.Tensor] = None, **generate_kwargs) -> torch.Tensor:
        """Decode with the LLM's ``GenerationMixin`` (KV cache; greedy unless ``do_sample``/``num_beams``).

        Prompts must be left-padded. Returns LongTensor ``[B, new_tokens]``: only the newly generated ids.
        """
        embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    # ------------------------------------------------------------------------------------------
    def gradient_checkpointing_enable(self) -> None:
        """Recompute the LLM's (and, if it supports it, the tower's) activations in the backward pass
        (transformers' activation checkpointing, non-reentrant)."""
        enable_activation_checkpointing(self.llm, getattr(self.vision_tower, "vision_model", None))


def build_llava(cfg, dtype: torch.dtype = torch.float32) -> Tuple[LlavaLM, PreTrainedTokenizerBase]:
    """Load the vision tower and LLM of a :class:`~mmit.families.llava.config.LlavaConfig` (hub id,
    local folder or ``tiny-*`` member), create the projector ``[I,N,D_enc] -> [I,N,D]`` and set the
    conversation template as the tokenizer's chat template. Writes nothing.

    Raises :class:`~mmit.registry.UnknownNameError` for an unknown tower, projector or template name
    (before any weights are loaded) and ``OSError`` for weights that cannot be found.
    """
    from mmit.models.connectors.projectors import PROJECTORS, build_projector
    from mmit.models.encoders import VISION_TOWERS, build_vision_tower
    from mmit.models.llm import load_llm
    from mmit.templates import apply_template, get_template

    # Fail on a bad name before loading any weights.
    get_template(cfg.template)
    PROJECTORS.resolve(cfg.projector.name)
    VISION_TOWERS.resolve(cfg.vision_tower.name)
    tower = build_vision_tower(cfg.vision_tower)
    llm, tokenizer, image_token_id = load_llm(cfg.llm, dtype)
    projector = build_projector(cfg.projector.name, tower.hidden_size, llm.config.get_text_config().hidden_size)
    apply_template(tokenizer, cfg.template)
    model = LlavaLM(tower, projector, llm, image_token_id)
    return model.to(dtype), tokenizer

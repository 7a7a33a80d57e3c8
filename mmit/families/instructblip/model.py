"""The InstructBLIP model (arXiv 2305.06500): vision tower -> instruction-aware Q-Former -> frozen LLM.

Source: salesforce/LAVIS ``lavis/models/blip2_models/blip2_vicuna_instruct.py`` (decoder-only LLMs)
and ``blip2_t5_instruct.py`` (Flan-T5). transformers' ``InstructBlipForConditionalGeneration`` uses
the same layout, which makes ``mmit import/export --format hf-instructblip`` exact: the LLM's
``<image>`` token is repeated M times per image at the front of the sequence and the projected query
outputs replace those embeddings.

Layout (K = M x images, frames counted as images):

* decoder-only: ``[K image tokens][instruction (with the tokenizer's bos)][answer][eos]``, labels on
  ``answer + eos`` only.
* encoder-decoder (Flan-T5): encoder ``[K image tokens][instruction][</s>]``; the decoder learns
  ``answer </s>`` (T5 shifts the labels right itself).

Video (LAVIS ``generate`` for 5-D input): each frame goes through the tower and the Q-Former with
the sample's instruction; the F x M query outputs are concatenated in frame order.

Shapes: B batch, T tokens, I images/frames in the batch, L Q-Former text tokens, M queries, D LLM width.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
from torch import nn

from mmit.data.batch import Batch
from mmit.models.interface import MultimodalModel, Prefix, SpliceDecoderMixin, enable_activation_checkpointing

log = logging.getLogger(__name__)

#: Folder of the Q-Former tokenizer inside a checkpoint.
QFORMER_TOKENIZER_DIR = "qformer_tokenizer"


class InstructBlipLM(SpliceDecoderMixin, MultimodalModel):
    """Vision tower + :class:`~mmit.models.connectors.qformer.QFormerConnector` + HF LLM (causal or seq2seq).

    The inference contract (:mod:`mmit.models.interface`) is the splice one for decoder-only LLMs; for
    an encoder-decoder LLM :meth:`prefill` runs the encoder once and :meth:`extend` the decoder over
    the cached encoder states (no decoder KV cache: candidates are short).

    Args:
        vision_tower: ``[I,3,H,W] -> [I,N,D_enc]`` (``eva-vit-g``, a CLIP tower, ...).
        qformer: the connector ``[I,N,D_enc]`` (+ ``[I,L]`` instruction ids) -> ``[I,M,D]``.
        llm: ``AutoModelForCausalLM`` or ``AutoModelForSeq2SeqLM`` model.
        image_token_id: id of ``<image>`` in the LLM tokenizer.
        qformer_tokenizer: the Q-Former's BERT-family tokenizer (also set later by the family).
    """

    def __init__(self, vision_tower: nn.Module, qformer: nn.Module, llm: nn.Module, image_token_id: int,
                 qformer_tokenizer=None):
        super().__init__()
        self.vision_tower = vision_tower
        self.qformer = qformer
        self.llm = llm
        self.image_token_id = int(image_token_id)
        self.qformer_tokenizer = qformer_tokenizer

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.llm.config, "is_encoder_decoder", False))

    @property
    def num_query_tokens(self) -> int:
        """M, LLM tokens per image (or per video frame)."""
        return self.qformer.num_query_tokens

    @property
    def num_image_tokens(self) -> int:
        return self.num_query_tokens

    # ------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, qformer_input_ids: Optional[torch.Tensor] = None,
                      qformer_attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``pixel_values [I,3,H,W]`` (+ instruction ids ``[I,L]``) -> query outputs ``[I,M,D]``."""
        feats = self.vision_tower(pixel_values)
        return self.qformer(feats, qformer_input_ids, qformer_attention_mask)

    def embed(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
              qformer_input_ids: Optional[torch.Tensor] = None,
              qformer_attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """LLM input embeddings ``[B,T,D]`` with query outputs spliced at the ``<image>`` positions.

        Raises ``ValueError`` when the number of ``<image>`` positions is not ``I * M``.
        """
        is_image = input_ids == self.image_token_id
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if int(is_image.sum()) != n_images * self.num_query_tokens:
            raise ValueError(f"{int(is_image.sum())} <image> positions in input_ids but {n_images} image(s)/frame(s) "
                             f"x {self.num_query_tokens} query tokens")
        if n_images:
            if qformer_input_ids is None and self.qformer.text_input:
                raise ValueError("the Q-Former reads the instruction: pass qformer_input_ids [I,L]")
            feats = self.encode_images(pixel_values, qformer_input_ids, qformer_attention_mask).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        return embeds

    def visual_inputs(self, batch: Batch):
        """``(pixel_values [I,3,H,W], qformer ids [I,L], mask [I,L])`` of a typed batch: every image and
        every video frame in sample then text order, each with its sample's instruction (None, None,
        None without media)."""
        units = []  # (sample, position, frames [n,3,H,W])
        for kind in ("image", "video"):
            m = batch.media.get(kind)
            if m is None:
                continue
            for v, b, p in zip(m.values, m.sample_index.tolist(), m.position.tolist()):
                units.append((b, p, v.unsqueeze(0) if kind == "image" else v))
        if not units:
            return None, None, None
        units.sort(key=lambda u: (u[0], u[1]))
        pixels = torch.cat([u[2] for u in units])
        rows = torch.tensor([u[0] for u in units for _ in range(u[2].shape[0])], device=pixels.device)
        q_ids, q_mask = batch.extra.get("qformer_input_ids"), batch.extra.get("qformer_attention_mask")
        if q_ids is None:
            return pixels, None, None
        return pixels, q_ids[rows], q_mask[rows]

    def embed_batch(self, batch: Batch) -> torch.Tensor:
        """:meth:`embed` of a typed batch (images and video frames, each with its sample's instruction)."""
        pixels, q_ids, q_mask = self.visual_inputs(batch)
        return self.embed(batch.input_ids, pixels, q_ids, q_mask)

    @torch.no_grad()
    def prefill(self, batch: Batch, all_logits: bool = False) -> Prefix:
        """Decoder-only: the splice prefill. Encoder-decoder: encoder states of the prompt plus the
        decoder's first-step logits (``all_logits`` is not supported there)."""
        if not self.is_encoder_decoder:
            return super().prefill(batch, all_logits)
        if all_logits:
            raise ValueError("prefill(all_logits=True) needs a decoder-only LLM")
        enc = self.llm.get_encoder()(inputs_embeds=self.embed_batch(batch), attention_mask=batch.attention_mask)
        start = torch.full((batch.size, 1), self.llm.config.decoder_start_token_id, dtype=torch.long,
                           device=batch.input_ids.device)
        out = self.llm(encoder_outputs=enc, attention_mask=batch.attention_mask, decoder_input_ids=start)
        return Prefix(logits=out.logits[:, -1], cache=None, attention_mask=batch.attention_mask,
                      state={"encoder_hidden": enc.last_hidden_state})

    @torch.no_grad()
    def extend(self, prefix: Prefix, rows: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               consume: bool = False) -> torch.Tensor:
        if not self.is_encoder_decoder:
            return super().extend(prefix, rows, input_ids, attention_mask, consume)
        from transformers.modeling_outputs import BaseModelOutput

        start = torch.full((input_ids.shape[0], 1), self.llm.config.decoder_start_token_id, dtype=torch.long,
                           device=input_ids.device)
        dec = torch.cat([start, input_ids], dim=1)
        dmask = torch.cat([torch.ones_like(start), attention_mask], dim=1)
        out = self.llm(encoder_outputs=BaseModelOutput(last_hidden_state=prefix.state["encoder_hidden"][rows]),
                       attention_mask=prefix.attention_mask[rows], decoder_input_ids=dec, decoder_attention_mask=dmask)
        return out.logits[:, 1:]

    @torch.no_grad()
    def generate_tokens(self, batch: Batch, **generate_kwargs) -> torch.Tensor:
        """New ids only (for seq2seq without the decoder start token)."""
        out = super().generate_tokens(batch, **generate_kwargs)
        return out[:, 1:] if self.is_encoder_decoder else out

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                qformer_input_ids: Optional[torch.Tensor] = None,
                qformer_attention_mask: Optional[torch.Tensor] = None, **kwargs):
        """LM forward. ``input_ids``/``attention_mask`` ``[B,T]`` (the encoder input for seq2seq);
        ``labels`` ``[B,T]`` (decoder-only, -100 outside the answer) or ``[B,T_dec]`` (seq2seq, -100 on
        padding); ``pixel_values [I,3,H,W]`` all images/frames in sample order; ``qformer_input_ids``
        and mask ``[I,L]``. Returns the LLM's output (``loss`` scalar mean over supervised tokens,
        ``logits [B,T,V]`` or ``[B,T_dec,V]``)."""
        embeds = self.embed(input_ids, pixel_values, qformer_input_ids, qformer_attention_mask)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                 pixel_values: Optional[torch.Tensor] = None, qformer_input_ids: Optional[torch.Tensor] = None,
                 qformer_attention_mask: Optional[torch.Tensor] = None, **generate_kwargs) -> torch.Tensor:
        """Decode with the LLM's ``GenerationMixin`` (greedy unless told otherwise); prompts left-padded.

        Returns LongTensor ``[B, new_tokens]``: only the generated ids (for seq2seq without the
        decoder start token)."""
        embeds = self.embed(input_ids, pixel_values, qformer_input_ids, qformer_attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)
        return out[:, 1:] if self.is_encoder_decoder else out

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing in the LLM and the Q-Former (transformers, non-reentrant)."""
        enable_activation_checkpointing(self.llm, self.qformer.qformer)


# ----------------------------------------------------------------------------------------------
def load_qformer_tokenizer(name: str):
    """The Q-Former tokenizer: ``tiny-bert``, a hub id or a folder (a checkpoint's ``qformer_tokenizer/``,
    resolved by :func:`mmit.config.paths.absolutise`). Raises ``OSError`` when it cannot be found."""
    from transformers import AutoTokenizer

    from mmit.models.tiny_seq2seq import resolve_bert_path

    return AutoTokenizer.from_pretrained(resolve_bert_path(name))


def uses_lavis_vicuna_tokens(cfg) -> bool:
    """``cfg.lavis_vicuna_tokens``, or when it is None: whether the LLM is a Vicuna (its name says so)."""
    if cfg.lavis_vicuna_tokens is not None:
        return bool(cfg.lavis_vicuna_tokens)
    return "vicuna" in str(cfg.llm.name_or_path).lower()


def apply_lavis_vicuna_tokens(llm, tokenizer) -> None:
    """LAVIS ``Blip2VicunaInstruct.__init__``: ``pad_token`` ``[PAD]`` (a new token), ``bos_token`` and
    ``unk_token`` ``</s>`` (eos stays ``</s>``), so every instruction starts with ``</s>`` as in the
    released InstructBLIP-Vicuna training. Resizes the embeddings when a token was added. Idempotent."""
    old_bos = tokenizer.bos_token_id
    adds_bos = old_bos is not None and tokenizer("a")["input_ids"][:1] == [old_bos]
    tokenizer.add_special_tokens({"pad_token": "[PAD]", "bos_token": "</s>", "unk_token": "</s>"})
    if adds_bos and hasattr(tokenizer, "update_post_processor"):  # a fast tokenizer's template keeps the old id
        tokenizer.add_bos_token = True
        tokenizer.update_post_processor()
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    llm.generation_config.bos_token_id = tokenizer.bos_token_id


def build_instructblip(cfg, dtype: torch.dtype = torch.float32, init_qformer_weights: bool = False
                       ) -> Tuple[InstructBlipLM, object]:
    """Build the tower, LLM (causal or seq2seq, by its config) and Q-Former connector; returns
    ``(model, llm_tokenizer)``; ``model.qformer_tokenizer`` holds the Q-Former's tokenizer. Writes
    nothing. ``init_qformer_weights`` applies ``qformer.init_from`` (:func:`init_qformer`; the family
    does it in ``prepare_for_training`` instead, so loading a trained checkpoint never loads the init
    source only for its weights to be replaced).

    Raises :class:`~mmit.registry.UnknownNameError` for unknown tower / tiny names, ``OSError`` for
    missing weights, ``ValueError`` for a Q-Former init source that does not fit.
    """
    from mmit.models.connectors.qformer import QFormerConnector, init_qformer
    from mmit.models.encoders import VISION_TOWERS, build_vision_tower
    from mmit.models.llm import load_any_llm

    VISION_TOWERS.resolve(cfg.vision_tower.name)
    tower = build_vision_tower(cfg.vision_tower)
    llm, tokenizer, image_token_id = load_any_llm(cfg.llm, dtype)
    if uses_lavis_vicuna_tokens(cfg):
        apply_lavis_vicuna_tokens(llm, tokenizer)
    connector = QFormerConnector(cfg.qformer, tower.hidden_size, llm.config.get_text_config().hidden_size)
    if cfg.qformer.init_from and init_qformer_weights:
        init_qformer(connector, cfg.qformer.init_from)
    model = InstructBlipLM(tower, connector, llm, image_token_id, load_qformer_tokenizer(cfg.qformer.tokenizer))
    return model.to(dtype), tokenizer

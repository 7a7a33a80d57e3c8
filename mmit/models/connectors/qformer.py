"""The Q-Former connector: learned queries read the image (and the instruction) -> LLM-width tokens.

BLIP-2 (arXiv 2301.12597) / InstructBLIP (arXiv 2305.06500). Built on transformers'
``InstructBlipQFormerModel`` (the LAVIS ``BertLMHeadModel`` with cross-attention), so the maths is
transformers' own and weights load from ``InstructBlipForConditionalGeneration`` checkpoints as they
are. Source: salesforce/LAVIS ``lavis/models/blip2_models/blip2.py::init_Qformer`` and
``blip2_vicuna_instruct.py`` (``qformer_text_input=True``).

Shapes: I images (frames count as images), N encoder tokens, D_enc encoder width, H Q-Former width,
M queries, L instruction tokens, D the LLM width.

    query_tokens [1,M,H] --expand--> [I,M,H] --+-- self-attention with the instruction [I,L] (text_input)
                                               +-- cross-attention to image features [I,N,D_enc]
                                                   in layers with layer_idx % cross_attention_frequency == 0
    first M outputs [I,M,H] --language_projection (Linear H->D)--> [I,M,D]
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from mmit.config.components import QFormerConfig

log = logging.getLogger(__name__)


def hf_qformer_config(cfg: QFormerConfig, encoder_hidden_size: int, pad_token_id: int = 0):
    """The transformers ``InstructBlipQFormerConfig`` for ``cfg`` reading features of width ``encoder_hidden_size``."""
    from transformers import InstructBlipQFormerConfig

    return InstructBlipQFormerConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.hidden_dropout_prob, attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, cross_attention_frequency=cfg.cross_attention_frequency,
        encoder_hidden_size=encoder_hidden_size, pad_token_id=pad_token_id)


class QFormerConnector(nn.Module):
    """Q-Former + learned queries + linear projection: ``[I,N,D_enc]`` (+ instruction ``[I,L]``) -> ``[I,M,D]``.

    Args:
        cfg: :class:`~mmit.config.schema.QFormerConfig` (M, width, depth, cross-attention frequency,
            whether the instruction is read).
        encoder_hidden_size: D_enc, the vision tower's width.
        llm_hidden_size: D, the LLM's embedding width; None: no projection (``language_projection`` is
            ``nn.Identity``, outputs ``[I,M,H]``: BLIP-2's image Q-Former inside Video-LLaMA).

    Attributes: ``query_tokens`` (Parameter ``[1,M,H]``, init N(0, 0.02) as LAVIS), ``qformer``
    (transformers ``InstructBlipQFormerModel``), ``language_projection`` (``nn.Linear(H, D)``; the name
    transformers uses, LAVIS's ``llm_proj``). With ``text_input=False`` the word and position
    embeddings are unused (LAVIS deletes them for BLIP-2; they are kept here so weights load either way).
    """

    def __init__(self, cfg: QFormerConfig, encoder_hidden_size: int, llm_hidden_size: Optional[int]):
        super().__init__()
        from transformers import InstructBlipQFormerModel

        self.cfg = cfg
        self.text_input = bool(cfg.text_input)
        self.num_query_tokens = int(cfg.num_query_tokens)
        self.qformer = InstructBlipQFormerModel(hf_qformer_config(cfg, encoder_hidden_size))
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_query_tokens, cfg.hidden_size))
        nn.init.normal_(self.query_tokens, std=0.02)
        self.language_projection = (nn.Identity() if llm_hidden_size is None
                                    else nn.Linear(cfg.hidden_size, llm_hidden_size))

    def forward(self, image_embeds: torch.Tensor, qformer_input_ids: Optional[torch.Tensor] = None,
                qformer_attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode images.

        Args:
            image_embeds: ``FloatTensor [I,N,D_enc]`` from the vision tower.
            qformer_input_ids: ``LongTensor [I,L]``, the instruction in the Q-Former's tokenizer (one
                row per image: a sample's frames repeat its instruction); ignored unless ``text_input``.
            qformer_attention_mask: ``[I,L]`` 1 = token, 0 = padding (default all ones).

        Returns:
            ``FloatTensor [I,M,D]`` in the projection's dtype (``[I,M,H]`` without a projection).

        Raises:
            ValueError: ``text_input`` is on and no instruction ids were given, or the row counts differ.
        """
        n = image_embeds.shape[0]
        dtype = self.query_tokens.dtype
        image_embeds = image_embeds.to(dtype)
        queries = self.query_tokens.expand(n, -1, -1)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query_mask = torch.ones(queries.shape[:-1], dtype=torch.long, device=image_embeds.device)
        if self.text_input:
            if qformer_input_ids is None:
                raise ValueError("the Q-Former reads the instruction (qformer.text_input): pass qformer_input_ids")
            if qformer_input_ids.shape[0] != n:
                raise ValueError(f"qformer_input_ids has {qformer_input_ids.shape[0]} rows for {n} image(s)")
            if qformer_attention_mask is None:
                qformer_attention_mask = torch.ones_like(qformer_input_ids)
            mask = torch.cat([query_mask, qformer_attention_mask.to(query_mask)], dim=1)
            out = self.qformer(input_ids=qformer_input_ids, attention_mask=mask, query_embeds=queries,
                               encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask)
        else:
            out = self.qformer(input_ids=None, attention_mask=query_mask, query_embeds=queries,
                               encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask)
        return self.language_projection(out.last_hidden_state[:, : self.num_query_tokens])

    # -- initialisation -------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_bert(self, name_or_path: str) -> int:
        """Copy a BERT checkpoint into the Q-Former as LAVIS ``Blip2Base.init_Qformer`` does: embeddings,
        self-attention and FFN weights by layer; each query FFN (``*_query``) starts as a copy of the
        text FFN; cross-attention layers stay random. Layers beyond BERT's depth stay random.

        Returns the number of tensors copied. Raises ``ValueError`` when widths differ.
        """
        from transformers import BertModel

        bert = BertModel.from_pretrained(name_or_path, add_pooling_layer=False)
        if bert.config.hidden_size != self.cfg.hidden_size:
            raise ValueError(f"{name_or_path}: BERT width {bert.config.hidden_size} != qformer.hidden_size "
                             f"{self.cfg.hidden_size}")
        src = bert.state_dict()
        dst = self.qformer.state_dict()
        copied = 0
        for key in dst:
            k = key.replace("embeddings.layernorm", "embeddings.LayerNorm").replace(".attention.attention.", ".attention.self.")
            k = k.replace("intermediate_query", "intermediate").replace("output_query", "output")
            if "crossattention" in k or k not in src:
                continue
            v = src[k]
            if key == "embeddings.word_embeddings.weight" and v.shape != dst[key].shape:
                n = min(v.shape[0], dst[key].shape[0])  # LAVIS adds [DEC]: one more row, random
                dst[key][:n].copy_(v[:n])
            elif v.shape == dst[key].shape:
                dst[key].copy_(v)
            else:
                continue
            copied += 1
        log.info("initialised the Q-Former from BERT %s: %d tensors (cross-attention random)", name_or_path, copied)
        return copied

    @torch.no_grad()
    def init_from_blip2(self, hf_model) -> int:
        """Copy a ``Blip2ForConditionalGeneration``'s Q-Former into this one, as InstructBLIP starts from
        BLIP-2: its ``layernorm`` is the embedding LayerNorm here; BLIP-2 has no word/position embeddings
        and no text FFN (LAVIS deletes them), so those keep their current values (LAVIS: from BERT,
        hence ``init_from: bert-base-uncased,<blip2>``). Queries and, when shapes fit, the projection
        are copied too. Returns the number of Q-Former tensors copied; raises ``ValueError`` on a
        shape mismatch."""
        src = {("embeddings.layernorm" + k[len("layernorm"):] if k.startswith("layernorm") else k): v
               for k, v in hf_model.qformer.state_dict().items()}
        dst = self.qformer.state_dict()
        bad = [k for k, v in src.items() if k not in dst or dst[k].shape != v.shape]
        if bad:
            raise ValueError(f"the BLIP-2 Q-Former does not fit qformer settings: {bad[:4]}")
        for k, v in src.items():
            dst[k].copy_(v)
        self.query_tokens.copy_(hf_model.query_tokens)
        self._copy_projection(hf_model)
        return len(src)

    @torch.no_grad()
    def init_from_instructblip(self, hf_model) -> None:
        """Copy ``qformer``, ``query_tokens`` and (when shapes match) ``language_projection`` from an
        ``InstructBlipForConditionalGeneration``. Raises ``ValueError`` on a Q-Former shape mismatch."""
        try:
            self.qformer.load_state_dict(hf_model.qformer.state_dict())
        except RuntimeError as e:
            raise ValueError(f"the InstructBLIP Q-Former does not fit qformer settings: {e}") from None
        self.query_tokens.copy_(hf_model.query_tokens)
        self._copy_projection(hf_model)

    def _copy_projection(self, hf_model) -> None:
        """Copy ``hf_model.language_projection`` when this connector has one of the same shape."""
        own = getattr(self.language_projection, "weight", None)
        if own is None:
            return
        if hf_model.language_projection.weight.shape == own.shape:
            self.language_projection.load_state_dict(hf_model.language_projection.state_dict())
        else:
            log.info("language_projection shape differs (another LLM width): it stays random")


def init_qformer(connector, init_from: str) -> None:
    """Initialise a :class:`QFormerConnector` from each comma-separated source in order: a BERT,
    ``instructblip`` or ``blip-2`` checkpoint (hub id or folder; the kind is read from its config) or
    ``tiny-bert``. Raises ``OSError`` for a source that cannot be found, ``ValueError`` for one that
    does not fit."""
    from transformers import AutoConfig

    from mmit.models.tiny_seq2seq import resolve_bert_path

    for source in [s.strip() for s in init_from.split(",") if s.strip()]:
        path = resolve_bert_path(source)
        model_type = AutoConfig.from_pretrained(path).model_type
        if model_type == "instructblip":
            from transformers import InstructBlipForConditionalGeneration

            connector.init_from_instructblip(InstructBlipForConditionalGeneration.from_pretrained(path))
        elif model_type == "blip-2":
            from transformers import Blip2ForConditionalGeneration

            connector.init_from_blip2(Blip2ForConditionalGeneration.from_pretrained(path))
        else:
            connector.init_from_bert(path)
        log.info("Q-Former initialised from %s (%s)", source, model_type)

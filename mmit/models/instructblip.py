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
import os
from typing import Optional, Tuple

import torch
from torch import nn

from mmit.config.schema import ModelConfig

log = logging.getLogger(__name__)

#: Folder of the Q-Former tokenizer inside a checkpoint.
QFORMER_TOKENIZER_DIR = "qformer_tokenizer"


class InstructBlipLM(nn.Module):
    """Vision tower + :class:`~mmit.models.connectors.qformer.QFormerConnector` + HF LLM (causal or seq2seq).

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
                qformer_input_ids, qformer_attention_mask = self.instruction_from_prompt(input_ids)
            feats = self.encode_images(pixel_values, qformer_input_ids, qformer_attention_mask).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        return embeds

    def instruction_from_prompt(self, input_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Q-Former ids ``[I,L]`` and mask for callers that pass only LLM ids (the ``rank``/``generate``
        scorers of :mod:`mmit.evaluation.scorers`): each row's text (image and special tokens
        removed, decoded with the LLM tokenizer) re-tokenized with the Q-Former tokenizer, one row per
        image of that sample. Raises ``ValueError`` when the tokenizers are not set."""
        tok, qtok = getattr(self, "llm_tokenizer", None), self.qformer_tokenizer
        if tok is None or qtok is None:
            raise ValueError("pass qformer_input_ids: the model has no LLM / Q-Former tokenizer to derive them")
        texts = []
        for row in input_ids.tolist():
            n_img = sum(1 for t in row if t == self.image_token_id) // self.num_query_tokens
            text = tok.decode([t for t in row if t != self.image_token_id], skip_special_tokens=True).strip()
            texts += [text] * n_img
        enc = qtok(texts, padding=True, truncation=True, max_length=self.qformer.cfg.max_text_length,
                   return_tensors="pt")
        return enc["input_ids"].to(input_ids.device), enc["attention_mask"].to(input_ids.device)

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

    def answer(self, tokenizer, prompt: str, image=None, max_new_tokens: int = 64, **generate_kwargs):
        """``mmit generate`` for this family: the prompt is the instruction (InstructBLIP uses no chat
        template), ``image`` a PIL image or a list of PIL frames (a video), or None.

        Returns :class:`mmit.inference.Answer` (decoded text, newly generated ids incl. eos)."""
        from mmit.families.instructblip import InstructBlipPreprocessor, collate_instructblip
        from mmit.inference import Answer

        pre = InstructBlipPreprocessor.for_model(self, tokenizer)
        frames = [] if image is None else (list(image) if isinstance(image, (list, tuple)) else [image])
        item = pre.encode("prompt", prompt, None, frames)
        batch = collate_instructblip([item], tokenizer.pad_token_id, pre.qformer_pad_id)
        device = next(self.parameters()).device
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "eos_token_id": tokenizer.eos_token_id,
                  "pad_token_id": tokenizer.pad_token_id, **generate_kwargs}
        out = self.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                            batch.get("qformer_input_ids"), batch.get("qformer_attention_mask"), **kwargs)
        new = out[0].tolist()
        if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
            while new and new[-1] == tokenizer.pad_token_id:
                new.pop()
        return Answer(tokenizer.decode(new, skip_special_tokens=True).strip(), new)

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing in the LLM and the Q-Former (transformers, non-reentrant)."""
        kw = {"use_reentrant": False}
        for m in (self.llm, self.qformer.qformer):
            if not getattr(m, "supports_gradient_checkpointing", False):
                continue
            if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.x
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


# ----------------------------------------------------------------------------------------------
def _is_seq2seq(name_or_path: str) -> bool:
    from mmit.models.tiny_seq2seq import TINY_SEQ2SEQ

    if name_or_path in TINY_SEQ2SEQ:
        return True
    if name_or_path.startswith("tiny-"):
        return False
    from transformers import AutoConfig

    return bool(getattr(AutoConfig.from_pretrained(name_or_path), "is_encoder_decoder", False))


def load_seq2seq_llm(cfg, dtype: torch.dtype = torch.float32):
    """``AutoModelForSeq2SeqLM`` + tokenizer (``<image>`` added, embeddings resized). Returns
    ``(model, tokenizer, image_token_id)``; raises ``OSError`` for a missing checkpoint."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from mmit.models.tiny_seq2seq import resolve_seq2seq_path
    from mmit.models.tokenizer import ensure_image_token

    path = resolve_seq2seq_path(cfg.name_or_path)
    tok_path = resolve_seq2seq_path(cfg.tokenizer) if cfg.tokenizer else path
    model = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(tok_path, trust_remote_code=cfg.trust_remote_code)
    image_token_id = ensure_image_token(tokenizer)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer, image_token_id


def load_qformer_tokenizer(name: str):
    """The Q-Former tokenizer: ``tiny-bert``, a hub id or a folder. A relative ``qformer_tokenizer``
    path that does not exist here returns None: it lives in the checkpoint folder and the family loads
    it from there (:meth:`InstructBlipFamily.load_extra`)."""
    from transformers import AutoTokenizer

    from mmit.models.tiny_seq2seq import resolve_bert_path

    if not os.path.isabs(name) and os.path.basename(os.path.normpath(name)) == QFORMER_TOKENIZER_DIR \
            and not os.path.isdir(name):
        return None
    return AutoTokenizer.from_pretrained(resolve_bert_path(name))


def init_qformer(connector, init_from: str) -> None:
    """Initialise from each comma-separated source in order: a BERT, ``instructblip`` or ``blip-2``
    checkpoint (hub id or folder; the kind is read from its config) or ``tiny-bert``."""
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


def build_instructblip(cfg: ModelConfig, dtype: torch.dtype = torch.float32, init_qformer_weights: bool = True
                       ) -> Tuple[InstructBlipLM, object]:
    """Build the tower, LLM (causal or seq2seq, by its config) and Q-Former connector; returns
    ``(model, llm_tokenizer)``; ``model.qformer_tokenizer`` holds the Q-Former's tokenizer.
    ``init_qformer_weights`` applies ``qformer.init_from`` (:func:`init_qformer`); loading a trained
    checkpoint skips it, since the checkpoint's weights replace the Q-Former's anyway.

    Raises :class:`~mmit.registry.UnknownNameError` for unknown tower / tiny names, ``OSError`` for
    missing weights, ``ValueError`` for a Q-Former init source that does not fit.
    """
    from mmit.models.connectors.qformer import QFormerConnector
    from mmit.models.encoders import VISION_TOWERS, build_vision_tower
    from mmit.models.llm import load_llm

    VISION_TOWERS.resolve(cfg.vision_tower.name)
    tower = build_vision_tower(cfg.vision_tower)
    if _is_seq2seq(cfg.llm.name_or_path):
        llm, tokenizer, image_token_id = load_seq2seq_llm(cfg.llm, dtype)
    else:
        llm, tokenizer, image_token_id = load_llm(cfg.llm, dtype)
    connector = QFormerConnector(cfg.qformer, tower.hidden_size, llm.config.get_text_config().hidden_size)
    if cfg.qformer.init_from and init_qformer_weights:
        init_qformer(connector, cfg.qformer.init_from)
    model = InstructBlipLM(tower, connector, llm, image_token_id, load_qformer_tokenizer(cfg.qformer.tokenizer))
    model.llm_tokenizer = tokenizer
    return model.to(dtype), tokenizer

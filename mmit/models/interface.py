"""The inference contract every family's model fulfils, whatever its fusion.

``mmit generate``, both eval scorers (``generate`` and ``rank``, :mod:`mmit.evaluation.scorers`) and
serving talk to a model only through three methods on a typed :class:`~mmit.data.batch.Batch` of
left-padded prompts:

* :meth:`MultimodalModel.prefill`: run the prompt with its media once; returns a :class:`Prefix`
  (the next-token logits, the LLM's KV cache and whatever the model needs to continue, e.g. the
  Perceiver latents a cross-attention decoder reads);
* :meth:`MultimodalModel.extend`: score continuation tokens over the cached prefix, for any rows of
  it (several candidates per prompt: vocabulary ranking, InstructBLIP arXiv 2305.06500 §3.4);
* :meth:`MultimodalModel.generate_tokens`: decode new tokens (greedy, sampling or beam search).

:class:`SpliceDecoderMixin` implements all three for models whose media become input embeddings of a
decoder-only HF LLM (LLaVA's splice, InstructBLIP's query prefix): such a model only provides
``embed_batch(batch) -> [B,T,D]`` and an ``llm`` attribute. A cross-attention model (Flamingo, arXiv
2204.14198) implements them itself: it keeps its media features in :attr:`Prefix.state` and selects
them per row in :meth:`~MultimodalModel.extend`.

Shapes: B prompts, P prompt length (padding included), R continuation rows, L continuation length,
V vocabulary.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import nn

from mmit.data.batch import Batch


@dataclass
class Prefix:
    """A prefilled prompt batch.

    logits: FloatTensor ``[B,V]``: the next-token logits after each prompt (``[B,P,V]``: every
        position, with ``prefill(all_logits=True)``).
    cache: the LLM's KV cache (a transformers ``Cache``), or None for models that recompute.
    attention_mask: LongTensor ``[B,P]`` of the prompt (left-padded).
    state: anything else a model needs to continue (e.g. ``"media"``: features per prompt row).
    """

    logits: torch.Tensor
    cache: Any
    attention_mask: torch.Tensor
    state: Dict[str, Any] = field(default_factory=dict)

    @property
    def lengths(self) -> torch.Tensor:
        """LongTensor ``[B]``: real (non-padding) tokens per prompt = the next position id."""
        return self.attention_mask.sum(-1)


class MultimodalModel(nn.Module):
    """Base of every family's ``nn.Module``: the inference contract (module docstring)."""

    def prefill(self, batch: Batch, all_logits: bool = False) -> Prefix:
        """Run a left-padded prompt batch (media included) once. Returns :class:`Prefix`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement prefill()")

    def extend(self, prefix: Prefix, rows: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               consume: bool = False) -> torch.Tensor:
        """Logits ``[R,L,V]`` of ``input_ids [R,L]`` appended to prompt rows ``rows [R]`` of ``prefix``
        (``attention_mask [R,L]``, 1 = token): position j predicts token j+1. ``consume`` lets the
        call reuse (and spoil) ``prefix``'s cache instead of copying it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement extend()")

    def generate_tokens(self, batch: Batch, **generate_kwargs) -> torch.Tensor:
        """LongTensor ``[B, new]``: the generated ids only (transformers ``generate`` keywords)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generate_tokens()")


def enable_activation_checkpointing(*modules) -> None:
    """Non-reentrant activation checkpointing (transformers) in each module that supports it; None
    entries and modules without support are skipped."""
    kw = {"use_reentrant": False}
    for m in modules:
        if m is None or not getattr(m, "supports_gradient_checkpointing", False):
            continue
        if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.x
            m.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)


def forward_params(llm) -> set:
    """Names of the arguments of ``type(llm).forward``."""
    return set(inspect.signature(type(llm).forward).parameters)


def cache_kw(llm) -> str:
    """transformers >= 5.2x names the KV-cache argument ``cache``; older releases ``past_key_values``."""
    return "cache" if "cache" in forward_params(llm) else "past_key_values"


def output_cache(out) -> Any:
    """The KV cache of a transformers model output, under either name."""
    c = getattr(out, "cache", None)
    return c if c is not None else getattr(out, "past_key_values", None)


@torch.no_grad()
def extend_cached(llm, prefix: Prefix, rows: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  consume: bool = False) -> torch.Tensor:
    """Logits ``[R,L,V]`` of a decoder-only HF ``llm`` over ``input_ids [R,L]`` after prompt rows ``rows``
    of ``prefix`` (its KV cache gathered to one row per continuation; copied unless ``consume``).
    Positions continue each prompt's real length (left padding is masked)."""
    cache = prefix.cache if consume else copy.deepcopy(prefix.cache)
    cache.batch_select_indices(rows)
    am = torch.cat([prefix.attention_mask[rows], attention_mask], dim=1)
    pos = prefix.lengths[rows].unsqueeze(1) + torch.arange(input_ids.shape[1], device=input_ids.device)
    return llm(input_ids=input_ids, attention_mask=am, position_ids=pos, use_cache=True,
               **{cache_kw(llm): cache}).logits


class SpliceDecoderMixin:
    """:class:`MultimodalModel` methods for media spliced into a decoder-only HF LLM's embeddings.

    The class provides ``self.llm`` (an ``AutoModelForCausalLM``) and ``embed_batch(batch)``: the input
    embeddings ``[B,T,D]`` with the media in place.
    """

    llm: nn.Module

    def embed_batch(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - provided by the model
        raise NotImplementedError

    @torch.no_grad()
    def prefill(self, batch: Batch, all_logits: bool = False) -> Prefix:
        mask = batch.attention_mask
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if (not all_logits and "logits_to_keep" in forward_params(self.llm)) else {}
        out = self.llm(inputs_embeds=self.embed_batch(batch), attention_mask=mask, position_ids=pos,
                       use_cache=True, **extra)
        logits = out.logits if all_logits else out.logits[:, -1]
        return Prefix(logits=logits, cache=output_cache(out), attention_mask=mask)

    def extend(self, prefix: Prefix, rows: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               consume: bool = False) -> torch.Tensor:
        return extend_cached(self.llm, prefix, rows, input_ids, attention_mask, consume)

    @torch.no_grad()
    def generate_tokens(self, batch: Batch, **generate_kwargs) -> torch.Tensor:
        return self.llm.generate(inputs_embeds=self.embed_batch(batch), attention_mask=batch.attention_mask,
                                 **generate_kwargs)


def packed_attention_mask(llm, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                          dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The attention mask for rows that pack several samples (:mod:`mmit.training.batching`).

    position_ids LongTensor ``[B,T]`` (0 where each sample starts; padding counts 0, 1, ... again);
    attention_mask ``[B,T]`` (1 = token, 0 = padding). Token ``i`` may attend to ``j`` iff ``j <= i``,
    both lie in the same sample and ``j`` is no padding (every token also sees itself, so no row of the
    mask is empty). Returned in the form ``llm.config._attn_implementation`` reads (transformers >= 5
    passes a 4-D mask through unchanged): ``sdpa`` / ``flex`` and others: bool ``[B,1,T,T]`` (True =
    attend); ``eager``: additive ``dtype`` ``[B,1,T,T]`` (0 / ``finfo(dtype).min``); ``flash_attention_*``:
    None (transformers then finds the samples from ``position_ids`` itself: varlen kernels).
    """
    impl = str(getattr(getattr(llm, "config", None), "_attn_implementation", None) or "eager")
    if impl.startswith("flash"):
        return None
    T = position_ids.shape[-1]
    seg = (position_ids == 0).cumsum(-1)
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg.unsqueeze(-1) == seg.unsqueeze(-2)) & causal & attention_mask.bool().unsqueeze(-2)
    allowed |= torch.eye(T, dtype=torch.bool, device=position_ids.device)
    allowed = allowed.unsqueeze(1)
    if impl != "eager":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p: Optional[torch.Tensor] = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

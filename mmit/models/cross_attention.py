"""Gated cross-attention fusion for any HF causal LM (Flamingo, arXiv 2204.14198; OpenFlamingo, arXiv 2308.01390).

A :class:`GatedCrossAttentionBlock` goes in front of every ``every_n``-th decoder layer: the text
hidden states attend to the (resampled) media features, and the result is added through a tanh gate
initialised to 0, so a freshly wrapped LLM computes exactly what it did before. Same maths and
parameter names as ``open_flamingo.src.helpers.GatedCrossAttentionBlock``.

    x [B,T,D] --LayerNorm--> q;  media [B,T_img,n,Dv] -> [B,T_img*n,Dv] --to_kv--> k, v
    masked attention (which media each text token sees: see MaskedCrossAttention) --to_out--> a
    x = x + tanh(attn_gate) * a;   x = x + tanh(ff_gate) * ff(x)

Wiring into an LLM (the design of OpenFlamingo's ``FlamingoLayer`` / ``FlamingoLMMixin``, without a
mixin class):

    blocks = add_cross_attention(llm, dim_visual, every_n=4)   # wraps llm's decoder layers in place
    condition(llm, media, media_locations)                      # before each llm(...) call
    llm(input_ids=..., attention_mask=...)
    clear(llm)

Every decoder layer becomes a :class:`CrossAttentionLayer` (``model.layers.{i}.decoder_layer.*`` in the
LLM's state dict, as OpenFlamingo); the blocks are NOT submodules of the LLM: the owning model
registers the returned ``nn.ModuleList`` once, under a name of its choosing.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from mmit.models.connectors.perceiver import feed_forward

#: Where the decoder layers (an ``nn.ModuleList``) live, by HF ``config.model_type`` or a lowercase
#: fragment of the model class name (OpenFlamingo's ``__KNOWN_DECODER_LAYERS_ATTR_NAMES`` plus a few).
DECODER_LAYERS_ATTR: Dict[str, str] = {
    "opt": "model.decoder.layers",
    "gptj": "transformer.h",
    "gpt-j": "transformer.h",
    "pythia": "gpt_neox.layers",
    "gpt_neox": "gpt_neox.layers",
    "gptneox": "gpt_neox.layers",
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "mpt": "transformer.blocks",
    "mosaicgpt": "transformer.blocks",
    "gpt2": "transformer.h",
}


class MaskedCrossAttention(nn.Module):
    """Text tokens attend to media features, each to the media its position allows (OpenFlamingo's maths).

    Args:
        dim: D, the text (LLM) width.
        dim_visual: Dv, the media feature width.
        dim_head, heads: attention head width and count (inner width ``heads * dim_head``).
        only_attend_immediate_media: True: a text token attends only to the latest medium before (or at)
            it; False: to every medium before (or at) it.

    Parameters (names as OpenFlamingo's): ``norm`` (LayerNorm D), ``to_q`` (D -> inner), ``to_kv``
    (Dv -> 2*inner: k rows then v rows), ``to_out`` (inner -> D); no biases.
    """

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8,
                 only_attend_immediate_media: bool = True):
        super().__init__()
        self.heads, self.dim_head, self.scale = int(heads), int(dim_head), dim_head ** -0.5
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.only_attend_immediate_media = bool(only_attend_immediate_media)

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_locations: torch.Tensor,
                use_cached_media: bool = False) -> torch.Tensor:
        """Attend.

        Args:
            x: ``FloatTensor [B,T,D]`` text hidden states.
            media: ``FloatTensor [B,T_img,n,Dv]``, n tokens per medium (e.g. Perceiver latents), in the
                parameters' dtype.
            media_locations: ``BoolTensor [B,T]``, True at each medium's token in the text. The "text
                time" of a token is the number of media tokens up to and including it (a cumsum); medium
                j (1-based) is visible where ``text time == j`` (only_attend_immediate_media) or ``>= j``.
            use_cached_media: every token of ``x`` comes after all of ``media_locations`` (decoding with
                a KV cache): its text time is the number of media in ``media_locations``, and ``T`` may
                differ from ``media_locations.shape[1]``.

        Returns:
            ``FloatTensor [B,T,D]``.

        Quirks kept for parity with OpenFlamingo: a token whose mask is empty gets a uniform softmax over
        all media tokens (every score filled with the same ``-finfo.max``); with
        only_attend_immediate_media the rows of tokens before the first medium (text time 0) are then
        zeroed, but with ``only_attend_immediate_media=False`` they are not, so such tokens read the mean
        of all media values (including media that come later in the text).

        Raises:
            ValueError: ``media_locations`` is None or not ``[B,T]`` (``[B,*]`` with use_cached_media).
        """
        B, T, _ = x.shape
        _, T_img, n = media.shape[:3]
        if media_locations is None or media_locations.dim() != 2 or media_locations.shape[0] != B or (
                not use_cached_media and media_locations.shape[1] != T):
            want = f"[{B},*]" if use_cached_media else f"[{B},{T}]"
            got = None if media_locations is None else tuple(media_locations.shape)
            raise ValueError(f"media_locations must be a BoolTensor {want} for text of shape {tuple(x.shape)}, "
                             f"got {got}")
        h, d = self.heads, self.dim_head
        q = self.to_q(self.norm(x)).view(B, T, h, d).transpose(1, 2)  # [B,h,T,d]
        k, v = self.to_kv(media.reshape(B, T_img * n, media.shape[-1])).chunk(2, dim=-1)
        k = k.reshape(B, T_img * n, h, d).transpose(1, 2)  # [B,h,T_img*n,d]
        v = v.reshape(B, T_img * n, h, d).transpose(1, 2)
        sim = (q * self.scale) @ k.transpose(-1, -2)  # [B,h,T,T_img*n]

        if use_cached_media:
            text_time = media_locations.sum(dim=1, dtype=torch.long)[:, None].expand(B, T)
        else:
            text_time = media_locations.long().cumsum(dim=-1)  # [B,T]
        media_time = torch.arange(1, T_img + 1, device=x.device).repeat_interleave(n)  # [T_img*n]
        tt = text_time[:, None, :, None]
        visible = tt == media_time if self.only_attend_immediate_media else tt >= media_time
        sim = sim.masked_fill(~visible, -torch.finfo(sim.dtype).max)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        if self.only_attend_immediate_media:
            attn = attn.masked_fill((text_time == 0)[:, None, :, None], 0.0)
        out = (attn @ v).transpose(1, 2).reshape(B, T, h * d)
        return self.to_out(out)


class GatedCrossAttentionBlock(nn.Module):
    """Tanh-gated masked cross-attention + tanh-gated feed-forward (Flamingo's GATED XATTN-DENSE, arXiv 2204.14198).

    Args:
        dim: D, the LLM width.
        dim_visual: Dv, the media feature width.
        dim_head, heads: attention head width and count.
        ff_mult: feed-forward expansion (:func:`mmit.models.connectors.perceiver.feed_forward`, GELU).
        only_attend_immediate_media: see :class:`MaskedCrossAttention`.

    Parameters (OpenFlamingo's names, fp32): ``attn.{norm,to_q,to_kv,to_out}``, ``attn_gate [1]``,
    ``ff.{0,1,3}``, ``ff_gate [1]``; both gates start at 0, so the block is the identity at init.
    """

    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4,
                 only_attend_immediate_media: bool = True):
        super().__init__()
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads, only_attend_immediate_media)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_locations: torch.Tensor,
                use_cached_media: bool = False) -> torch.Tensor:
        """``x [B,T,D]``, ``media [B,T_img,n,Dv]``, ``media_locations BoolTensor [B,T]`` -> ``[B,T,D]``.

        Arguments and errors as :meth:`MaskedCrossAttention.forward`.
        """
        x = x + self.attn(x, media, media_locations, use_cached_media) * self.attn_gate.tanh()
        return x + self.ff(x) * self.ff_gate.tanh()


def openflamingo_state_dict(module: GatedCrossAttentionBlock) -> Dict[str, torch.Tensor]:
    """``module``'s weights under open_flamingo's ``GatedCrossAttentionBlock`` names (the same names:
    ``attn.norm.*``, ``attn.to_q.weight``, ``attn.to_kv.weight``, ``attn.to_out.weight``, ``attn_gate``,
    ``ff.0.*``, ``ff.1.weight``, ``ff.3.weight``, ``ff_gate``). Detached tensors sharing storage."""
    return dict(module.state_dict())


def load_openflamingo_state_dict(module: GatedCrossAttentionBlock, sd: Dict[str, torch.Tensor]) -> None:
    """Load an open_flamingo ``GatedCrossAttentionBlock`` state dict (keys relative to the block, e.g.
    without ``lang_encoder.gated_cross_attn_layers.{i}.``) into ``module``, copying values.

    Raises:
        KeyError: missing or unexpected keys (both listed).
        RuntimeError: a shape differs (from ``nn.Module.load_state_dict``).
    """
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise KeyError(f"OpenFlamingo GatedCrossAttentionBlock state dict does not match this module: "
                       f"missing keys {missing}, unexpected keys {unexpected}")
    module.load_state_dict(dict(sd), strict=True)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers_attr(llm: nn.Module, override: Optional[str] = None) -> str:
    """The dotted attribute path of ``llm``'s decoder-layer ``nn.ModuleList`` (e.g. ``"model.layers"``).

    Looked up in :data:`DECODER_LAYERS_ATTR` by ``llm.config.model_type`` first, then by a key contained
    in the lowercase class name (longest key first), as OpenFlamingo does.

    Args:
        llm: an HF causal LM (``LlamaForCausalLM``, ``OPTForCausalLM``, ...).
        override: use this path instead of the table (for models the table does not know).

    Raises:
        ValueError: the model is not in the table (the message lists it and says to pass ``override``),
            or the path does not lead to an ``nn.ModuleList`` on ``llm``.
    """
    name = type(llm).__name__
    path = override
    if path is None:
        model_type = str(getattr(getattr(llm, "config", None), "model_type", "") or "").lower()
        path = DECODER_LAYERS_ATTR.get(model_type)
        if path is None:
            for key in sorted(DECODER_LAYERS_ATTR, key=len, reverse=True):
                if key in name.lower():
                    path = DECODER_LAYERS_ATTR[key]
                    break
        if path is None:
            table = ", ".join(f"{k}: {v}" for k, v in DECODER_LAYERS_ATTR.items())
            raise ValueError(f"cannot tell where the decoder layers of {name} (model_type {model_type!r}) are; "
                             f"known models: {table}. Pass the attribute path explicitly "
                             f"(decoder_layers_attr=...).")
    try:
        layers = _get_path(llm, path)
    except AttributeError:
        layers = None
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{name} has no nn.ModuleList of decoder layers at {path!r}"
                         + (" (given as override)" if override is not None else ""))
    return path


_layers_attr = decoder_layers_attr  # add_cross_attention's argument of that name shadows the function


class CrossAttentionLayer(nn.Module):
    """A decoder layer with an optional gated cross-attention block in front (OpenFlamingo's ``FlamingoLayer``).

    Args:
        decoder_layer: the LLM's layer, registered as ``decoder_layer``.
        block: the layer's :class:`GatedCrossAttentionBlock`, or None for a layer without one. Kept as a
            plain attribute (not a submodule), so it is not in the LLM's state dict: the model that owns
            the blocks registers them once.

    Conditioning state (set by :func:`condition` before each LLM call, reset by :func:`clear`):
    ``media [B,T_img,n,Dv]``, ``media_locations BoolTensor [B,T]`` and ``use_cached_media``.

    ``forward(hidden_states, *args, **kwargs)`` applies the block (if any; text ``[B,T,D]``), then calls
    the decoder layer with the same arguments and returns whatever it returns (a tensor for
    transformers 5.x Llama / GPT-NeoX / OPT, a tuple for older versions). Attributes not found here
    (``attention_type``, ``self_attn``, ...) are read from the decoder layer, so model code that inspects
    its layers keeps working.

    Raises (forward):
        RuntimeError: the layer has a block but was not conditioned.
    """

    def __init__(self, decoder_layer: nn.Module, block: Optional[GatedCrossAttentionBlock] = None):
        super().__init__()
        self.decoder_layer = decoder_layer
        object.__setattr__(self, "block", block)
        self.media: Optional[torch.Tensor] = None
        self.media_locations: Optional[torch.Tensor] = None
        self.use_cached_media = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            if "decoder_layer" in modules and name != "decoder_layer":
                return getattr(modules["decoder_layer"], name)
            raise

    def is_conditioned(self) -> bool:
        return self.media is not None and self.media_locations is not None

    def condition(self, media: Optional[torch.Tensor], media_locations: Optional[torch.Tensor],
                  use_cached_media: bool = False) -> None:
        self.media, self.media_locations, self.use_cached_media = media, media_locations, bool(use_cached_media)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.block is not None:
            if not self.is_conditioned():
                raise RuntimeError("this decoder layer has a gated cross-attention block but was not conditioned: "
                                   "call mmit.models.cross_attention.condition(llm, media, media_locations) "
                                   "before running the LLM")
            hidden_states = self.block(hidden_states, self.media, self.media_locations, self.use_cached_media)
        return self.decoder_layer(hidden_states, *args, **kwargs)


def add_cross_attention(llm: nn.Module, dim_visual: int, every_n: int, only_attend_immediate_media: bool = True,
                        decoder_layers_attr: Optional[str] = None, **block_kwargs: Any) -> nn.ModuleList:
    """Wrap each of ``llm``'s decoder layers in a :class:`CrossAttentionLayer`, in place.

    Layer ``i`` gets a new :class:`GatedCrossAttentionBlock` (width ``llm.config.hidden_size``) when
    ``(i + 1) % every_n == 0`` (OpenFlamingo's ``cross_attn_every_n_layers``); blocks are created with
    the dtype and device of the layer's parameters and carry their layer index as ``block.layer_idx``
    (OpenFlamingo's ``gated_cross_attn_layers.{layer_idx}``).

    Args:
        llm: an HF causal LM whose decoder layers :func:`decoder_layers_attr` can find.
        dim_visual: Dv, the width of the media features passed to :func:`condition`.
        every_n: >= 1.
        only_attend_immediate_media: see :class:`MaskedCrossAttention`.
        decoder_layers_attr: override of the decoder layers' attribute path.
        **block_kwargs: ``dim_head``, ``heads``, ``ff_mult`` for the blocks.

    Returns:
        ``nn.ModuleList`` of the new blocks only (no None), in layer order: register it on the owning
        model (they are not submodules of ``llm``).

    Raises:
        ValueError: ``every_n < 1``; ``llm`` was already wrapped; the decoder layers are not found.
    """
    if int(every_n) < 1:
        raise ValueError(f"every_n must be >= 1, got {every_n}")
    path = _layers_attr(llm, decoder_layers_attr)
    layers = _get_path(llm, path)
    if any(isinstance(layer, CrossAttentionLayer) for layer in layers):
        raise ValueError(f"{type(llm).__name__}.{path} already holds CrossAttentionLayer wrappers")
    dim = int(llm.config.hidden_size)
    blocks = nn.ModuleList()
    for i, layer in enumerate(layers):
        block = None
        if (i + 1) % int(every_n) == 0:
            ref = next(layer.parameters(), None)
            block = GatedCrossAttentionBlock(dim, dim_visual, only_attend_immediate_media=only_attend_immediate_media,
                                             **block_kwargs)
            if ref is not None:
                block.to(device=ref.device, dtype=ref.dtype)
            block.layer_idx = i
            blocks.append(block)
        layers[i] = CrossAttentionLayer(layer, block)
    return blocks


def condition(llm: nn.Module, media: torch.Tensor, media_locations: torch.Tensor,
              use_cached_media: bool = False) -> None:
    """Set the media every :class:`CrossAttentionLayer` in ``llm`` attends to in the next LLM calls.

    Args:
        media: ``FloatTensor [B,T_img,n,Dv]`` (e.g. :class:`~mmit.models.connectors.perceiver.PerceiverResampler`
            output), in the blocks' dtype.
        media_locations: ``BoolTensor [B,T]``: True at the media tokens of the text the LLM reads.
        use_cached_media: the next calls read only tokens after all of ``media_locations`` (decoding over
            a KV cache; pass the prompt's locations): every token attends to the last medium. HF
            ``generate()`` runs the prompt and the decoding steps with one conditioning, so the owning model
            must switch to ``use_cached_media=True`` after the prompt step (prefill itself, then decode;
            OpenFlamingo's ``FlamingoLMMixin.forward`` does it when the input holds no media token).

    Raises:
        ValueError: ``media`` or ``media_locations`` is None, or ``llm`` has no wrapped layer.
    """
    if media is None or media_locations is None:
        raise ValueError("condition() needs both media and media_locations; use clear(llm) to reset")
    layers = [m for m in llm.modules() if isinstance(m, CrossAttentionLayer)]
    if not layers:
        raise ValueError(f"{type(llm).__name__} has no CrossAttentionLayer: call add_cross_attention first")
    for layer in layers:
        layer.condition(media, media_locations, use_cached_media)


def clear(llm: nn.Module) -> None:
    """Drop the conditioning of every :class:`CrossAttentionLayer` in ``llm`` (frees the media tensors)."""
    for m in llm.modules():
        if isinstance(m, CrossAttentionLayer):
            m.condition(None, None, False)

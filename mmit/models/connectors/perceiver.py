"""The Perceiver resampler: a variable number of vision tokens -> a fixed number of latents per medium.

Flamingo (Alayrac et al., arXiv 2204.14198, section 2.1 and appendix A.1.1) / OpenFlamingo (Awadalla
et al., arXiv 2308.01390). Same maths as ``open_flamingo.src.helpers.PerceiverResampler`` (itself from
lucidrains/flamingo-pytorch), so OpenFlamingo / Otter checkpoints load through
:func:`load_openflamingo_state_dict`.

Shapes: B batch, T media per sample, F frames per medium, v tokens per frame, D width, n latents.

    x [B,T,F,v,D] + frame_embs[:F] (over frames) -> [B,T,F*v,D] + media_time_embs[:T] (over media)
    latents [n,D] -> [B,T,n,D]; depth x:
        latents = attn(x, latents) + latents      (pre-norm; q from latents, k/v from concat(x, latents))
        latents = ff(latents) + latents           (LayerNorm, Linear D->mult*D, GELU, Linear mult*D->D)
    LayerNorm(latents) -> [B,T,n,D]

The attention is transformers' ``IdeficsPerceiverAttention`` (``qk_layer_norms=False``): it computes
exactly OpenFlamingo's ``PerceiverAttention`` (LayerNorm on context and latents, q from the latents,
k and v from ``concat(context, latents)``, q scaled by ``dim_head ** -0.5``, softmax after subtracting
the per-row max, no biases). It works on ``[batch, seq, D]``; OpenFlamingo's on ``[B, T, seq, D]`` with
every medium independent, so we fold ``T`` into the batch. The only layout difference is that
OpenFlamingo packs k and v into one ``to_kv`` Linear while Idefics has ``k_proj`` / ``v_proj``; the
state-dict conversion concatenates / splits them (``to_kv.weight == cat(k_proj.weight, v_proj.weight)``).
Idefics' MLP uses ReLU, so the feed-forward is our own (:func:`feed_forward`, OpenFlamingo's GELU layout).
"""

from __future__ import annotations

import re
from typing import Dict, Optional

import torch
from torch import nn


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """Flamingo's pre-norm feed-forward: ``Sequential(LayerNorm(dim), Linear(dim, mult*dim, bias=False),
    GELU(), Linear(mult*dim, dim, bias=False))`` mapping ``[..., dim] -> [..., dim]``.

    The indices (``0.*`` LayerNorm, ``1.weight``, ``3.weight``) are OpenFlamingo's ``FeedForward``'s, so
    its state dicts load unchanged. Shared by :class:`PerceiverResampler` and
    :class:`mmit.models.cross_attention.GatedCrossAttentionBlock`.
    """
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class PerceiverLayer(nn.Module):
    """One resampler layer: ``attn`` (transformers ``IdeficsPerceiverAttention``) and ``ff`` (:func:`feed_forward`).

    ``forward(x [N,S,D], latents [N,n,D]) -> [N,n,D]`` with both residuals applied.
    """

    def __init__(self, dim: int, dim_head: int, heads: int, ff_mult: int):
        super().__init__()
        from transformers.models.idefics.perceiver import IdeficsPerceiverAttention

        self.attn = IdeficsPerceiverAttention(dim, heads, dim_head, qk_layer_norms=False)
        self.ff = feed_forward(dim, ff_mult)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.attn(x, latents) + latents
        return self.ff(latents) + latents


class PerceiverResampler(nn.Module):
    """Resample each medium's ``F*v`` vision tokens to ``num_latents`` latents (Flamingo, arXiv 2204.14198).

    Args:
        dim: D, the vision feature width (input and output width).
        depth: number of (attention, feed-forward) layers.
        dim_head: width of one attention head.
        heads: number of attention heads (inner width ``heads * dim_head``).
        num_latents: n, the number of learned latent queries (the output tokens per medium).
        max_num_media: size of the learned media-time embedding (one per medium index); None: no such
            embedding (OpenFlamingo's default).
        max_num_frames: size of the learned frame embedding (one per frame index); None: no such embedding.
        ff_mult: feed-forward expansion.

    Parameters (fp32, init as OpenFlamingo: ``latents`` / ``frame_embs`` / ``media_time_embs`` ~ N(0, 1),
    Linear / LayerNorm PyTorch defaults): ``latents [n,D]``, ``frame_embs [max_num_frames,D]``,
    ``media_time_embs [max_num_media,1,D]``, ``layers`` (:class:`PerceiverLayer`), ``norm`` (LayerNorm).
    """

    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64,
                 max_num_media: Optional[int] = None, max_num_frames: Optional[int] = None, ff_mult: int = 4):
        super().__init__()
        self.dim, self.num_latents = int(dim), int(num_latents)
        self.max_num_media, self.max_num_frames = max_num_media, max_num_frames
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, dim)) if max_num_frames is not None else None
        self.media_time_embs = (nn.Parameter(torch.randn(max_num_media, 1, dim))
                                if max_num_media is not None else None)
        self.layers = nn.ModuleList(PerceiverLayer(dim, dim_head, heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resample.

        Args:
            x: ``FloatTensor [B,T,F,v,D]`` vision features (T media per sample, F frames each, v tokens
                per frame; images have F = 1), in the parameters' dtype.

        Returns:
            ``FloatTensor [B,T,num_latents,D]``.

        Raises:
            ValueError: ``x`` is not 5-D or its last dim is not D; ``F > max_num_frames`` or
                ``T > max_num_media`` (when those embeddings exist).
        """
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ValueError(f"PerceiverResampler expects x of shape [B,T,F,v,{self.dim}], got {tuple(x.shape)}")
        B, T, F, v, D = x.shape
        if self.frame_embs is not None:
            if F > self.frame_embs.shape[0]:
                raise ValueError(f"{F} frames per medium but max_num_frames={self.frame_embs.shape[0]}")
            x = x + self.frame_embs[:F][None, None, :, None, :]
        x = x.reshape(B, T, F * v, D)
        if self.media_time_embs is not None:
            if T > self.media_time_embs.shape[0]:
                raise ValueError(f"{T} media per sample but max_num_media={self.media_time_embs.shape[0]}")
            x = x + self.media_time_embs[:T]
        # Every medium is resampled independently: fold T into the batch for the [N, seq, D] attention.
        x = x.reshape(B * T, F * v, D)
        latents = self.latents.unsqueeze(0).expand(B * T, -1, -1)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm(latents).reshape(B, T, self.num_latents, D)


# ours (regex) -> OpenFlamingo (template); k_proj / v_proj are handled apart (one to_kv).
_RENAMES = [
    (r"layers\.(\d+)\.attn\.context_layer_norm\.(weight|bias)", r"layers.\1.0.norm_media.\2"),
    (r"layers\.(\d+)\.attn\.latents_layer_norm\.(weight|bias)", r"layers.\1.0.norm_latents.\2"),
    (r"layers\.(\d+)\.attn\.q_proj\.weight", r"layers.\1.0.to_q.weight"),
    (r"layers\.(\d+)\.attn\.output_proj\.weight", r"layers.\1.0.to_out.weight"),
    (r"layers\.(\d+)\.ff\.(\d\.(?:weight|bias))", r"layers.\1.1.\2"),
    (r"(latents|frame_embs|media_time_embs|norm\.weight|norm\.bias)", r"\1"),
]
_KV = re.compile(r"layers\.(\d+)\.attn\.([kv])_proj\.weight")


def _openflamingo_name(key: str) -> str:
    """The OpenFlamingo key of our parameter ``key`` (``k_proj`` / ``v_proj`` -> their shared ``to_kv``)."""
    m = _KV.fullmatch(key)
    if m:
        return f"layers.{m.group(1)}.0.to_kv.weight"
    for pattern, template in _RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise KeyError(f"no OpenFlamingo name for PerceiverResampler parameter {key!r}")


def openflamingo_state_dict(module: PerceiverResampler) -> Dict[str, torch.Tensor]:
    """``module``'s weights under open_flamingo's ``PerceiverResampler`` names (no ``perceiver.`` prefix).

    Renames ``layers.{i}.attn.*`` -> ``layers.{i}.0.*`` (``context_layer_norm`` -> ``norm_media``,
    ``latents_layer_norm`` -> ``norm_latents``, ``q_proj`` -> ``to_q``, ``output_proj`` -> ``to_out``,
    ``k_proj`` + ``v_proj`` -> ``to_kv``, concatenated on dim 0 in that order) and ``layers.{i}.ff.*`` ->
    ``layers.{i}.1.*``; ``latents``, ``frame_embs``, ``media_time_embs`` and ``norm.*`` keep their names.
    Tensors are detached; ``to_kv`` is a new tensor, the others share storage with the module.

    Raises:
        KeyError: a parameter with no OpenFlamingo counterpart (``module`` is not this class).
    """
    own = module.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for key, value in own.items():
        name = _openflamingo_name(key)
        if _KV.fullmatch(key):
            if name in out:
                continue
            prefix = key[: -len("k_proj.weight")]
            value = torch.cat([own[prefix + "k_proj.weight"], own[prefix + "v_proj.weight"]], dim=0)
        out[name] = value
    return out


def load_openflamingo_state_dict(module: PerceiverResampler, sd: Dict[str, torch.Tensor]) -> None:
    """Load an open_flamingo ``PerceiverResampler`` state dict (keys without ``perceiver.``) into ``module``.

    The inverse of :func:`openflamingo_state_dict`: ``layers.{i}.0.to_kv.weight [2*inner, D]`` is split
    in halves into ``k_proj`` / ``v_proj``. Values are copied into the module's parameters (keeping
    their dtype and device).

    Raises:
        KeyError: ``sd`` lacks keys or has extra ones, listing both (e.g. a ``perceiver.`` prefix, or a
            resampler built with another ``depth`` / ``max_num_media`` / ``max_num_frames``).
        RuntimeError: a tensor's shape differs (from ``nn.Module.load_state_dict``).
    """
    ours = list(module.state_dict())
    expected = {_openflamingo_name(k) for k in ours}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise KeyError(f"OpenFlamingo PerceiverResampler state dict does not match this module: "
                       f"missing keys {missing}, unexpected keys {unexpected}")
    converted: Dict[str, torch.Tensor] = {}
    for key in ours:
        value = sd[_openflamingo_name(key)]
        m = _KV.fullmatch(key)
        if m:
            if value.shape[0] % 2:
                raise RuntimeError(f"{_openflamingo_name(key)}: dim 0 ({value.shape[0]}) is not even")
            value = value.chunk(2, dim=0)[0 if m.group(2) == "k" else 1]
        converted[key] = value
    module.load_state_dict(converted, strict=True)

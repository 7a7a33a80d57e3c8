"""Token-wise projectors from vision features to the LLM embedding width.

Source: haotian-liu/LLaVA ``llava/model/multimodal_projector/builder.py::build_vision_projector``.
LLaVA (Liu et al., arXiv 2304.08485) uses one ``linear`` layer; LLaVA-1.5 (arXiv 2310.03744) a
two-layer MLP with GELU (``mlp2x_gelu``, here ``mlp2x-gelu``). The module layouts match LLaVA's, so
its ``mm_projector.bin`` state dicts load unchanged: ``nn.Linear`` (keys ``weight``/``bias``) for
``linear`` and an ``nn.Sequential`` of ``Linear, GELU, Linear, ...`` (keys ``0.*``, ``2.*``, ...) for
``mlp{N}x-gelu``.

Every projector maps ``FloatTensor [B, N, in_dim]`` -> ``[B, N, out_dim]`` (any leading dims).
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from torch import nn

from mmit.registry import Registry

#: ``name -> factory(in_dim, out_dim, *, match=None) -> nn.Module``.
PROJECTORS: Registry[Callable[..., nn.Module]] = Registry("projector")


@PROJECTORS.register("linear")
def linear(in_dim: int, out_dim: int, match: Optional[re.Match] = None) -> nn.Module:
    """``nn.Linear(in_dim, out_dim)`` (LLaVA v1, arXiv 2304.08485)."""
    return nn.Linear(in_dim, out_dim)


@PROJECTORS.register_pattern(r"mlp([1-9][0-9]*)x-gelu", "mlp2x-gelu")
def mlp_gelu(in_dim: int, out_dim: int, match: Optional[re.Match] = None) -> nn.Module:
    """``N`` Linear layers with GELU between them: ``Linear(in, out)``, then ``N - 1`` times
    ``GELU, Linear(out, out)`` (LLaVA-1.5's ``mlp2x_gelu`` for N = 2, arXiv 2310.03744).

    Returns an ``nn.Sequential`` whose Linear layers sit at indices 0, 2, 4, ... as in LLaVA.
    """
    depth = int(match.group(1)) if match is not None else 2
    layers = [nn.Linear(in_dim, out_dim)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


@PROJECTORS.register("identity")
def identity(in_dim: int, out_dim: int, match: Optional[re.Match] = None) -> nn.Module:
    """``nn.Identity()``; requires ``in_dim == out_dim`` (raises ``ValueError`` otherwise)."""
    if in_dim != out_dim:
        raise ValueError(
            f"projector 'identity' needs in_dim == out_dim, got in_dim={in_dim} (vision features) and "
            f"out_dim={out_dim} (LLM hidden size); use 'linear' or 'mlp2x-gelu' instead"
        )
    return nn.Identity()


def build_projector(name: str, in_dim: int, out_dim: int) -> nn.Module:
    """Build projector ``name`` mapping ``[B, N, in_dim]`` -> ``[B, N, out_dim]`` (fp32 parameters,
    PyTorch default init).

    Args:
        name: a ``PROJECTORS`` key: ``linear``, ``mlp{N}x-gelu`` (N >= 1) or ``identity``.
        in_dim: vision feature width ``D_enc`` (the tower's ``hidden_size``).
        out_dim: LLM embedding width ``D_llm``.

    Raises:
        mmit.registry.UnknownNameError: unknown name (lists close matches, e.g. ``mlp2x_gelu`` ->
            ``mlp2x-gelu``).
        ValueError: non-positive dims, or ``identity`` with ``in_dim != out_dim``.
    """
    if int(in_dim) <= 0 or int(out_dim) <= 0:
        raise ValueError(f"projector {name!r}: dims must be positive, got in_dim={in_dim}, out_dim={out_dim}")
    factory, match = PROJECTORS.resolve(name)
    return factory(int(in_dim), int(out_dim), match=match)

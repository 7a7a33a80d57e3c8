"""Connectors: encoder features ``[B, N, D_enc]`` -> LLM-width tokens ``[B, M, D_llm]``.

Projectors (``PROJECTORS``, ``build_projector``) keep the token count (``M == N``): ``linear``
(LLaVA, arXiv 2304.08485), ``mlp{N}x-gelu`` (``mlp2x-gelu`` is LLaVA-1.5, arXiv 2310.03744) and
``identity``.
"""

from mmit.models.connectors.projectors import PROJECTORS, build_projector

__all__ = ["PROJECTORS", "build_projector"]

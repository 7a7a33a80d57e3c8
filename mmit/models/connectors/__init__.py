"""Connectors: encoder features ``[B, N, D_enc]`` -> LLM-width tokens ``[B, M, D_llm]``.

Projectors (``PROJECTORS``, ``build_projector``) keep the token count (``M == N``): ``linear``
(LLaVA, arXiv 2304.08485), ``mlp{N}x-gelu`` (``mlp2x-gelu`` is LLaVA-1.5, arXiv 2310.03744) and
``identity``. Resamplers change it: the Q-Former (``qformer.py``: M learned queries, BLIP-2 / InstructBLIP)
and, beside it, any other query-based connector (a Perceiver resampler, Flamingo arXiv 2204.14198). Every
family may use every connector; none imports a family.
"""

from mmit.models.connectors.projectors import PROJECTORS, build_projector

__all__ = ["PROJECTORS", "build_projector"]

"""The Flamingo family: OpenFlamingo (arXiv 2308.01390, Flamingo arXiv 2204.14198) and Otter (arXiv 2305.03726).

Vision tower -> Perceiver resampler (``mmit.models.connectors.perceiver``) -> tanh-gated cross-attention
blocks inside the LLM's decoder layers (``mmit.models.cross_attention``); images stay one ``<image>``
token each in the text, interleaved with it. ``config.py`` the ``model:`` section, ``model.py`` the
model, ``processor.py`` Otter's instruction format with in-context examples, ``family.py`` the hooks,
``export.py`` OpenFlamingo/Otter state dicts in and out.
"""

"""The Video-LLaMA family (arXiv 2306.02858): video and audio understanding through two Q-Former branches.

Vision-language branch: vision tower + the frozen BLIP-2 image Q-Former per frame, a frame position
embedding, a 2-layer video Q-Former, a projection; audio-language branch: an audio encoder
(``mmit.models.audio``) over clips, an audio position embedding, a 2-layer audio Q-Former, a projection.
Both outputs are spliced into the LLM at their patch tokens. ``config.py`` the ``model:`` section,
``model.py`` the model, ``processor.py`` Video-LLaMA's prompt layout (``<Video><ImageHere></Video>``
with the frame-time message) through the conversation templates, ``family.py`` the hooks,
``export.py`` Video-LLaMA checkpoint names in and out.
"""

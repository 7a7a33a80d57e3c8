"""The InstructBLIP family (arXiv 2305.06500): vision tower -> instruction-aware Q-Former -> LLM.

``config.py`` the ``model:`` section, ``model.py`` the query-prefix model (decoder-only or Flan-T5),
``processor.py`` samples and prompts -> batches, ``family.py`` the trainer hooks and stage policy,
``export.py`` hf-instructblip export/import.
"""

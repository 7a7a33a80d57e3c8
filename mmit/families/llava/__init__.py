"""The LLaVA family (arXiv 2304.08485, 2310.03744): vision tower -> projector -> spliced into a causal LM.

``config.py`` the ``model:`` section, ``model.py`` the splice model, ``processor.py`` samples and
prompts -> batches, ``family.py`` the trainer hooks and stage policy, ``export.py`` hf-llava export/import.
"""

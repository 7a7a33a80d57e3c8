"""Adapters that let other toolkits drive mmit checkpoints (imported only by those toolkits).

* :mod:`mmit.integrations.lmms`: an lmms-eval model (``lmms-eval --model mmit --model_args
  checkpoint=DIR``) for every text-generating family, through the family inference contract.
"""

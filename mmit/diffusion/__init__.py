"""InstructPix2Pix-style diffusion tuning (Brooks et al., arXiv 2211.09800) built on diffusers.

* :mod:`mmit.diffusion.model`: ``conv_in`` widening, conditioning dropout, the noise-prediction loss.
* :mod:`mmit.diffusion.family`: the ``instructpix2pix`` family for the shared trainer (EMA included).
* :mod:`mmit.diffusion.data`: editing samples -> tensors; :mod:`mmit.diffusion.triples`: procedural triples.
* :mod:`mmit.diffusion.pipeline`: two-scale guided editing (``mmit edit``); :mod:`mmit.diffusion.metrics`:
  CLIP directional / image similarity swept over guidance scales.
* :mod:`mmit.diffusion.tiny`: the ``tiny-sd`` member built locally for tests and demos.
"""

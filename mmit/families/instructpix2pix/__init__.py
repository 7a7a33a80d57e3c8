"""The InstructPix2Pix family: diffusion tuning to follow editing instructions (Brooks et al., arXiv
2211.09800), built on diffusers.

* :mod:`~mmit.families.instructpix2pix.config`: the ``model:`` section.
* :mod:`~mmit.families.instructpix2pix.model`: ``conv_in`` widening, conditioning dropout, the noise-prediction loss.
* :mod:`~mmit.families.instructpix2pix.family`: the hooks for the shared trainer (EMA included).
* :mod:`~mmit.families.instructpix2pix.data`: editing samples -> batches; ``triples``: procedural triples.
* :mod:`~mmit.families.instructpix2pix.pipeline`: two-scale guided editing (``mmit edit``, ``cli``);
  ``metrics``: CLIP directional / image similarity swept over guidance scales.
* :mod:`~mmit.families.instructpix2pix.export`: the diffusers pipeline folder.
* :mod:`~mmit.families.instructpix2pix.tiny`: the ``tiny-sd`` member built locally for tests and demos.
"""

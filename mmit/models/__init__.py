"""Model parts of mmit: vision towers (``mmit.models.encoders``), connectors / projectors
(``mmit.models.connectors``) and the local cache of tiny test models (``mmit.models.cache``).

This package file stays import-light: importing ``mmit.models`` loads no modelling library. Each
sub-package exposes a kebab-case :class:`mmit.registry.Registry` (``VISION_TOWERS``,
``PROJECTORS``) and a ``build_*`` function that takes the matching config section.
"""

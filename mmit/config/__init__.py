"""Run configuration: dataclasses read from YAML with command-line overrides (draccus).

:mod:`mmit.config.schema` holds the run-level sections (``data``, ``train``) and the family switch;
:mod:`mmit.config.components` the sections of shared model parts; each family's ``model`` section
lives in its package (``mmit/families/<name>/config.py``). Config files are data: read with the safe
YAML loader (:mod:`mmit.config.yamlio`), and ``trust_remote_code`` comes only from the command line
(:mod:`mmit.config.remote_code`). A user's config is checked before anything is built: unknown keys get
"did you mean" (:mod:`mmit.config.suggest`), values their ranges, registry names and paths
(:mod:`mmit.config.validate`); shipped configs are found by name (:mod:`mmit.config.shipped`), and
``mmit train --help`` lists every field with its comment (:mod:`mmit.config.fields`, :mod:`mmit.config.help`).
"""

from mmit.config.audio import AudioEncoderConfig
from mmit.config.components import LLMConfig, ProjectorConfig, QFormerConfig, VisionTowerConfig
from mmit.config.schema import (DataConfig, FamilyConfig, RunConfig, TrainConfig, load_checkpoint_config,
                                load_config, save_config)

__all__ = ["AudioEncoderConfig", "DataConfig", "FamilyConfig", "LLMConfig", "ProjectorConfig", "QFormerConfig", "RunConfig",
           "TrainConfig", "VisionTowerConfig", "load_checkpoint_config", "load_config", "save_config"]

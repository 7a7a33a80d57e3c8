"""Run configuration: dataclasses read from YAML with command-line overrides (draccus)."""

from mmit.config.schema import (DataConfig, LLMConfig, ModelConfig, ProjectorConfig, RunConfig,
                                TrainConfig, VisionTowerConfig, load_config, save_config)

__all__ = ["DataConfig", "LLMConfig", "ModelConfig", "ProjectorConfig", "RunConfig", "TrainConfig",
           "VisionTowerConfig", "load_config", "save_config"]

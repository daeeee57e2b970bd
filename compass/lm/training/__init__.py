"""Adapter training: a validated config, LoRA/DoRA training, the COMPASS-ECDA continual update,
and PEFT-format artifacts with metadata and a manifest."""

from compass.lm.training.artifacts import load_adapter, read_metadata, save_adapter
from compass.lm.training.config import AdapterTrainingConfig
from compass.lm.training.data import replay_buffer, text_sha256
from compass.lm.training.service import SavedAdapter, train_to_folder, training_config
from compass.lm.training.trainer import (
    TrainedAdapter,
    TrainingMetrics,
    attach_adapter,
    continue_adapter,
    estimate_fisher,
    train_adapter,
)

__all__ = [
    "AdapterTrainingConfig",
    "SavedAdapter",
    "TrainedAdapter",
    "TrainingMetrics",
    "attach_adapter",
    "continue_adapter",
    "estimate_fisher",
    "load_adapter",
    "read_metadata",
    "replay_buffer",
    "save_adapter",
    "text_sha256",
    "train_adapter",
    "train_to_folder",
    "training_config",
]

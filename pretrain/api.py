"""The public API; importing it registers every objective and dataset."""

from . import data, objectives  # noqa: F401  (registration side effects)
from .config import ConfigError, load_config
from .fileio import CheckpointError, load_checkpoint
from .trainer import Trainer, TrainingInterrupted

__all__ = ["CheckpointError", "ConfigError", "Trainer", "TrainingInterrupted", "load_checkpoint", "load_config"]

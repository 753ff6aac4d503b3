"""The public API for scripts and notebooks (the registries import their own modules on first
lookup, so nothing here is needed for registration)."""

from .config import ConfigError, load_config
from .fileio import CheckpointError, load_checkpoint
from .trainer import Trainer, TrainingInterrupted

__all__ = ["CheckpointError", "ConfigError", "Trainer", "TrainingInterrupted", "load_checkpoint", "load_config"]

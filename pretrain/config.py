"""Python config files with ``_base_`` inheritance (mmengine.Config) plus validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmengine.config import Config

REQUIRED_KEYS = ("model", "data", "optimizer", "batch_size", "max_iters", "checkpoint_interval")
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """A config that cannot be used, with the file and key it concerns."""


def load_config(path: str | Path, options: dict[str, Any] | None = None) -> Config:
    """Load ``path`` (resolving ``_base_``), apply ``--cfg-options`` and check required keys."""
    path = Path(path)
    if not path.is_file():
        alt = CONFIG_DIR / path
        if alt.is_file():
            path = alt
        else:
            raise ConfigError(f"config file {path} does not exist (configs live under {CONFIG_DIR})")
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:
        raise ConfigError(f"config file {path} cannot be parsed: {exc}") from exc
    if options:
        cfg.merge_from_dict(options)
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"config {path} lacks required key(s) {missing}; every pretrain config "
                          f"needs {list(REQUIRED_KEYS)} (inherit configs/pretrain/_base_/default_runtime.py)")
    for key in ("max_iters", "checkpoint_interval", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ConfigError(f"config {path}: '{key}' must be a positive integer, got {cfg[key]!r}")
    for key in ("model", "data"):
        if not isinstance(cfg[key], dict) or "type" not in cfg[key]:
            raise ConfigError(f"config {path}: '{key}' must be a dict with a 'type' key")
    cfg.filename_resolved = str(path)
    return cfg

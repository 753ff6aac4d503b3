"""Python config files with ``_base_`` inheritance (mmengine.Config) plus validation."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mmengine.config import Config

REQUIRED_KEYS = ("model", "data", "optimizer", "batch_size", "max_iters", "checkpoint_interval")
# Top-level keys the trainer reads with a default (``cfg.get``): legal in --cfg-options even when the
# config file does not set them. Anything else new at the top level is a typo.
OPTIONAL_KEYS = ("seed", "deterministic", "device", "amp", "sync_bn", "accum_steps", "global_batch",
                 "global_batch_rule", "num_workers", "log_interval", "keep_checkpoints", "lr_schedule",
                 "max_nonfinite_steps", "quiet")
# The shipped configs: pretrain/configs is a symlink to the repository's configs/ in a checkout and
# a copy of it inside an installed wheel (pyproject's package-data), so they are found by name either way.
CONFIG_DIR = (Path(__file__).resolve().parent / "configs").resolve()


class ConfigError(ValueError):
    """A config that cannot be used, with the file and key it concerns."""


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def accepted_kwargs(fn: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``fn`` (a class or function) accepts, following ``**kwargs`` up a class's MRO;
    None when anything goes (a ``**kwargs`` that leads nowhere we can see)."""
    classes = [c for c in fn.__mro__ if "__init__" in vars(c)] if inspect.isclass(fn) else [fn]
    names: set[str] = set()
    for c in classes:
        target = c.__init__ if inspect.isclass(fn) else c
        try:
            params = inspect.signature(target).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], section: str) -> None:
    """Refuse keys ``fn`` does not take, naming the config section and the close match."""
    known = accepted_kwargs(fn)
    if known is None:
        return
    for key in kwargs:
        if key not in known:
            raise ConfigError(f"config key '{section}.{key}' is not an option of {getattr(fn, '__name__', fn)}"
                              f"{_did_you_mean(key, known)}; options: {sorted(known)}")


def check_options(cfg: Config, options: dict[str, Any], path: Path) -> None:
    """A top-level --cfg-options key must exist in the config or be a trainer option."""
    known = set(cfg.keys()) | set(OPTIONAL_KEYS)
    for key in options:
        top = key.split(".")[0]
        if top not in known:
            raise ConfigError(f"--cfg-options {key}: '{top}' is not a key of {path.name} nor a trainer option"
                              f"{_did_you_mean(top, known)}")


def resolve_config(path: str | Path, what: str = "config file", hint: str = "") -> Path:
    """The file a config argument names, the same way in every subcommand: the path as given (from
    the current folder, or absolute), else the same path under the shipped ``configs/`` — so
    ``pretrain/flowe_r50_bdd100k.py``, ``configs/bench/tiny.py`` (a plan's spelling) and ``bench/tiny.py``
    work from any folder and from an installed wheel."""
    given = Path(path)
    if given.is_file():
        return given
    if not given.is_absolute():
        inside = Path(*given.parts[1:]) if given.parts[:1] == ("configs",) and len(given.parts) > 1 else given
        for shipped in (CONFIG_DIR / given, CONFIG_DIR / inside):
            if shipped.is_file():
                return shipped
    raise ConfigError(f"{what} {given} does not exist (configs live under {CONFIG_DIR}{hint})")


def load_config(path: str | Path, options: dict[str, Any] | None = None) -> Config:
    """Load ``path`` (see :func:`resolve_config`; resolving ``_base_``), apply ``--cfg-options`` and
    check required keys."""
    path = resolve_config(path)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:
        raise ConfigError(f"config file {path} cannot be parsed: {exc}") from exc
    if options:
        check_options(cfg, options, path)
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

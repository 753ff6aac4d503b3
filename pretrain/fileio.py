"""Atomic file writes and checkpoint loading with errors that say what to do."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it over ``path`` only if the block succeeds.

    Readers never see a half-written file: a crash (or SIGKILL) leaves at most a stray temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last: writers such as cv2.imwrite pick the format from it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not the expected layout."""


def load_checkpoint(path: str | os.PathLike[str], *, weights_only: bool = True) -> dict[str, Any]:
    """Load a checkpoint without executing pickled code, or say clearly why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "it is truncated, corrupt or not a PyTorch file. Delete it to fall back to an earlier "
            "checkpoint, or start a fresh run in another --work-dir."
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def torchvision_weights_file(url: str, what: str, option: str, hint: str = "") -> Path:
    """The local file of torchvision weights at ``url`` (torch hub's cache), or an error that says how
    to get it offline. Nothing is downloaded: the run must not depend on the network."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cached.is_file():
        raise FileNotFoundError(
            f"{what} weights are not available offline: no checkpoint was given and {cached} does not exist. "
            f"Download {url} on a machine with internet, then pass {option}=/path/to/{cached.name} "
            f"(or copy it to {cached.parent}){hint}.")
    return cached

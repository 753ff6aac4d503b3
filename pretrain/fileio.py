"""Atomic file writes and checkpoint loading with errors that say what to do."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import pickle
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

TEMP_MARK = ".tmp-"  # every temp file of atomic_path is ".{name}.tmp-XXXX{suffix}"
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def current_umask() -> int:
    """The process umask (read without a window where it is changed, where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it over ``path`` only if the block succeeds.

    Readers never see a half-written file: a crash (or SIGKILL) leaves at most a stray temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last: writers such as cv2.imwrite pick the format from it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=path.suffix, dir=path.parent)
    # mkstemp makes 0600 files; outputs are shared (a cluster's group, a readout job of another user),
    # so give them the mode any ordinary file of this user gets: 0666 minus the umask.
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class WriteError(OSError):
    """An output could not be written (a full disk, a quota): one line naming the file. What was
    there before is intact — :func:`atomic_path` replaces a file only after a complete write."""


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _write_failed(exc: BaseException, path: Path) -> WriteError | None:
    """The one-line error for a failed write of ``path``, or None for an error that is not about
    writing (a bug, an unpicklable object: those keep their traceback). torch's C++ writer reports
    a full disk as ``RuntimeError: [enforce fail at inline_container.cc] ...`` (``file write failed``,
    ``unexpected pos``)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        reason = os.strerror(exc.errno)
    elif isinstance(exc, RuntimeError) and re.search(r"enforce fail|write failed|PytorchStreamWriter", str(exc)):
        reason = _first_line(exc)
    else:
        return None
    return WriteError(f"cannot write {path} ({reason}): the disk may be full (or over quota); free space and "
                      "rerun — files written earlier are intact")


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through :func:`atomic_path`; a full disk is a :class:`WriteError` naming ``path``."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as exc:
        error = _write_failed(exc, Path(path))
        if error is None:
            raise
        raise error from exc
    return Path(path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    """``Path.write_text`` through :func:`atomic_path`; a full disk is a :class:`WriteError` naming ``path``."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        error = _write_failed(exc, Path(path))
        if error is None:
            raise
        raise error from exc
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike[str], name_glob: str = "*") -> list[Path]:
    """Delete temp files that killed writers of :func:`atomic_path` left in ``folder`` (only the
    ``.{name}.tmp-*`` files of names matching ``name_glob``); returns what was removed."""
    removed = []
    for p in Path(folder).glob(f".{name_glob}{TEMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, unsafe or not the expected layout."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


@functools.cache
class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles detectron2 weight files (dicts of numpy arrays) and refuses any other global."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def numpy_safe_globals() -> tuple[Any, ...]:
    """numpy arrays, scalars and dtypes as data: ``_reconstruct``/``scalar`` rebuild an array or a
    scalar from a shape, a dtype and bytes — they construct data and can call nothing else."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = tuple(type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG")
    return (np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtype_classes)


def safe_torch_load(path: str | os.PathLike[str], safe_globals: Iterable[Any] = (), map_location: Any = "cpu",
                    what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and primitives, plus exactly the
    data types in ``safe_globals`` (never a function such as ``getattr`` or ``eval``). A file that
    needs anything else is refused with one message naming it — nothing in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): a write was interrupted. Delete it; "
                              "an earlier checkpoint (or a fresh run) takes its place.")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, foreign or unsafe files
        msg = str(exc)
        if "refusing" in msg:  # a restricted stand-in (e.g. for getattr) said no
            detail = next(line for line in msg.splitlines() if "refusing" in line).strip()
            raise CheckpointError(f"{what} {path}: {detail}; refusing to unpickle it (it could run code). Only "
                                  "load files from sources you trust.") from None
        if "Unsupported global" in msg or "Unsupported operand" in msg:
            names = sorted(set(_UNSAFE_GLOBAL.findall(msg))) or ["an unknown global"]
            raise CheckpointError(
                f"{what} {path} refers to {', '.join(names)}, which is not a plain data type: refusing to "
                "unpickle it (it could run code). Only load files from sources you trust; re-save the "
                "weights as a plain state dict of tensors.") from None
        raise CheckpointError(
            f"{what} {path} cannot be read ({type(exc).__name__}: {_first_line(exc)}); it is truncated, "
            "corrupt or not a PyTorch file. Delete it to fall back to an earlier checkpoint, or start a "
            "fresh run in another --work-dir.") from exc


def load_checkpoint(path: str | os.PathLike[str], safe_globals: Iterable[Any] = ()) -> dict[str, Any]:
    """Load a checkpoint without executing pickled code, or say clearly why it cannot be used."""
    obj = safe_torch_load(path, safe_globals)
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

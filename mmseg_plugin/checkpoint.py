"""Loading mmengine's own checkpoints without unpickling anything but data.

mmengine 0.10.7 calls ``torch.load(filename)``. Its checkpoints hold, besides tensors, the training
log (``HistoryBuffer`` objects with numpy arrays) and numpy scalars, which ``weights_only=True``
refuses by default, so ``--resume``, ``load_from`` and ``flowssl show predictions`` would fail. We
replace its local-file loader with ``torch.load(weights_only=True)`` plus an explicit allow-list of
exactly those data types (:data:`MMENGINE_SAFE_GLOBALS`): no ``getattr``, no ``eval``, no arbitrary
callable. A file that refers to anything else is refused with a message naming the file and the global;
it is never loaded with ``weights_only=False``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from mmengine.runner.checkpoint import CheckpointLoader

from pretrain.fileio import numpy_safe_globals, safe_torch_load


@cache
def mmengine_safe_globals() -> tuple[Any, ...]:
    """The globals an mmengine checkpoint written by mmseg's Runner holds, and nothing more:
    ``HistoryBuffer`` (the MessageHub's scalar logs, a plain data class holding two numpy arrays)
    and numpy's arrays, scalars and dtypes."""
    from mmengine.logging.history_buffer import HistoryBuffer

    return (HistoryBuffer, *numpy_safe_globals())


def load_mmengine_checkpoint(filename: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with :func:`mmengine_safe_globals` allowed."""
    path = Path(filename)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {filename} does not exist")
    return safe_torch_load(path, mmengine_safe_globals(), map_location)  # CheckpointError is a RuntimeError


@CheckpointLoader.register_scheme(prefixes="", force=True)
def load_local_checkpoint(filename: str, map_location: Any) -> Any:
    return load_mmengine_checkpoint(filename, map_location)

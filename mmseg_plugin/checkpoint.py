"""Loading mmengine's own checkpoints without unpickling anything but data.

mmengine 0.10.7 calls ``torch.load(filename)``. Its checkpoints hold, besides tensors, the training
log (``HistoryBuffer`` objects with numpy arrays) and numpy scalars, which ``weights_only=True``
refuses by default, so ``--resume``, ``load_from`` and ``flowssl show predictions`` would fail. We
replace its local-file loader with ``torch.load(weights_only=True)`` plus an explicit allow-list of
exactly those data types (:func:`mmengine_safe_globals`). A file that refers to anything else is
refused with a message naming the file and the global; it is never loaded with ``weights_only=False``.

One wrinkle: a ``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, 'min')``
(how pickle names a class's function). The real ``builtins.getattr`` is never allowed — it reaches
``eval`` through any function's globals. The name resolves instead to
:func:`history_buffer_statistic`, which returns exactly those four methods of that one class and
refuses every other lookup.

And one more: a checkpoint's ``meta["config"]`` is Python source that mmengine's ``Runner.resume``
*executes* (``Config.fromstring(..., ".py")``, to compare GPU counts) — a checkpoint of plain strings
passes any pickle allow-list and still runs code (as do ``meta["cfg"]`` and the message hub's ``cfg``
in mmengine's ``BaseInferencer``, given weights without a config). The loader drops all three, so no
resume (``--resume``, ``load_from`` + resume, a ``last_checkpoint`` planted in a shared work dir,
mmseg's own ``tools/train.py`` with this plugin imported) ever executes text from a checkpoint. The only cost:
resuming on a different number of GPUs is not re-scaled from the old config's ``gpu_ids``.
"""

from __future__ import annotations

import pickle
from functools import cache
from pathlib import Path
from typing import Any

from mmengine.runner.checkpoint import CheckpointLoader

from pretrain.fileio import numpy_safe_globals, safe_torch_load

HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")  # HistoryBuffer._set_default_statistics


def history_buffer_statistic(owner: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while an mmengine checkpoint is read: only
    ``HistoryBuffer.<min|max|current|mean>`` resolve, any other lookup is refused."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is HistoryBuffer and name in HISTORY_BUFFER_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"refusing getattr({getattr(owner, '__qualname__', type(owner).__name__)}, "
                                 f"{name!r}): mmengine checkpoints only look up HistoryBuffer's statistics")


@cache
def mmengine_safe_globals() -> tuple[Any, ...]:
    """The globals an mmengine checkpoint written by mmseg's Runner holds, and nothing more:
    ``HistoryBuffer`` (the MessageHub's scalar logs, a plain data class holding two numpy arrays),
    numpy's arrays, scalars and dtypes, and the restricted stand-in for ``getattr``."""
    from mmengine.logging.history_buffer import HistoryBuffer

    return (HistoryBuffer, *numpy_safe_globals(), (history_buffer_statistic, "builtins.getattr"))


def without_config_text(checkpoint: Any) -> Any:
    """The checkpoint without the config text mmengine would execute: ``meta["config"]`` (``Runner.resume``)
    and ``meta["cfg"]`` / ``message_hub["runtime_info"]["cfg"]`` (``BaseInferencer`` given weights but no
    config). Everything else (epoch, iteration, seed, dataset_meta, the logs) is kept."""
    if not isinstance(checkpoint, dict):
        return checkpoint
    meta = checkpoint.get("meta")
    if isinstance(meta, dict) and ("config" in meta or "cfg" in meta):
        checkpoint["meta"] = {k: v for k, v in meta.items() if k not in ("config", "cfg")}
    hub = checkpoint.get("message_hub")
    if isinstance(hub, dict) and isinstance(hub.get("runtime_info"), dict) and "cfg" in hub["runtime_info"]:
        checkpoint["message_hub"] = {**hub, "runtime_info": {k: v for k, v in hub["runtime_info"].items()
                                                              if k != "cfg"}}
    return checkpoint


def load_mmengine_checkpoint(filename: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with :func:`mmengine_safe_globals` allowed, and no config text."""
    path = Path(filename)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {filename} does not exist")
    # CheckpointError is a RuntimeError
    return without_config_text(safe_torch_load(path, mmengine_safe_globals(), map_location))


@CheckpointLoader.register_scheme(prefixes="", force=True)
def load_local_checkpoint(filename: str, map_location: Any) -> Any:
    return load_mmengine_checkpoint(filename, map_location)

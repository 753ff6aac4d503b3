"""detectron2's checkpointer without code execution from weight files.

``DetectionCheckpointer`` reads ``.pkl`` files with ``pickle.load`` and ``.pth`` files with fvcore's
``torch.load``: a crafted file given as ``MODEL.WEIGHTS`` would run code. This subclass keeps every
behaviour of detectron2's loader (model-zoo/Caffe2 layouts, name-matching heuristics, resume) but
gives it a pickle reader that rebuilds only numpy arrays and a ``torch.load(weights_only=True)``
with numpy's data types allowed (detectron2's trainer state holds numpy scalars).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import IO, Any

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint import detection_checkpoint as _d2

from pretrain.convert import NumpyOnlyUnpickler
from pretrain.fileio import numpy_safe_globals, safe_torch_load


def _numpy_only_load(f: IO[bytes], encoding: str = "latin1", **_: Any) -> Any:
    return NumpyOnlyUnpickler(f, encoding=encoding).load()


@contextlib.contextmanager
def _restricted_pickle() -> Iterator[None]:
    """detectron2 calls ``pickle.load`` from its module's namespace; point that name at the
    restricted reader while one file is read (loading happens on the main thread)."""
    original = _d2.pickle
    _d2.pickle = types.SimpleNamespace(load=_numpy_only_load)
    try:
        yield
    finally:
        _d2.pickle = original


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose reads never unpickle anything but data."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        with _restricted_pickle():
            return super()._load_file(filename)

    def _torch_load(self, f: str) -> Any:
        return safe_torch_load(self.path_manager.get_local_path(f), numpy_safe_globals())

    @classmethod
    def replacing(cls, old: DetectionCheckpointer) -> SafeDetectionCheckpointer:
        """The same checkpointer (model, folder, checkpointables) with safe reads."""
        return cls(old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables)

"""detectron2's checkpointer without code execution from weight files.

``DetectionCheckpointer`` reads ``.pkl`` files with ``pickle.load``, pycls ``.pyth`` files with a bare
``torch.load(f)`` (which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns into a full unpickler) and every
other suffix with fvcore's ``torch.load``: a crafted file given as ``MODEL.WEIGHTS`` would run code.
This subclass keeps every behaviour of detectron2's loader (model-zoo/Caffe2/pycls layouts,
name-matching heuristics, resume) but gives each branch a safe reader: pickles rebuild only numpy
arrays, and every ``torch.load`` is ``weights_only=True`` (an explicit argument, which the environment
variable cannot override) with numpy's data types allowed (detectron2's trainer state holds numpy
scalars). A file that holds no dict is refused naming it, not left to an ``assert`` deep inside.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import IO, Any

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint import detection_checkpoint as _d2

from pretrain.fileio import CheckpointError, NumpyOnlyUnpickler, numpy_safe_globals, safe_torch_load


def _a_dict(obj: Any, filename: str, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"MODEL.WEIGHTS {filename} holds a {type(obj).__name__}, expected a dict of weights "
                              f"({what}); convert a flowssl checkpoint with 'flowssl convert CKPT --to detectron2'")
    return obj


@contextlib.contextmanager
def _restricted_loaders(filename: str, local: str) -> Iterator[None]:
    """detectron2 calls ``pickle.load`` (``.pkl``) and ``torch.load`` (``.pyth``) from its module's
    namespace; point both names at safe readers while one file is read (loading happens on the main
    thread)."""

    def numpy_only_load(f: IO[bytes], encoding: str = "latin1", **_: Any) -> Any:
        try:
            obj = NumpyOnlyUnpickler(f, encoding=encoding).load()
        except Exception as exc:
            raise CheckpointError(f"MODEL.WEIGHTS {filename} is not a readable detectron2 pickle "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        return _a_dict(obj, filename, "a detectron2 .pkl")

    def weights_only_load(f: Any, *_: Any, **__: Any) -> Any:
        obj = _a_dict(safe_torch_load(local, numpy_safe_globals(), what="MODEL.WEIGHTS"), filename, "a pycls .pyth")
        if not isinstance(obj.get("model_state"), dict):
            raise CheckpointError(f"MODEL.WEIGHTS {filename}: a .pyth file is read as a pycls checkpoint and needs a "
                                  "'model_state' dict; convert the weights with 'flowssl convert'")
        return obj

    original = _d2.pickle, _d2.torch
    _d2.pickle = types.SimpleNamespace(load=numpy_only_load)
    _d2.torch = types.SimpleNamespace(load=weights_only_load)
    try:
        yield
    finally:
        _d2.pickle, _d2.torch = original


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose reads never unpickle anything but data."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        with _restricted_loaders(filename, self.path_manager.get_local_path(filename)):
            return super()._load_file(filename)

    def _torch_load(self, f: str) -> Any:
        return _a_dict(safe_torch_load(self.path_manager.get_local_path(f), numpy_safe_globals(),
                                       what="MODEL.WEIGHTS"), f, "a PyTorch checkpoint")

    @classmethod
    def replacing(cls, old: DetectionCheckpointer) -> SafeDetectionCheckpointer:
        """The same checkpointer (model, folder, checkpointables) with safe reads."""
        return cls(old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables)

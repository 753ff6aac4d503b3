"""Loading mmengine's own checkpoints under torch ≥ 2.6.

mmengine 0.10.7 calls ``torch.load(filename)``; since torch 2.6 that means ``weights_only=True``,
which rejects the training state mmengine itself saves (``HistoryBuffer`` with numpy arrays), so
``--resume`` and ``load_from`` fail. We replace its local-file loader with one that lists the
file's globals first (``get_unsafe_globals_in_checkpoint`` reads them without executing anything)
and only unpickles fully when every global is one mmengine/numpy checkpoints are known to use.
Anything else is refused with a message naming the file and the global.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.runner.checkpoint import CheckpointLoader

KNOWN_GLOBALS = {
    "mmengine.logging.history_buffer.HistoryBuffer", "mmengine.config.config.ConfigDict",
    "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar", "builtins.getattr", "collections.OrderedDict",
}
KNOWN_PREFIXES = ("numpy.dtypes.",)


def _allowed(name: str) -> bool:
    return name in KNOWN_GLOBALS or name.startswith(KNOWN_PREFIXES)


@CheckpointLoader.register_scheme(prefixes="", force=True)
def load_local_checkpoint(filename: str, map_location: Any) -> Any:
    path = Path(filename)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {filename} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 - fall through to the inspected load below
        pass
    try:
        unknown = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path) if not _allowed(g)]
    except Exception as exc:
        raise RuntimeError(f"checkpoint {filename} cannot be read ({exc}); it is truncated or not a PyTorch "
                           "file") from exc
    if unknown:
        raise RuntimeError(f"checkpoint {filename} references {unknown}, which mmengine checkpoints never do; "
                           "refusing to unpickle it")
    return torch.load(path, map_location=map_location, weights_only=False)

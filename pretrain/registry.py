"""One registry per extension point (detectron2 style), built on mmengine's Registry.

Objectives and pretraining datasets are looked up by the ``type`` of their config dict, so a new
method drops in by registering a class — the trainer never names one. Each registry imports the
package that registers into it on its first lookup (mmengine's ``locations``), so any entry point
(``pretrain.trainer`` alone, a notebook) finds every shipped objective and dataset.
"""

from __future__ import annotations

from typing import Any

from mmengine.registry import Registry

OBJECTIVES = Registry("objective", locations=["pretrain.objectives"])
DATASETS = Registry("pretrain dataset", locations=["pretrain.data"])


def build_from(registry: Registry, cfg: dict[str, Any], what: str, section: str | None = None,
               **extra: Any) -> Any:
    """Build ``cfg['type']`` from ``registry`` with an error that lists what is registered; keys the
    class does not take are refused with the close match (``section`` names the config key)."""
    from .config import check_kwargs

    registry.import_from_location()  # before listing module_dict in an error
    if "type" not in cfg:
        raise KeyError(f"the {what} config has no 'type' key; choose one of {sorted(registry.module_dict)}")
    name = cfg["type"]
    if registry.get(name) is None:
        raise KeyError(f"unknown {what} '{name}'; registered: {sorted(registry.module_dict)}")
    args = {k: v for k, v in cfg.items() if k != "type"}
    check_kwargs(registry.get(name), args, section or what)
    args.update(extra)
    return registry.get(name)(**args)

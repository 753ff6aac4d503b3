"""``MODEL.FLOWSSL`` and how a converted checkpoint's sidecar configures detectron2."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pretrain.readout import ARCH_DEPTH, D2_ARCHS, d2_arch_error

# the depths detectron2 builds for flowssl encoders (bottleneck archs only: pretrain.readout.D2_ARCHS)
D2_DEPTHS = sorted(ARCH_DEPTH[a] for a in D2_ARCHS)


def add_flowssl_config(cfg: Any) -> None:
    """Add ``MODEL.FLOWSSL`` (the readout protocol switch and the pretraining layout) and
    ``DATASETS.LABEL_FRACTION``/``LABEL_SEED`` (FlowE Table 6's limited labels)."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.FLOWSSL = CN()
    cfg.MODEL.FLOWSSL.ARCH = "resnet50"
    # True: the whole encoder is frozen (stem, res2-res4 and res5 inside the ROI heads) with FrozenBN,
    # so only RPN, box predictor (and mask head) train — FlowE §4.2's readout.
    cfg.MODEL.FLOWSSL.FROZEN = True
    # Pretraining dilation (OS8: res4 dilation 2, res5 dilation 4) or standard strides (1, 1).
    cfg.MODEL.FLOWSSL.RES4_DILATION = 2
    cfg.MODEL.FLOWSSL.RES5_DILATION = 4
    cfg.MODEL.FLOWSSL.PRETRAIN_OUTPUT_STRIDE = 8
    cfg.MODEL.FLOWSSL.METHOD = ""
    # Train on a deterministic subset of DATASETS.TRAIN (d2_plugin.datasets.label_subset), listed in
    # OUTPUT_DIR/label_subset.txt; DATASETS.TEST is never subsampled.
    cfg.DATASETS.LABEL_FRACTION = 1.0
    cfg.DATASETS.LABEL_SEED = 0


def merge_yaml_safely(cfg: Any, config_file: str | Path) -> None:
    """``cfg.merge_from_file`` that never takes detectron2's ``yaml.unsafe_load`` fallback (its default
    ``allow_unsafe=True`` runs any ``!!python/...`` tag), for the file and every ``_BASE_`` below it."""
    import yaml

    from pretrain.config import ConfigError

    try:
        cfg.merge_from_file(str(config_file), allow_unsafe=False)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        name = getattr(where, "name", "")
        inner = f" (its _BASE_ {name})" if name and not name.startswith("<") and name != str(config_file) else ""
        at = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {config_file}{inner}{at}: not plain YAML data ({problem}); flowssl reads configs "
                          "with yaml.safe_load and never builds Python objects from a config") from None
    except KeyError as exc:
        raise ConfigError(f"config {config_file}: {exc.args[0] if exc.args else exc}") from None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# what each hint may hold: a sidecar is a file someone else may have written, and its values end up in
# the config detectron2 builds the model from and dumps as YAML
HINT_CHECKS: dict[str, tuple[Any, str]] = {
    "MODEL.PIXEL_MEAN": (lambda v: isinstance(v, list) and len(v) == 3 and all(_number(x) and 0 <= x <= 255 for x in v),
                         "three numbers in [0, 255]"),
    "MODEL.PIXEL_STD": (lambda v: isinstance(v, list) and len(v) == 3 and all(_number(x) and 0 < x <= 255 for x in v),
                        "three numbers in (0, 255]"),
    "INPUT.FORMAT": (lambda v: v in ("RGB", "BGR"), "'RGB' or 'BGR'"),
    "MODEL.RESNETS.STRIDE_IN_1X1": (lambda v: isinstance(v, bool), "true or false"),
    "MODEL.RESNETS.DEPTH": (lambda v: v in D2_DEPTHS, f"one of {D2_DEPTHS}"),
    "MODEL.FLOWSSL.PRETRAIN_OUTPUT_STRIDE": (lambda v: v in (8, 16, 32) and not isinstance(v, bool), "8, 16 or 32"),
    "MODEL.FLOWSSL.RES4_DILATION": (lambda v: v in (1, 2) and not isinstance(v, bool), "1 or 2"),
    "MODEL.FLOWSSL.RES5_DILATION": (lambda v: v in (1, 2, 4) and not isinstance(v, bool), "1, 2 or 4"),
}


def checkpoint_hints(weights: str | Path) -> dict[str, Any] | None:
    """The ``detectron2_config`` block that ``flowssl convert --to detectron2`` stored beside ``weights``,
    every value checked (one message naming the sidecar and the key otherwise)."""
    from pretrain.config import ConfigError
    from pretrain.convert import SAFE_NAME

    side = Path(f"{weights}.json")
    if not side.is_file():
        return None
    fix = "re-create it with 'flowssl convert CKPT --to detectron2 -o OUT.pkl --force', or delete it"
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"sidecar {side} is not readable JSON ({exc}); {fix}") from None
    block = data.get("detectron2_config", {}) if isinstance(data, dict) else None
    if not isinstance(block, dict):
        raise ConfigError(f"sidecar {side}: expected a JSON object with a 'detectron2_config' object; {fix}")
    hints: dict[str, Any] = {}
    for key, value in block.items():
        if key not in HINT_CHECKS:
            raise ConfigError(f"sidecar {side}: unknown detectron2_config key '{key}' (known: {sorted(HINT_CHECKS)}); "
                              f"{fix}")
        ok, want = HINT_CHECKS[key]
        if not ok(value):
            raise ConfigError(f"sidecar {side}: detectron2_config '{key}' is {value!r:.60}, expected {want}; {fix}")
        hints[key] = value
    method, arch = data.get("method", ""), data.get("arch", "resnet50")
    if method != "" and not (isinstance(method, str) and SAFE_NAME.fullmatch(method)):
        raise ConfigError(f"sidecar {side}: 'method' is {method!r:.60}, expected a plain name ({SAFE_NAME.pattern}); "
                          f"{fix}")
    if d2_arch_error(arch):
        raise ConfigError(f"sidecar {side}: {d2_arch_error(arch)}")
    hints["MODEL.FLOWSSL.METHOD"] = method
    hints["MODEL.FLOWSSL.ARCH"] = arch
    return hints


def apply_checkpoint_hints(cfg: Any, weights: str | Path) -> dict[str, Any] | None:
    """Set pixel mean/std (RGB), input format, depth and arch from the checkpoint's metadata, so the
    readout normalises inputs exactly as pretraining did. Dilations stay as the config chose."""
    hints = checkpoint_hints(weights)
    if hints is None:
        return None
    cfg.defrost()
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "INPUT.FORMAT", "MODEL.RESNETS.STRIDE_IN_1X1",
                "MODEL.FLOWSSL.METHOD", "MODEL.FLOWSSL.ARCH", "MODEL.FLOWSSL.PRETRAIN_OUTPUT_STRIDE"):
        if key in hints:
            node = cfg
            *parents, leaf = key.split(".")
            for p in parents:
                node = getattr(node, p)
            setattr(node, leaf, hints[key])
    cfg.MODEL.RESNETS.DEPTH = ARCH_DEPTH.get(cfg.MODEL.FLOWSSL.ARCH, cfg.MODEL.RESNETS.DEPTH)
    return hints

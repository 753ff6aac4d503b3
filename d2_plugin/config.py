"""``MODEL.FLOWSSL`` and how a converted checkpoint's sidecar configures detectron2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARCH_DEPTH = {"resnet14": 14, "resnet50": 50, "resnet101": 101}


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


def checkpoint_hints(weights: str | Path) -> dict[str, Any] | None:
    """The ``detectron2_config`` block that ``flowssl convert --to detectron2`` stored beside ``weights``."""
    side = Path(f"{weights}.json")
    if not side.is_file():
        return None
    data = json.loads(side.read_text())
    hints = dict(data.get("detectron2_config", {}))
    hints["MODEL.FLOWSSL.METHOD"] = data.get("method", "")
    hints["MODEL.FLOWSSL.ARCH"] = data.get("arch", "resnet50")
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

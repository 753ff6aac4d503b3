"""Train / test entry points shared by ``tools/mmseg_train.py``, ``tools/mmseg_test.py`` and the
benchmark tooling: mmengine's Runner with a flowssl checkpoint plugged into the backbone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmengine.config import Config
from mmengine.runner import Runner


def load_cfg(config: str | Path, work_dir: str | Path | None = None, checkpoint: str | None = None,
             cfg_options: dict[str, Any] | None = None, launcher: str = "none",
             modify: Callable[[Config], None] | None = None) -> Config:
    """mmseg's tools/train.py config handling, plus ``checkpoint`` → ``model.backbone.checkpoint``."""
    if not Path(config).is_file():
        raise FileNotFoundError(f"config {config} does not exist")
    cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = str(work_dir or cfg.get("work_dir") or Path("work_dirs") / Path(config).stem)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist (a flowssl pretraining checkpoint "
                                    "or a file written by 'flowssl convert --to mmseg')")
        cfg.model.backbone.checkpoint = str(checkpoint)
    if modify is not None:
        modify(cfg)
    return cfg


def run_train(cfg: Config, resume: bool = False) -> Runner:
    cfg.resume = resume
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def run_test(cfg: Config, model_checkpoint: str | None, out: str | Path | None = None) -> dict[str, Any]:
    """Evaluate and write ``{"metrics": {aAcc, mIoU, mAcc, IoU.<class>...}, ...}`` to ``out``.

    A class absent from both ground truth and prediction has IoU NaN (as in mmseg); it is written,
    and returned, as ``None`` (JSON ``null``) so the file stays standard JSON.
    """
    from pretrain.fileio import write_text_atomic

    from .metric import json_safe

    if model_checkpoint is not None:
        if not Path(model_checkpoint).is_file():
            raise FileNotFoundError(f"readout checkpoint {model_checkpoint} does not exist")
        cfg.load_from = str(model_checkpoint)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    result = {
        "framework": "mmseg", "config": Path(cfg.filename).name if cfg.filename else None,
        "readout_checkpoint": model_checkpoint, "backbone_checkpoint": cfg.model.backbone.get("checkpoint"),
        "frozen": cfg.model.backbone.get("frozen"), "decode_head": cfg.model.decode_head.type,
        "metrics": json_safe({k: float(v) for k, v in metrics.items()}),  # NaN (class absent) → null
    }
    out = Path(out or Path(cfg.work_dir) / "results.json")
    write_text_atomic(json.dumps(result, indent=2), out)
    return result

"""Train / test entry points shared by ``tools/mmseg_train.py``, ``tools/mmseg_test.py`` and the
benchmark tooling: mmengine's Runner with a flowssl checkpoint plugged into the backbone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmengine.config import Config
from mmengine.runner import Runner

from pretrain import readout


def load_cfg(config: str | Path, work_dir: str | Path | None = None, checkpoint: str | None = None,
             cfg_options: dict[str, Any] | None = None, launcher: str = "none",
             modify: Callable[[Config], None] | None = None, label_fraction: float = 1.0,
             label_seed: int = 0) -> Config:
    """mmseg's tools/train.py config handling, plus ``checkpoint`` → ``model.backbone.checkpoint``.

    ``label_fraction < 1`` trains on that deterministic share of the training images (FlowE Table 6):
    ``train_dataloader.dataset`` is wrapped in :class:`LabelFractionDataset` (seed ``label_seed``)
    and the chosen files are listed in ``<work_dir>/label_subset.txt``. Evaluation sets are untouched.
    """
    label_fraction = readout.check_fraction(label_fraction, "--label-fraction")
    if isinstance(label_seed, bool) or not isinstance(label_seed, int):
        raise ValueError(f"--label-seed must be an integer, got {label_seed!r}")
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
    if not any(isinstance(h, dict) and h.get("type") == "LabelIdCheckHook" for h in cfg.get("custom_hooks") or []):
        # a label id beyond the classes names its file, instead of torch's IndexError in the loss
        cfg.custom_hooks = [*(cfg.get("custom_hooks") or []), dict(type="LabelIdCheckHook")]
    if modify is not None:
        modify(cfg)
    if label_fraction < 1.0:
        dataset = cfg.train_dataloader.dataset
        if dataset.get("type") == "LabelFractionDataset":
            raise ValueError(f"{config} already trains on a label fraction "
                             f"({dataset.get('fraction')}); drop --label-fraction or use the full-label config")
        cfg.train_dataloader.dataset = dict(type="LabelFractionDataset", dataset=dataset, fraction=label_fraction,
                                            seed=label_seed, list_file=str(Path(cfg.work_dir) / readout.LIST_FILE_NAME))
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
        # PooDLe can be read out through its spatial decoder (its authors' protocol) or not (FlowE's)
        "backbone_readout": "encoder+decoder" if cfg.model.backbone.get("decoder") else "encoder",
        "metrics": readout.json_safe({k: float(v) for k, v in metrics.items()}),  # NaN (class absent) → null
    }
    readout.write_results(result, out or Path(cfg.work_dir) / readout.RESULTS_FILE)
    return result

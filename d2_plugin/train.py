"""detectron2's train_net glue: config setup, a DefaultTrainer with the right evaluator, results JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, verify_results

from . import modeling  # noqa: F401  (registers the backbones and ROI heads)
from .checkpoint import SafeDetectionCheckpointer
from .config import add_flowssl_config, apply_checkpoint_hints
from .datasets import register_flowssl_datasets


def setup(config_file: str, opts: list[str] | None = None, data_root: str | None = None,
          synthetic_root: str | None = None, args: Any = None) -> Any:
    """get_cfg + MODEL.FLOWSSL + the file + opts; pixel statistics from the weights' sidecar."""
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"config {config_file} does not exist")
    cfg = get_cfg()
    add_flowssl_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    if cfg.MODEL.WEIGHTS:
        if not cfg.MODEL.WEIGHTS.startswith(("detectron2://", "http")) and not Path(cfg.MODEL.WEIGHTS).is_file():
            raise FileNotFoundError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} does not exist (convert a flowssl checkpoint "
                                    "with 'flowssl convert CKPT --to detectron2 -o OUT.pkl')")
        apply_checkpoint_hints(cfg, cfg.MODEL.WEIGHTS)
    register_flowssl_datasets(data_root, synthetic_root)
    cfg.freeze()
    if args is not None:
        default_setup(cfg, args)
    return cfg


class Trainer(DefaultTrainer):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.checkpointer = SafeDetectionCheckpointer.replacing(self.checkpointer)

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: str | None = None) -> Any:
        output_folder = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        evaluators = []
        if kind == "cityscapes_instance":
            from detectron2.evaluation import CityscapesInstanceEvaluator

            evaluators.append(CityscapesInstanceEvaluator(dataset_name))
        if kind == "pascal_voc":
            from detectron2.evaluation import PascalVOCDetectionEvaluator

            evaluators.append(PascalVOCDetectionEvaluator(dataset_name))
        else:
            evaluators.append(COCOEvaluator(dataset_name, output_dir=output_folder))
        return DatasetEvaluators(evaluators)


def write_results(cfg: Any, results: dict[str, Any], out: str | Path | None = None) -> Path:
    """AP/AP50/AP75 (box and mask) as JSON for ``flowssl tables``."""
    from pretrain.fileio import write_text_atomic

    flat = {task: {k: float(v) for k, v in metrics.items()} for task, metrics in results.items()}
    payload = {"framework": "detectron2", "weights": cfg.MODEL.WEIGHTS, "frozen": bool(cfg.MODEL.FLOWSSL.FROZEN),
               "backbone": cfg.MODEL.BACKBONE.NAME, "method": cfg.MODEL.FLOWSSL.METHOD, "metrics": flat}
    path = Path(out or Path(cfg.OUTPUT_DIR) / "results.json")
    write_text_atomic(json.dumps(payload, indent=2), path)
    return path


def evaluate(cfg: Any, weights: str | None = None) -> dict[str, Any]:
    model = Trainer.build_model(cfg)
    SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(weights or cfg.MODEL.WEIGHTS, resume=False)
    results = Trainer.test(cfg, model)
    if results:
        verify_results(cfg, results)
    write_results(cfg, results)
    return results

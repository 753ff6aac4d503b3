"""detectron2's train_net glue: config setup, a DefaultTrainer with the right evaluator and the
label-fraction training set, and a results JSON for ``flowssl tables``."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils import comm

from pretrain import readout
from pretrain.config import ConfigError

from . import modeling  # noqa: F401  (registers the backbones and ROI heads)
from .checkpoint import SafeDetectionCheckpointer
from .config import add_flowssl_config, apply_checkpoint_hints, merge_yaml_safely
from .datasets import label_subset, label_subset_text, register_flowssl_datasets

logger = logging.getLogger(__name__)


def _cityscapes_scripts_importable() -> bool:
    """detectron2's Cityscapes loader and evaluator import this module (detectron2#5436)."""
    try:
        return importlib.util.find_spec("deeplearning.projects.cityscapesApi.cityscapesscripts") is not None
    except ModuleNotFoundError:
        return False


def check_datasets(cfg: Any, config_file: str) -> None:
    """Every dataset the config names is registered and loadable here — fail before a model is built."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    known = set(DatasetCatalog.list())
    for name in names:
        if name not in known:
            ours = sorted(n for n in known if n.startswith(("bdd100k", "cityscapes_flowssl", "synthetic", "voc_")))
            raise ConfigError(f"{config_file}: dataset '{name}' is not registered; flowssl registers {ours} "
                           "(plus detectron2's builtin datasets)")
        kind = MetadataCatalog.get(name).get("evaluator_type", "")
        if kind.startswith("cityscapes") and not _cityscapes_scripts_importable():
            raise ConfigError(
                f"{config_file}: dataset '{name}' uses detectron2's Cityscapes loader/evaluator, which import "
                "deeplearning.projects.cityscapesApi.cityscapesscripts — absent from detectron2 source builds "
                "(facebookresearch/detectron2#5436). Use cityscapes_flowssl_instance_{train,val}: instances from "
                "*_gtFine_instanceIds.png, COCO-style bbox and segm AP.")
    fraction = cfg.DATASETS.LABEL_FRACTION
    if not 0 < fraction <= 1:
        raise ConfigError(f"{config_file}: DATASETS.LABEL_FRACTION must be in (0, 1] (0.01 for 1 %), got {fraction}")


def setup(config_file: str, opts: list[str] | None = None, data_root: str | None = None,
          synthetic_root: str | None = None, args: Any = None) -> Any:
    """get_cfg + MODEL.FLOWSSL + the file + opts; pixel statistics from the weights' sidecar; datasets
    registered under ``data_root``."""
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"config {config_file} does not exist")
    cfg = get_cfg()
    add_flowssl_config(cfg)
    merge_yaml_safely(cfg, config_file)
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, ValueError, AssertionError) as exc:
        raise ConfigError(f"command-line options {' '.join(map(str, opts or []))!r:.200}: {exc}") from None
    if cfg.MODEL.WEIGHTS:
        if not cfg.MODEL.WEIGHTS.startswith(("detectron2://", "http")) and not Path(cfg.MODEL.WEIGHTS).is_file():
            raise FileNotFoundError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} does not exist (convert a flowssl checkpoint "
                                    "with 'flowssl convert CKPT --to detectron2 -o OUT.pkl')")
        apply_checkpoint_hints(cfg, cfg.MODEL.WEIGHTS)
    register_flowssl_datasets(data_root, synthetic_root)
    check_datasets(cfg, config_file)
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
        """One evaluator per dataset: PASCAL VOC AP for ``pascal_voc``, detectron2's Cityscapes evaluator
        where its import works (see :func:`check_datasets`), COCO bbox (+ segm with MASK_ON) otherwise."""
        output_folder = output_folder or str(Path(cfg.OUTPUT_DIR) / "inference")
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if kind == "pascal_voc":
            from detectron2.evaluation import PascalVOCDetectionEvaluator

            return PascalVOCDetectionEvaluator(dataset_name)
        if kind == "cityscapes_instance":
            from detectron2.evaluation import CityscapesInstanceEvaluator

            return CityscapesInstanceEvaluator(dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def build_train_loader(cls, cfg: Any) -> Any:
        """detectron2's loader; with ``DATASETS.LABEL_FRACTION < 1`` over the deterministic subset of the
        images detectron2 would train on (same filtering), its list written to ``OUTPUT_DIR``."""
        fraction = cfg.DATASETS.LABEL_FRACTION
        if fraction >= 1:
            return super().build_train_loader(cfg)
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None)
        subset = label_subset(dicts, fraction, cfg.DATASETS.LABEL_SEED)
        if comm.is_main_process():
            from pretrain.fileio import write_text_atomic

            text = label_subset_text(subset, len(dicts), fraction, cfg.DATASETS.LABEL_SEED, cfg.DATASETS.TRAIN)
            path = write_text_atomic(text, Path(cfg.OUTPUT_DIR) / readout.LIST_FILE_NAME)
            logger.info("label fraction %s (seed %d): training on %d of %d images, listed in %s", fraction,
                        cfg.DATASETS.LABEL_SEED, len(subset), len(dicts), path)
        return build_detection_train_loader(cfg, dataset=subset)


def _floats(results: dict[str, Any]) -> dict[str, Any]:
    """detectron2's (possibly per-dataset nested) metrics as plain floats for JSON."""
    return {k: _floats(v) if isinstance(v, dict) else float(v) for k, v in results.items()}


def write_results(cfg: Any, results: dict[str, Any], out: str | Path | None = None) -> Path:
    """AP/AP50/AP75 (box and mask) as JSON for ``flowssl tables``, with the label fraction trained on.
    An AP detectron2 reports as NaN (no predictions) is written as ``null`` (:func:`pretrain.readout.write_results`)."""
    payload = {"framework": "detectron2", "weights": cfg.MODEL.WEIGHTS, "frozen": bool(cfg.MODEL.FLOWSSL.FROZEN),
               "backbone": cfg.MODEL.BACKBONE.NAME, "method": cfg.MODEL.FLOWSSL.METHOD,
               "label_fraction": float(cfg.DATASETS.LABEL_FRACTION), "label_seed": int(cfg.DATASETS.LABEL_SEED),
               "metrics": _floats(results or {})}
    return readout.write_results(payload, out or Path(cfg.OUTPUT_DIR) / readout.RESULTS_FILE)


def evaluate(cfg: Any, weights: str | None = None, resume: bool = False) -> dict[str, Any]:
    """``--eval-only``: load the weights (safely), evaluate ``DATASETS.TEST`` once, write results.json."""
    model = Trainer.build_model(cfg)
    SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(weights or cfg.MODEL.WEIGHTS,
                                                                            resume=resume)
    results = Trainer.test(cfg, model)
    if comm.is_main_process():
        if results:
            verify_results(cfg, results)
        write_results(cfg, results)
    return results


def run(args: Any) -> dict[str, Any]:
    """What ``tools/d2_train_net.py`` does in each process: train, then write the results of the
    evaluation the trainer's EvalHook ran after the last iteration — the test set is evaluated once."""
    cfg = setup(args.config_file, args.opts, args.data_root, args.synthetic_root, args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    # DefaultTrainer's EvalHook stores its results here (it only returns them with EXPECTED_RESULTS)
    results = getattr(trainer, "_last_eval_results", None)
    if results is None:  # no EvalHook ran (a custom hook list): evaluate now
        results = Trainer.test(cfg, trainer.model)
    if comm.is_main_process():
        write_results(cfg, results)
    return results

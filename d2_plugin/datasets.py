"""Dataset registration. Loaders that only parse files (BDD100K JSON, the synthetic instance PNGs)
need no detectron2; ``register_flowssl_datasets`` puts them in ``DatasetCatalog``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# FlowE §4.1: BDD100K detection with the 8 Cityscapes instance classes. BDD100K's "pedestrian"
# (det_20) / "person" (scalabel) map to person; "other person", "other vehicle", "trailer",
# "traffic light" and "traffic sign" are not among the 8 and are dropped.
BDD100K_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
BDD100K_MAP = {"pedestrian": "person", "person": "person", "rider": "rider", "car": "car", "truck": "truck",
               "bus": "bus", "train": "train", "motorcycle": "motorcycle", "motor": "motorcycle",
               "bicycle": "bicycle", "bike": "bicycle"}
SYNTHETIC_THING_CLASSES = ("disk", "square", "triangle", "ring", "cross")


def load_bdd100k_det(json_file: str | Path, image_root: str | Path, height: int = 720,
                     width: int = 1280) -> list[dict[str, Any]]:
    """BDD100K det_20 / box2d JSON → detectron2 dicts (XYXY_ABS boxes, the 8 classes)."""
    json_file = Path(json_file)
    if not json_file.is_file():
        raise FileNotFoundError(f"BDD100K label file {json_file} does not exist")
    frames = json.loads(json_file.read_text())
    out = []
    for i, frame in enumerate(frames):
        annos = []
        for lab in frame.get("labels") or []:
            name = BDD100K_MAP.get(lab.get("category"))
            box = lab.get("box2d")
            if name is None or box is None:
                continue
            crowd = bool((lab.get("attributes") or {}).get("crowd", False))
            annos.append({"bbox": [box["x1"], box["y1"], box["x2"], box["y2"]], "bbox_mode": 0,  # BoxMode.XYXY_ABS
                          "category_id": BDD100K_CLASSES.index(name), "iscrowd": int(crowd)})
        out.append({"file_name": str(Path(image_root) / frame["name"]), "image_id": i, "height": height,
                    "width": width, "annotations": annos})
    return out


def load_synthetic_instances(root: str | Path, split: str) -> list[dict[str, Any]]:
    """The synthetic video's Cityscapes layout → instance dicts with RLE masks (class·1000 + k ids)."""
    from pycocotools import mask as mask_util

    img_dir = Path(root) / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir} does not exist; write it with `flowssl demo` or "
                                "pretrain.data.write_cityscapes_layout")
    out = []
    for i, img in enumerate(sorted(img_dir.rglob("*_leftImg8bit.png"))):
        inst_path = Path(str(img).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png",
                                                                               "_gtFine_instanceIds.png"))
        inst = cv2.imread(str(inst_path), cv2.IMREAD_UNCHANGED)
        if inst is None:
            raise FileNotFoundError(f"instance map {inst_path} is missing or unreadable")
        annos = []
        for iid in np.unique(inst):
            if iid < 1000:
                continue
            m = np.asfortranarray((inst == iid).astype(np.uint8))
            ys, xs = np.nonzero(m)
            rle = mask_util.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            annos.append({"bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                          "bbox_mode": 0, "category_id": int(iid // 1000) - 1, "segmentation": rle, "iscrowd": 0})
        out.append({"file_name": str(img), "image_id": i, "height": inst.shape[0], "width": inst.shape[1],
                    "annotations": annos})
    return out


def register_flowssl_datasets(root: str | Path | None = None, synthetic_root: str | Path | None = None) -> None:
    """Register ``bdd100k_det_{train,val}``, ``cityscapes_flowssl_instance_{train,val}`` and
    ``synthetic_instance_{train,val}``. Paths: ``root`` or ``$DETECTRON2_DATASETS`` (default
    ``datasets``); the synthetic data defaults to ``work_dirs/demo/data/synthetic_cityscapes``.
    PASCAL VOC uses detectron2's builtin ``voc_2007_*``/``voc_2012_*`` names under the same root."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = Path(root or os.environ.get("DETECTRON2_DATASETS", "datasets"))
    synthetic_root = Path(synthetic_root or "work_dirs/demo/data/synthetic_cityscapes")

    def add(name: str, loader: Any, **meta: Any) -> None:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(**meta)

    for split in ("train", "val"):
        bdd = root / "bdd100k"
        add(f"bdd100k_det_{split}",
            lambda s=split, b=bdd: load_bdd100k_det(b / "labels" / "det_20" / f"det_{s}.json",
                                                    b / "images" / "100k" / s),
            thing_classes=list(BDD100K_CLASSES), evaluator_type="coco")
        add(f"synthetic_instance_{split}", lambda s=split: load_synthetic_instances(synthetic_root, s),
            thing_classes=list(SYNTHETIC_THING_CLASSES), evaluator_type="coco")
        cs = root / "cityscapes"

        def cityscapes(s: str = split, c: Path = cs) -> list[dict[str, Any]]:
            from detectron2.data.datasets.cityscapes import load_cityscapes_instances

            return load_cityscapes_instances(str(c / "leftImg8bit" / s), str(c / "gtFine" / s), from_json=True,
                                             to_polygons=True)

        from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

        add(f"cityscapes_flowssl_instance_{split}", cityscapes, evaluator_type="cityscapes_instance",
            image_dir=str(cs / "leftImg8bit" / split), gt_dir=str(cs / "gtFine" / split),
            **{k: v for k, v in _get_builtin_metadata("cityscapes").items() if k == "thing_classes"})

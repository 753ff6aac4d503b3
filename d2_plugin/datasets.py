"""Dataset registration. Loaders that only parse files (BDD100K JSON, Cityscapes and synthetic
instance PNGs) and the label-fraction subset need no detectron2; ``register_flowssl_datasets``
puts them — and detectron2's own PASCAL VOC splits under the same root — in ``DatasetCatalog``."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pretrain.readout import SYNTHETIC_CLASSES, select_subset, subset_list_text

# FlowE §4.1: BDD100K detection with the 8 Cityscapes instance classes. BDD100K's "pedestrian"
# (det_20) / "person" (scalabel) map to person; "other person", "other vehicle", "trailer",
# "traffic light" and "traffic sign" are not among the 8 and are dropped.
BDD100K_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
BDD100K_MAP = {"pedestrian": "person", "person": "person", "rider": "rider", "car": "car", "truck": "truck",
               "bus": "bus", "train": "train", "motorcycle": "motorcycle", "motor": "motorcycle",
               "bicycle": "bicycle", "bike": "bicycle"}
SYNTHETIC_THING_CLASSES = SYNTHETIC_CLASSES[1:]  # the shapes; id 0 is the background
SYNTHETIC_THING_IDS = {c + 1: c for c in range(len(SYNTHETIC_THING_CLASSES))}  # class id (1..5) → contiguous id
log = logging.getLogger(__name__)


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file's header only — cheap enough for 70k BDD100K images.

    A header claiming more than ``MAX_IMAGE_PIXELS`` (60000×60000: a corrupt file or a decompression
    bomb) is refused here, naming the file, instead of PIL's ``DecompressionBombError`` escaping from
    detectron2's reader mid-training."""
    from pretrain.data.frames import header_size

    try:
        size = header_size(path, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except OSError as exc:
        raise OSError(f"image {path} cannot be read ({exc}); the file is truncated or not an image") from exc
    if size is None:
        raise OSError(f"image {path} cannot be read (not an image format PIL recognises); the file is truncated "
                      "or not an image")
    return size


def _box2d(box: Any, json_file: Path, frame: str) -> list[float] | None:
    """A BDD100K ``box2d`` as [x1, y1, x2, y2], or None for a zero-width/height box.

    Corrupt boxes — a coordinate missing, not a number, NaN/Inf or negative, or x2 < x1 / y2 < y1 —
    are errors naming the label file and the frame: a silently dropped or flipped box changes the
    benchmark without a trace. Zero-size boxes (x1 == x2, which the released BDD100K labels do hold,
    ucbdrive/bdd100k#4) are skipped and counted: they cover no pixel, detectron2's mapper drops them
    from training anyway, and in evaluation they would be ground truth no detection can match."""
    where = f"BDD100K label file {json_file}, frame {frame}"
    if not isinstance(box, dict):
        raise ValueError(f"{where}: box2d is {box!r}, not an object with x1, y1, x2, y2")
    coords = []
    for k in ("x1", "y1", "x2", "y2"):
        v = box.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{where}: box2d {k} is {v!r}, not a finite non-negative number ({box}); fix or remove "
                             "that label")
        coords.append(float(v))
    x1, y1, x2, y2 = coords
    if x2 < x1 or y2 < y1:
        raise ValueError(f"{where}: box2d is inverted (x1={x1:g}, y1={y1:g}, x2={x2:g}, y2={y2:g}; x2 must be >= x1 "
                         "and y2 >= y1); fix or remove that label")
    return None if x2 == x1 or y2 == y1 else coords


def load_bdd100k_det(json_file: str | Path, image_root: str | Path, height: int | None = None,
                     width: int | None = None) -> list[dict[str, Any]]:
    """BDD100K det_20 / box2d JSON → detectron2 dicts (XYXY_ABS boxes, the 8 classes).

    Each image's size is read from its header, so a resized copy of BDD100K (images and labels
    scaled together) works; labels that reach outside their image — images resized, labels not —
    are refused. ``height``/``width`` skip the header reads when every image's size is known."""
    json_file = Path(json_file)
    if not json_file.is_file():
        raise FileNotFoundError(f"BDD100K label file {json_file} does not exist")
    frames = json.loads(json_file.read_text())
    if not isinstance(frames, list):
        raise ValueError(f"BDD100K label file {json_file} holds a {type(frames).__name__}; expected a list of frames "
                         "(the det_20 / scalabel box2d format)")
    out, empty = [], []
    for i, frame in enumerate(frames):
        file_name = Path(image_root) / frame["name"]
        h, w = (height, width) if height and width else image_size(file_name)
        annos = []
        for lab in frame.get("labels") or []:
            name = BDD100K_MAP.get(lab.get("category"))
            box = lab.get("box2d")
            if name is None or box is None:
                continue
            bbox = _box2d(box, json_file, frame["name"])
            if bbox is None:
                empty.append(frame["name"])
                continue
            # 1 % slack: annotators' boxes may touch the border; a 2x downscaled image is far outside it
            if max(bbox[0], bbox[2]) > w * 1.01 + 1 or max(bbox[1], bbox[3]) > h * 1.01 + 1:
                raise ValueError(f"{json_file}: a box of {frame['name']} ({[round(v, 1) for v in bbox]}) lies outside "
                                 f"the image {file_name} ({w}x{h}): the images were resized but the labels were not. "
                                 "Scale the box2d coordinates by the same factor as the images.")
            crowd = bool((lab.get("attributes") or {}).get("crowd", False))
            annos.append({"bbox": bbox, "bbox_mode": 0,  # BoxMode.XYXY_ABS
                          "category_id": BDD100K_CLASSES.index(name), "iscrowd": int(crowd)})
        out.append({"file_name": str(file_name), "image_id": i, "height": h, "width": w, "annotations": annos})
    if empty:
        log.warning("%s: skipped %d zero-width or zero-height box(es) (first in %s)", json_file, len(empty), empty[0])
    return out


# Cityscapes' instance classes: cityscapesscripts/helpers/labels.py rows with hasInstances=True and
# ignoreInEval=False (caravan 29 and trailer 30 are instances but ignored in evaluation), in
# detectron2's order (builtin_meta.CITYSCAPES_CATEGORIES, isthing=1): labelId → contiguous id.
CITYSCAPES_THING_IDS = {24: 0, 25: 1, 26: 2, 27: 3, 28: 4, 31: 5, 32: 6, 33: 7}
CITYSCAPES_THING_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def _instances_from_id_map(inst: np.ndarray, class_of: dict[int, int]) -> list[dict[str, Any]]:
    """One annotation per id of a ``labelId·1000 + k`` map: an RLE mask and the box around it.
    Ids below 1000 that name an instance class are crowd regions ("car group"): ``iscrowd=1``, which
    detectron2's mapper drops from training and COCOeval treats as ignore regions."""
    from pycocotools import mask as mask_util

    annos = []
    for iid in np.unique(inst):
        iid = int(iid)
        label = iid // 1000 if iid >= 1000 else iid
        if label not in class_of:
            continue
        m = np.asfortranarray((inst == iid).astype(np.uint8))
        ys, xs = np.nonzero(m)
        rle = mask_util.encode(m)
        rle["counts"] = rle["counts"].decode("ascii")
        annos.append({"bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                      "bbox_mode": 0, "category_id": class_of[label], "segmentation": rle,
                      "iscrowd": int(iid < 1000)})
    return annos


def _check_image_matches(image: Path, label: Path, label_hw: tuple[int, int]) -> None:
    """The image's header (read, not decoded: a 60000×60000 claim is refused naming the file) must
    give the instance map's size — detectron2 decodes the image only later, mid-training."""
    hw = image_size(image)
    if hw != tuple(label_hw):
        raise ValueError(f"image {image} is {hw[1]}x{hw[0]} but its instance map {label} is "
                         f"{label_hw[1]}x{label_hw[0]}; they must be the same size")


def load_cityscapes_instances(image_dir: str | Path, gt_dir: str | Path) -> list[dict[str, Any]]:
    """Cityscapes instances from ``*_gtFine_instanceIds.png`` (the standard gtFine download) with RLE masks.

    detectron2's own loader cannot be used as installed: it imports
    ``deeplearning.projects.cityscapesApi.cityscapesscripts`` (facebookresearch/detectron2#5436) and
    asserts ``*_gtFine_polygons.json`` even when reading PNGs. The instance PNG is what Cityscapes'
    evaluation rasterises from the polygons, so no information is lost."""
    image_dir, gt_dir = Path(image_dir), Path(gt_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"Cityscapes image folder {image_dir} does not exist; unpack "
                                "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into <data-root>/cityscapes")
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FileNotFoundError(f"no <city>/*_leftImg8bit.png under {image_dir} (Cityscapes' leftImg8bit layout)")
    out = []
    for i, img in enumerate(images):
        inst_path = gt_dir / img.parent.name / img.name.replace("_leftImg8bit.png", "_gtFine_instanceIds.png")
        inst = cv2.imread(str(inst_path), cv2.IMREAD_UNCHANGED)
        if inst is None:
            raise FileNotFoundError(f"instance map {inst_path} is missing or unreadable; it comes with Cityscapes' "
                                    "gtFine_trainvaltest.zip (or cityscapesscripts' json2instanceImg)")
        if inst.ndim != 2 or inst.dtype != np.uint16:
            raise ValueError(f"{inst_path} is a {inst.dtype} image of shape {inst.shape}; Cityscapes instance maps are "
                             "single-channel 16-bit PNGs (labelId*1000 + k)")
        _check_image_matches(img, inst_path, inst.shape[:2])
        out.append({"file_name": str(img), "image_id": i, "height": inst.shape[0], "width": inst.shape[1],
                    "annotations": _instances_from_id_map(inst, CITYSCAPES_THING_IDS)})
    return out


def load_synthetic_instances(root: str | Path, split: str) -> list[dict[str, Any]]:
    """The synthetic video's Cityscapes layout → instance dicts with RLE masks (class·1000 + k ids)."""
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
        annos = _instances_from_id_map(inst, SYNTHETIC_THING_IDS)  # non-object pixels are 0: no annotation
        _check_image_matches(img, inst_path, inst.shape[:2])
        out.append({"file_name": str(img), "image_id": i, "height": inst.shape[0], "width": inst.shape[1],
                    "annotations": annos})
    return out


def label_subset(dicts: Sequence[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """The limited-labels training set (FlowE Table 6) by the rule both readout frameworks share
    (:mod:`pretrain.readout`: ``sha256("<seed>:<basename of file_name>")``), so the subset depends only
    on the seed, the fraction and which images exist — and mmseg trains on the same images. The kept
    dicts stay in their original order."""
    keep = select_subset([str(d["file_name"]) for d in dicts], fraction, seed, "DATASETS.LABEL_FRACTION")
    return [dicts[i] for i in keep]


def label_subset_text(subset: Sequence[dict[str, Any]], total: int, fraction: float, seed: int,
                      datasets: Sequence[str]) -> str:
    """``label_subset.txt``: a header saying how the list was drawn, then one file_name per line (sorted)."""
    return subset_list_text(sorted(str(d["file_name"]) for d in subset), total, fraction, seed, ", ".join(datasets))


def voc_root(root: Path) -> Path:
    """Where ``VOC2007``/``VOC2012`` live: ``root`` itself (detectron2's layout) or ``root/VOCdevkit``
    (the layout the VOC tarballs unpack to)."""
    if not any((root / y).is_dir() for y in ("VOC2007", "VOC2012")) and (root / "VOCdevkit").is_dir():
        return root / "VOCdevkit"
    return root


def register_flowssl_datasets(root: str | Path | None = None, synthetic_root: str | Path | None = None) -> None:
    """Register ``bdd100k_det_{train,val}``, ``cityscapes_flowssl_instance_{train,val}``,
    ``synthetic_instance_{train,val}``, and re-register detectron2's builtin ``voc_2007_*``/``voc_2012_*``
    under ``root`` — detectron2 registers those at import time from ``$DETECTRON2_DATASETS``, so a root
    given later would not reach them. Paths: ``root`` or ``$DETECTRON2_DATASETS`` (default ``datasets``);
    the synthetic data: ``synthetic_root``, else ``root/synthetic_cityscapes`` when it exists, else
    ``work_dirs/demo/data/synthetic_cityscapes`` (where ``flowssl demo`` writes it)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.builtin import register_all_pascal_voc

    root = Path(root or os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()
    if synthetic_root is None:
        synthetic_root = root / "synthetic_cityscapes"
        if not synthetic_root.is_dir():
            synthetic_root = Path("work_dirs/demo/data/synthetic_cityscapes")
    synthetic_root = Path(synthetic_root)

    def forget(name: str) -> None:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)

    def add(name: str, loader: Any, **meta: Any) -> None:
        forget(name)
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
        # COCO-style bbox/segm AP (COCOEvaluator): detectron2's CityscapesInstanceEvaluator needs the
        # same missing deeplearning.projects import as its loader.
        add(f"cityscapes_flowssl_instance_{split}",
            lambda s=split, c=cs: load_cityscapes_instances(c / "leftImg8bit" / s, c / "gtFine" / s),
            thing_classes=list(CITYSCAPES_THING_CLASSES), evaluator_type="coco",
            image_dir=str(cs / "leftImg8bit" / split), gt_dir=str(cs / "gtFine" / split))

    # detectron2's own VOC registration (load_voc_instances, evaluator_type pascal_voc) under this root
    for name in [n for n in DatasetCatalog.list() if n.startswith(("voc_2007_", "voc_2012_"))]:
        forget(name)
    register_all_pascal_voc(str(voc_root(root)))

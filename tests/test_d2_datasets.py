"""d2 dataset parsing without detectron2: Cityscapes instances from gtFine instanceIds PNGs, BDD100K
image sizes from the files, the label-fraction subset and the VOC folder layouts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from d2_plugin.datasets import (
    BDD100K_CLASSES,
    CITYSCAPES_THING_CLASSES,
    label_subset,
    label_subset_text,
    load_bdd100k_det,
    load_cityscapes_instances,
    voc_root,
)


def test_cityscapes_instances_from_the_real_instance_png(shared_data):
    from pycocotools import mask as mask_util

    cs = shared_data / "cityscapes_sample"
    dicts = load_cityscapes_instances(cs / "leftImg8bit" / "val", cs / "gtFine" / "val")
    assert len(dicts) == 1
    d = dicts[0]
    assert (d["height"], d["width"]) == (128, 256) and d["file_name"].endswith("_leftImg8bit.png")
    inst = cv2.imread(str(cs / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png"),
                      cv2.IMREAD_UNCHANGED)
    ids = [int(i) for i in np.unique(inst) if i >= 1000]  # labelId*1000 + k
    assert len(d["annotations"]) == len(ids) > 0
    for a, iid in zip(d["annotations"], ids, strict=True):
        m = mask_util.decode(a["segmentation"])
        assert np.array_equal(m.astype(bool), inst == iid)
        ys, xs = m.nonzero()
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] and a["iscrowd"] == 0
        # labelId 24 person, 26 car (cityscapesscripts' labels table)
        assert CITYSCAPES_THING_CLASSES[a["category_id"]] == {24: "person", 26: "car"}[iid // 1000]


def _cityscapes_tree(root: Path, inst: np.ndarray) -> tuple[Path, Path]:
    img_dir, gt_dir = root / "leftImg8bit" / "train", root / "gtFine" / "train"
    (img_dir / "aachen").mkdir(parents=True)
    (gt_dir / "aachen").mkdir(parents=True)
    cv2.imwrite(str(img_dir / "aachen" / "aachen_000000_000019_leftImg8bit.png"), np.zeros((*inst.shape, 3), np.uint8))
    cv2.imwrite(str(gt_dir / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png"), inst)
    return img_dir, gt_dir


def test_cityscapes_ids_crowd_regions_and_classes_ignored_in_evaluation(tmp_path):
    inst = np.full((16, 32), 7, np.uint16)  # road
    inst[0:4, 0:4] = 33002    # bicycle, instance 2
    inst[4:8, 0:4] = 26       # "car group": a crowd region
    inst[8:12, 0:4] = 29001   # caravan: an instance class, but ignoreInEval
    inst[12:16, 0:4] = 30000  # trailer: likewise
    inst[0:4, 8:12] = 31000   # train
    a = {CITYSCAPES_THING_CLASSES[x["category_id"]]: x for x in
         load_cityscapes_instances(*_cityscapes_tree(tmp_path, inst))[0]["annotations"]}
    assert set(a) == {"bicycle", "car", "train"}
    assert a["car"]["iscrowd"] == 1 and a["bicycle"]["iscrowd"] == 0 and a["train"]["bbox"] == [8, 0, 12, 4]


def test_cityscapes_missing_instance_png_names_the_file(tmp_path):
    img_dir, gt_dir = _cityscapes_tree(tmp_path, np.zeros((8, 8), np.uint16))
    next(gt_dir.rglob("*.png")).unlink()
    with pytest.raises(FileNotFoundError, match="aachen_000000_000019_gtFine_instanceIds.png is missing"):
        load_cityscapes_instances(img_dir, gt_dir)
    with pytest.raises(FileNotFoundError, match="does not exist; unpack"):
        load_cityscapes_instances(tmp_path / "nowhere", gt_dir)


def test_cityscapes_8bit_instance_map_is_refused(tmp_path):
    with pytest.raises(ValueError, match="16-bit"):
        load_cityscapes_instances(*_cityscapes_tree(tmp_path, np.zeros((8, 8), np.uint8)))


def resized_bdd100k(src: Path, root: Path, split: str, scale: float, scale_labels: bool = True) -> Path:
    """A copy of the real BDD100K det JSON under ``root`` with its images written at ``scale`` of 1280x720
    (and the boxes scaled with them unless told not to)."""
    frames = json.loads(src.read_text())
    for f in frames:
        for lab in f["labels"] or []:
            lab["box2d"] = {k: v * (scale if scale_labels else 1) for k, v in lab["box2d"].items()}
    label = root / "bdd100k" / "labels" / "det_20" / f"det_{split}.json"
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text(json.dumps(frames))
    images = root / "bdd100k" / "images" / "100k" / split
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for f in frames:
        cv2.imwrite(str(images / f["name"]), rng.integers(0, 255, (round(720 * scale), round(1280 * scale), 3),
                                                         dtype=np.uint8))
    return label


def test_bdd100k_sizes_come_from_the_images(shared_data, tmp_path):
    src = shared_data / "bdd100k_labels_sample" / "det_box2d_example.json"
    label = resized_bdd100k(src, tmp_path, "val", 0.5)
    dicts = load_bdd100k_det(label, tmp_path / "bdd100k" / "images" / "100k" / "val")
    assert [(d["height"], d["width"]) for d in dicts] == [(360, 640), (360, 640)]
    person = [lab for lab in json.loads(src.read_text())[0]["labels"] if lab["category"] == "person"][0]["box2d"]
    a = dicts[0]["annotations"][0]
    assert BDD100K_CLASSES[a["category_id"]] == "person"
    assert a["bbox"] == pytest.approx([person["x1"] / 2, person["y1"] / 2, person["x2"] / 2, person["y2"] / 2])


def test_bdd100k_resized_images_with_full_size_labels_are_refused(shared_data, tmp_path):
    src = shared_data / "bdd100k_labels_sample" / "det_box2d_example.json"
    label = resized_bdd100k(src, tmp_path, "val", 0.25, scale_labels=False)
    with pytest.raises(ValueError, match="lies outside the image .*320x180.*Scale the box2d"):
        load_bdd100k_det(label, tmp_path / "bdd100k" / "images" / "100k" / "val")


def test_bdd100k_missing_image_names_the_file(shared_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="00091078-875c1f73-0000166.jpg does not exist"):
        load_bdd100k_det(shared_data / "bdd100k_labels_sample" / "det_box2d_example.json", tmp_path)


def _dicts(n: int) -> list[dict]:
    return [{"file_name": f"/data/cityscapes/leftImg8bit/train/c/img_{i:04d}_leftImg8bit.png", "image_id": i}
            for i in range(n)]


def test_label_subset_is_a_deterministic_fraction_independent_of_order_and_root():
    dicts = _dicts(200)
    ten = label_subset(dicts, 0.1, seed=0)
    assert len(ten) == 20 and len(label_subset(dicts, 0.01, seed=0)) == 2
    names = [d["file_name"] for d in ten]
    assert names == sorted(names, key=lambda n: int(n.split("_")[1]))  # the dataset's order is kept
    shuffled = dicts[:]
    random.Random(1).shuffle(shuffled)
    assert {d["file_name"] for d in label_subset(shuffled, 0.1, seed=0)} == set(names)
    moved = [{**d, "file_name": d["file_name"].replace("/data/", "/mnt/copy/")} for d in dicts]
    assert {d["image_id"] for d in label_subset(moved, 0.1, seed=0)} == {d["image_id"] for d in ten}
    assert set(names) != {d["file_name"] for d in label_subset(dicts, 0.1, seed=1)}
    assert {d["file_name"] for d in label_subset(dicts, 0.01, seed=0)} <= set(names)  # 1 % inside 10 %
    assert label_subset(dicts, 1.0, seed=3) == dicts


def test_label_subset_keeps_at_least_one_image_and_checks_the_fraction():
    assert len(label_subset(_dicts(5), 0.01, seed=0)) == 1
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"LABEL_FRACTION must be in \(0, 1\]"):
            label_subset(_dicts(5), bad, seed=0)
    with pytest.raises(ValueError, match="empty"):
        label_subset([], 0.1, seed=0)


def test_label_subset_text_lists_the_files_under_a_header():
    sub = label_subset(_dicts(30), 0.1, seed=2)
    lines = label_subset_text(sub, 30, 0.1, 2, ["cityscapes_flowssl_instance_train"]).splitlines()
    assert lines[0].startswith("# flowssl label subset: fraction 0.1, seed 2: 3 of 30 training images")
    assert lines[2:] == sorted(d["file_name"] for d in sub)


def test_voc_root_accepts_detectron2_and_vocdevkit_layouts(tmp_path):
    (tmp_path / "a" / "VOC2007").mkdir(parents=True)
    (tmp_path / "b" / "VOCdevkit" / "VOC2012").mkdir(parents=True)
    assert voc_root(tmp_path / "a") == tmp_path / "a"
    assert voc_root(tmp_path / "b") == tmp_path / "b" / "VOCdevkit"
    assert voc_root(tmp_path / "c") == tmp_path / "c"  # absent: detectron2's layout, its error names the path

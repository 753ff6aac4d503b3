"""The paper's segmentation datasets through the tools a user runs (tools/mmseg_train.py, then
tools/mmseg_test.py): Cityscapes and BDD100K on the real samples, PASCAL VOC 2012 + aug on a VOC folder
written from the sample's real JPEGs. The R50 configs are shrunk by ``--cfg-options`` only (R14, 64×64 crops,
2 iterations) — the configs themselves run unmodified."""

from __future__ import annotations

import importlib.util
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmengine.config import Config  # noqa: E402
from PIL import Image  # noqa: E402

from .conftest import REPO  # noqa: E402
from .test_mmseg_plugin import _flowssl_checkpoint  # noqa: E402

MMSEG_CONFIGS = REPO / "configs" / "mmseg"
CITYSCAPES = MMSEG_CONFIGS / "deeplabv1_flowssl-r50-frozen_4xb2-40k_cityscapes-512x1024.py"
BDD = MMSEG_CONFIGS / "deeplabv1_flowssl-r50-frozen_8xb2-60k_bdd100k-512x1024.py"
VOC = MMSEG_CONFIGS / "deeplabv1_flowssl-r50-frozen_4xb4-20k_voc12aug-512x512.py"


def _datasets(ds: Any, prefix: str):
    """(option prefix, dataset config) of every leaf dataset under wrappers and concatenations."""
    if ds.type == "ConcatDataset":
        for i, sub in enumerate(ds.datasets):
            yield from _datasets(sub, f"{prefix}.datasets.{i}")
    elif "dataset" in ds:  # LabelFractionDataset, RepeatDataset
        yield from _datasets(ds.dataset, f"{prefix}.dataset")
    else:
        yield prefix, ds


def shrink_options(config: Path, data_root: Path, iters: int = 2, crop: tuple[int, int] = (64, 64)) -> dict:
    """``--cfg-options`` that turn a paper config into a CPU test: R14, ``crop`` crops, test images
    resized to fit 2·crop × crop, batch 1, no worker processes, ``iters`` iterations, ``data_root``."""
    cfg = Config.fromfile(str(config))
    opts: dict[str, Any] = {
        "model.backbone.arch": "resnet14", "model.data_preprocessor.size": crop, "train_cfg.max_iters": iters,
        "train_cfg.val_interval": iters, "param_scheduler.0.end": iters, "default_hooks.checkpoint.interval": iters,
        "default_hooks.logger.interval": 1, "randomness.seed": 0}
    resize = {"Resize": "scale", "RandomResize": "scale", "RandomChoiceResize": "scales", "RandomCrop": "crop_size",
              "Pad": "size"}
    for split in ("train", "val", "test"):
        loader = f"{split}_dataloader"
        opts.update({f"{loader}.batch_size": 1, f"{loader}.num_workers": 0, f"{loader}.persistent_workers": False})
        for prefix, ds in _datasets(cfg[loader].dataset, f"{loader}.dataset"):
            opts[f"{prefix}.data_root"] = str(data_root)
            for i, t in enumerate(ds.pipeline):
                if t.type in resize:
                    value = {"scales": [crop[0]], "scale": (2 * crop[1], crop[0])}.get(resize[t.type], crop)
                    opts[f"{prefix}.pipeline.{i}.{resize[t.type]}"] = value
    return opts


def cli_words(options: dict) -> list[str]:
    """``--cfg-options`` words as mmengine's DictAction parses them back: tuples ``(a,b)``, lists ``[a,b]``."""
    def fmt(v: Any) -> str:
        if isinstance(v, tuple):
            return "(" + ",".join(map(str, v)) + ")"
        return "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v)

    return [f"{k}={fmt(v)}" for k, v in options.items()]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{path}: non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _train_and_test(tmp_path: Path, config: Path, data_root: Path, **extra: Any) -> dict:
    """tools/mmseg_train.py for 2 iterations, then tools/mmseg_test.py on its checkpoint → results.json."""
    work, words = tmp_path / "work", cli_words({**shrink_options(config, data_root), **extra})
    ckpt = _flowssl_checkpoint(tmp_path)
    assert _tool("mmseg_train").main([str(config), "--work-dir", str(work), "--checkpoint", str(ckpt),
                                      "--cfg-options", *words]) == 0
    assert (work / "iter_2.pth").is_file()
    out = tmp_path / "results.json"
    assert _tool("mmseg_test").main([str(config), str(work / "iter_2.pth"), "--work-dir", str(work), "--out", str(out),
                                     "--cfg-options", *words]) == 0
    return strict_json(out)


def test_cityscapes_readout_trains_and_evaluates_on_the_real_sample(tmp_path, shared_data):
    # the sample is one real val image with its gtFine labelTrainIds; it serves as the training set too
    result = _train_and_test(tmp_path, CITYSCAPES, shared_data / "cityscapes_sample",
                             **{"train_dataloader.dataset.data_prefix.img_path": "leftImg8bit/val",
                                "train_dataloader.dataset.data_prefix.seg_map_path": "gtFine/val"})
    metrics = result["metrics"]
    assert result["config"] == CITYSCAPES.name and result["frozen"] is True
    assert 0 <= metrics["mIoU"] <= 100 and len([k for k in metrics if k.startswith("IoU.")]) == 19
    assert metrics["IoU.road"] is not None  # a Frankfurt street: road is in the ground truth


def test_bdd100k_readout_trains_and_evaluates_on_the_real_sample(tmp_path, shared_data):
    root = shared_data / "bdd100k_sample"
    result = _train_and_test(tmp_path, BDD, root)
    metrics = result["metrics"]
    assert result["config"] == BDD.name and result["frozen"] is True and result["decode_head"] == "DeepLabV1Head"
    assert 0 <= metrics["mIoU"] <= 100 and len([k for k in metrics if k.startswith("IoU.")]) == 19
    # the sample's val masks hold only 'building' (2) and 'vegetation' (8): the other 17 classes are absent from
    # the ground truth — null (mmseg's NaN) unless the 2-iteration head predicted them (then 0.0)
    from mmseg.datasets import BDD100KDataset

    present = {int(v) for p in (root / "labels/sem_seg/masks/val").glob("*.png") for v in np.unique(Image.open(p))}
    assert present == {2, 8}
    classes = BDD100KDataset.METAINFO["classes"]
    assert all(metrics[f"IoU.{classes[i]}"] is not None for i in present)
    absent = [metrics[f"IoU.{c}"] for i, c in enumerate(classes) if i not in present]
    assert set(absent) <= {None, 0.0} and absent.count(None) >= 10
    known = [v for k, v in metrics.items() if k.startswith("IoU.") and v is not None]
    assert metrics["mIoU"] == pytest.approx(sum(known) / len(known), abs=0.02)  # mmseg's nanmean


# PASCAL VOC colour palette (mmseg's PascalVOCDataset.METAINFO) for SegmentationClass PNGs
def write_voc_layout(voc2012: Path, root: Path, n_val: int = 2) -> tuple[Path, dict[str, set[int]]]:
    """A VOC2012 + aug folder from real JPEGs: ``SegmentationClass`` palette PNGs and
    ``SegmentationClassAug`` index PNGs with every annotated box filled with its class (largest first,
    so small objects stay visible), ``ImageSets/Segmentation/{train,val,aug}.txt``."""
    from mmseg.datasets import PascalVOCDataset

    classes = PascalVOCDataset.METAINFO["classes"]
    palette = [c for rgb in PascalVOCDataset.METAINFO["palette"] for c in rgb]
    stems = sorted(p.stem for p in (voc2012 / "JPEGImages").glob("*.jpg"))
    if len(stems) <= n_val:
        raise ValueError(f"{voc2012}/JPEGImages holds {len(stems)} images; need more than {n_val}")
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    labels: dict[str, set[int]] = {}
    for stem in stems:
        shutil.copy(voc2012 / "JPEGImages" / f"{stem}.jpg", root / "JPEGImages")
        tree = ET.parse(voc2012 / "Annotations" / f"{stem}.xml").getroot()
        w, h = int(tree.find("size/width").text), int(tree.find("size/height").text)
        mask = np.zeros((h, w), np.uint8)
        boxes = []
        for obj in tree.findall("object"):  # parts (head, hand, foot) are nested deeper and not classes
            b = obj.find("bndbox")
            x0, y0, x1, y1 = (int(float(b.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append(((x1 - x0) * (y1 - y0), classes.index(obj.find("name").text), x0, y0, x1, y1))
        for _, cls, x0, y0, x1, y1 in sorted(boxes, reverse=True):
            mask[y0 - 1:y1, x0 - 1:x1] = cls  # VOC boxes are 1-based, inclusive
        labels[stem] = set(np.unique(mask).tolist())
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{stem}.png")
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{stem}.png")
    train, val = stems[:-n_val], stems[-n_val:]
    for name, split in (("train", train), ("val", val), ("aug", train)):
        (root / "ImageSets/Segmentation" / f"{name}.txt").write_text("".join(f"{s}\n" for s in split))
    return root, labels


def test_voc12aug_readout_trains_and_evaluates_on_real_voc_images(tmp_path, shared_data, monkeypatch):
    voc2012 = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    # relative data_root, as mmseg's own configs have it: mmengine formats the whole config with yapf when
    # it logs and dumps it, which takes tens of seconds with pytest's long tmp paths repeated in it
    monkeypatch.chdir(tmp_path)
    root, labels = write_voc_layout(voc2012, Path("VOCdevkit/VOC2012"))
    # mmseg reads the palette PNG as class indices
    from mmseg.datasets.transforms import LoadAnnotations

    stem = sorted(labels)[0]
    loaded = LoadAnnotations()(dict(seg_map_path=str(root / "SegmentationClass" / f"{stem}.png"), seg_fields=[],
                                    reduce_zero_label=False))["gt_seg_map"]
    assert set(np.unique(loaded).tolist()) == labels[stem] and len(labels[stem]) >= 2
    result = _train_and_test(tmp_path, VOC, root)
    metrics = result["metrics"]
    assert 0 <= metrics["mIoU"] <= 100 and len([k for k in metrics if k.startswith("IoU.")]) == 21
    assert metrics["IoU.background"] is not None  # background is in every val mask

"""The readout contracts both frameworks share (pretrain.readout): one label-subset rule, one
results.json writer and reader, one arch table, one home for pixel statistics, class names — and
mmseg's backbone saying what it loaded."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from d2_plugin.datasets import SYNTHETIC_THING_CLASSES, label_subset, load_synthetic_instances
from flowssl.tables import NotMeasured, collect, render
from pretrain import readout
from pretrain.data.synthetic import write_cityscapes_layout
from pretrain.models import ResNetEncoder
from pretrain.models.encoder import ARCHS

from .conftest import REPO


@pytest.fixture(scope="module")
def twelve_root(tmp_path_factory) -> Path:
    """12 training images (3 videos × 4 frames) in the Cityscapes layout both frameworks read."""
    root = tmp_path_factory.mktemp("contracts") / "synthetic"
    return write_cityscapes_layout(root, seed=0, videos={"train": 3, "val": 1}, frames_per_video=4, height=64,
                                   width=128)


# -- limited labels ------------------------------------------------------------------------------------

def test_the_rule_is_sha256_of_seed_colon_basename():
    paths = [f"/data/{city}/{city}_{i:06d}_leftImg8bit.png" for city in ("aachen", "bonn") for i in range(25)]
    for seed, fraction in ((0, 0.1), (3, 0.3)):
        digest = {p: hashlib.sha256(f"{seed}:{os.path.basename(p)}".encode()).hexdigest() for p in paths}
        want = sorted(sorted(paths, key=digest.get)[:readout.subset_size(fraction, len(paths))])
        assert [paths[i] for i in readout.select_subset(paths, fraction, seed)] == want
    # the name is the basename: another root or folder gives the same subset
    moved = [p.replace("/data/", "/mnt/copy/leftImg8bit/train/") for p in paths]
    assert readout.select_subset(moved, 0.1, 0) == readout.select_subset(paths, 0.1, 0)


def test_equal_basenames_rank_by_path_then_position():
    assert readout.select_subset(["/voc/a.jpg", "/voc/a.jpg"], 0.5, seed=0) == [0]  # VOC's train + aug lists
    assert readout.select_subset(["/x/2/a.jpg", "/x/1/a.jpg"], 0.5, seed=0) == [1]
    twice = [{"file_name": "/voc/a.jpg", "image_id": i} for i in range(2)]
    assert label_subset(twice, 0.5, seed=0) == twice[:1]


def _mmseg_subset(dataset: dict, fraction: float, seed: int) -> list[str]:
    pytest.importorskip("mmseg")
    pytest.importorskip("mmcv.ops")
    import mmseg_plugin  # noqa: F401  (registers the datasets)
    from mmseg_plugin.label_fraction import LabelFractionDataset

    return LabelFractionDataset(dataset, fraction=fraction, seed=seed).files


def _synthetic_mmseg(root: Path) -> dict:
    return dict(type="SyntheticCityscapesDataset", data_root=str(root), pipeline=[],
                data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"))


def test_detectron2_and_mmseg_train_on_the_same_images(twelve_root):
    dicts = load_synthetic_instances(twelve_root, "train")  # what synthetic_instance_train registers
    assert len(dicts) == 12
    for seed in range(4):
        for fraction in (0.1, 0.25, 0.5, 1.0):
            d2 = {d["file_name"] for d in label_subset(dicts, fraction, seed)}
            mmseg = set(_mmseg_subset(_synthetic_mmseg(twelve_root), fraction, seed))
            assert d2 == mmseg and len(d2) == readout.subset_size(fraction, 12), (seed, fraction)


def test_label_subset_files_of_both_trainers_list_the_same_images(twelve_root, tmp_path):
    """Through each framework's own training code: detectron2's train loader and mmseg's load_cfg."""
    pytest.importorskip("detectron2")
    pytest.importorskip("mmseg")
    pytest.importorskip("mmcv.ops")
    from mmseg.registry import DATASETS

    from d2_plugin.train import Trainer, setup
    from mmseg_plugin.runner import load_cfg

    from .test_mmseg_plugin import TINY

    config = REPO / "configs/d2/mask_rcnn_flowssl_R14_C4_synthetic_tiny.yaml"
    cfg = setup(str(config), ["OUTPUT_DIR", str(tmp_path / "d2"), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS",
                              "0", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False", "DATASETS.LABEL_FRACTION", "0.25",
                              "DATASETS.LABEL_SEED", "1"], data_root=str(tmp_path), synthetic_root=str(twelve_root))
    Trainer.build_train_loader(cfg)
    d2 = readout.read_subset_list(tmp_path / "d2" / readout.LIST_FILE_NAME)
    mm = load_cfg(TINY, tmp_path / "mmseg", label_fraction=0.25, label_seed=1,
                  cfg_options={"train_dataloader.dataset.data_root": str(twelve_root)})
    DATASETS.build(mm.train_dataloader.dataset)  # the LabelFractionDataset writes its list
    listed = readout.read_subset_list(tmp_path / "mmseg" / readout.LIST_FILE_NAME)
    assert d2 == sorted(listed) and len(listed) == 3
    # one file format: the same two header lines but for the name of the training set
    heads = [(tmp_path / d / readout.LIST_FILE_NAME).read_text().splitlines()[:2] for d in ("d2", "mmseg")]
    assert heads[0][1] == heads[1][1] == f"# rule: {readout.SUBSET_RULE}"
    assert heads[0][0].split(" of ")[0] == heads[1][0].split(" of ")[0] == \
        "# flowssl label subset: fraction 0.25, seed 1: 3"


def test_the_real_loaders_give_an_image_the_same_name(shared_data):
    """VOC (detectron2's own loader against mmseg's PascalVOCDataset) and Cityscapes (flowssl's d2
    loader against mmseg's CityscapesDataset) on the real samples: same basenames, same subsets."""
    pytest.importorskip("detectron2")
    pytest.importorskip("mmseg")
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances
    from mmseg.datasets import CityscapesDataset

    from d2_plugin.datasets import load_cityscapes_instances

    voc = shared_data / "voc_sample" / "VOCdevkit" / "VOC2012"
    d2 = load_voc_instances(str(voc), "trainval", CLASS_NAMES)
    mm = dict(type="PascalVOCDataset", data_root=str(voc), ann_file="ImageSets/Main/trainval.txt", pipeline=[],
              data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"))
    assert len(d2) == 5
    for seed in range(5):
        assert {d["file_name"] for d in label_subset(d2, 0.4, seed)} == set(_mmseg_subset(mm, 0.4, seed))
    cs = shared_data / "cityscapes_sample"
    d2_cs = load_cityscapes_instances(cs / "leftImg8bit" / "val", cs / "gtFine" / "val")
    mm_cs = CityscapesDataset(data_root=str(cs), data_prefix=dict(img_path="leftImg8bit/val",
                                                                  seg_map_path="gtFine/val"), pipeline=[])
    assert readout.subset_keys([d["file_name"] for d in d2_cs]) == \
        readout.subset_keys([mm_cs.get_data_info(i)["img_path"] for i in range(len(mm_cs))])


# -- results.json --------------------------------------------------------------------------------------

def _strict(text: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_writer_stores_not_measured_as_null(tmp_path):
    path = readout.write_results({"metrics": {"mIoU": np.float32("nan"), "IoU.a": float("inf"), "aAcc": 50.0,
                                              "bbox": {"AP": float("nan")}}}, tmp_path / "r" / "results.json")
    saved = _strict(path.read_text())
    assert saved == {"metrics": {"mIoU": None, "IoU.a": None, "aAcc": 50.0, "bbox": {"AP": None}}}
    assert readout.read_results(path) == saved
    assert not list((tmp_path / "r").glob(".*tmp-*"))  # atomic: no temp file left


def test_reader_names_the_file_and_accepts_old_bare_nan(tmp_path):
    old = tmp_path / "old.json"
    old.write_text('{"metrics": {"bbox": {"AP": NaN}}}')  # what detectron2 readouts wrote before
    assert math.isnan(readout.read_results(old)["metrics"]["bbox"]["AP"])
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        readout.read_results(bad)
    bad.write_text('{"metrics": [1]}')
    with pytest.raises(ValueError, match=r"bad.json is not a readout result"):
        readout.read_results(bad)


def test_detectron2_results_with_nan_ap_are_standard_json_and_tables_read_them(tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.config import get_cfg

    from d2_plugin.config import add_flowssl_config
    from d2_plugin.train import write_results

    cfg = get_cfg()
    add_flowssl_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "results" / "flowe" / "synthetic" / "c4" / "seed0")
    ap = {"AP": float("nan"), "AP50": np.float64("nan"), "AP75": 0.0}  # no predictions: detectron2 says NaN
    path = write_results(cfg, {"bbox": ap, "segm": dict(ap)})
    assert path == Path(cfg.OUTPUT_DIR) / "results.json"
    saved = _strict(path.read_text())
    assert saved["framework"] == "detectron2" and saved["metrics"]["segm"] == {"AP": None, "AP50": None, "AP75": 0.0}
    (value,) = collect(tmp_path / "results")[("synthetic", "flowe")]["mAP"]
    assert isinstance(value, NotMeasured) and value.key == "segm.AP"
    assert "| synthetic | flowe | – | n/a | – | – |" in render(tmp_path / "results")


# -- arch table, pixel statistics, class names ----------------------------------------------------------

def test_every_framework_builds_the_archs_of_the_one_table():
    assert readout.ARCH_DEPTH == {"resnet14": 14, "resnet50": 50, "resnet101": 101, "resnet10n": 10}
    assert {a: tuple(blocks) for a, (_, blocks) in ARCHS.items()} == readout.ARCH_BLOCKS
    for arch, spec in readout.ARCH_SPECS.items():
        assert readout.arch_of_blocks(spec.blocks, spec.block, spec.width) == arch
        enc = ResNetEncoder(arch, 8)
        assert enc.out_channels == spec.out_channels and enc.conv1.out_channels == spec.width
        assert {k: v.shape[1] for k, v in enc.forward_stages(torch.zeros(1, 3, 32, 32)).items()} == spec.stage_channels
    assert readout.ARCH_SPECS["resnet10n"].stage_channels == {"stem": 16, "layer1": 16, "layer2": 32, "layer3": 64,
                                                              "layer4": 128}
    # mmseg keys layouts by depth: one depth, one (block, blocks)
    by_depth = {s.depth: (s.block, s.blocks) for s in readout.ARCH_SPECS.values()}
    assert len(by_depth) == len(readout.ARCH_SPECS)
    assert readout.arch_of_blocks((3, 8, 36, 3)) is None
    assert readout.arch_of_blocks((1, 1, 1, 1), "basic", 64) is None
    assert readout.D2_ARCHS == ("resnet14", "resnet50", "resnet101") and readout.d2_arch_error("resnet50") is None
    assert "resnet10n (basic blocks, widths 16-128) cannot be built by detectron2" in readout.d2_arch_error("resnet10n")
    from d2_plugin.export import d2_config_hints
    from pretrain.convert import Encoder

    enc = Encoder(ResNetEncoder("resnet14", 8).state_dict(), "flowssl", "")
    assert enc.arch == "resnet14" and d2_config_hints(enc)["MODEL.RESNETS.DEPTH"] == 14
    assert d2_config_hints(enc)["MODEL.PIXEL_MEAN"] == [round(m * 255, 3) for m in readout.IMAGENET_MEAN]


def test_mmseg_and_detectron2_read_the_one_arch_table():
    pytest.importorskip("mmseg")
    pytest.importorskip("mmcv.ops")
    from mmseg_plugin.backbone import FlowsslResNet

    for arch, spec in readout.ARCH_SPECS.items():
        assert FlowsslResNet.arch_settings[spec.depth][1] == spec.blocks
        mm = FlowsslResNet(arch=arch, output_stride=32)
        assert mm.depth == spec.depth and mm.block.__name__ == {"bottleneck": "Bottleneck", "basic": "BasicBlock"}[
            spec.block] and mm.feat_dim == spec.out_channels
    if importlib.util.find_spec("detectron2") is not None:
        from d2_plugin import config, modeling

        assert config.ARCH_DEPTH is readout.ARCH_DEPTH and modeling.ARCH_BLOCKS is readout.ARCH_BLOCKS
        assert config.D2_DEPTHS == [14, 50, 101]  # the narrow arch is refused, not built as a stock R-10


def test_pixel_statistics_and_synthetic_classes_have_one_home():
    from pretrain.data.augment import normalize
    from pretrain.data.synthetic import CLASSES

    assert tuple(normalize().mean) == readout.IMAGENET_MEAN and tuple(normalize().std) == readout.IMAGENET_STD
    assert CLASSES is readout.SYNTHETIC_CLASSES and SYNTHETIC_THING_CLASSES == readout.SYNTHETIC_CLASSES[1:]


# -- mmseg's backbone says what it loaded ---------------------------------------------------------------

def test_mmseg_backbone_checkpoint_logs_what_it_loaded(tmp_path):
    pytest.importorskip("mmseg")
    pytest.importorskip("mmcv.ops")
    from mmengine.logging import MMLogger

    from mmseg_plugin.backbone import FlowsslResNet

    torch.manual_seed(0)
    enc = ResNetEncoder("resnet14", 8)
    ckpt = tmp_path / "flowe.pth"
    torch.save({"encoder": enc.state_dict(), "meta": {"method": "flowe", **enc.meta}, "model": {}}, ckpt)
    log_file = tmp_path / "run.log"
    MMLogger.get_instance(f"readout-contracts-{tmp_path.name}", log_file=str(log_file))  # the current logger
    FlowsslResNet(arch="resnet14", checkpoint=str(ckpt)).init_weights()
    lines = [line for line in log_file.read_text().splitlines() if "FlowsslResNet: loaded" in line]
    assert len(lines) == 1
    assert f"loaded {len(enc.state_dict())} encoder tensors from {ckpt} (layout flowssl, method flowe, " \
           "arch resnet14)" in lines[0]

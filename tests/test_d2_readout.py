"""d2 readouts end to end through ``tools/d2_train_net.py`` (2 iterations, R14, tiny images) on the real
samples — Cityscapes Mask R-CNN, VOC with a 10 % label fraction, BDD100K — plus detectron2's stock
``train_net.py`` configs reading a converted checkpoint through the fragment ``flowssl convert`` writes."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from d2_plugin.export import convert
from pretrain.models import ResNetEncoder
from pretrain.readout import IMAGENET_MEAN as PIXEL_MEAN_01
from pretrain.readout import IMAGENET_STD as PIXEL_STD_01

from .conftest import REPO
from .test_d2_datasets import resized_bdd100k
from .test_d2_plugin import _pkl

# R14, images of 128 px, one image per batch, few proposals: each run is seconds on one CPU thread.
# A fixed seed, and every detection kept: an untrained head may score all boxes below 0.05, and
# detectron2 reports NaN AP when nothing is detected.
TINY = ["SEED", "0", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "MODEL.FLOWSSL.ARCH", "resnet14", "MODEL.RESNETS.DEPTH", "14", "MODEL.DEVICE", "cpu",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
        "SOLVER.IMS_PER_BATCH", "1", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST",
        "50", "DATALOADER.NUM_WORKERS", "0"]


@pytest.fixture(scope="module")
def tool() -> types.ModuleType:
    """``tools/d2_train_net.py`` as a module: its parser and its ``main``, what ``launch`` runs per process."""
    pytest.importorskip("detectron2")
    spec = importlib.util.spec_from_file_location("d2_train_net", REPO / "tools" / "d2_train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tool: types.ModuleType, config: str, data_root: Path, out: Path, *opts: str) -> dict:
    args = tool.argument_parser().parse_args(["--config-file", str(REPO / "configs" / "d2" / config), "--data-root",
                                              str(data_root), *TINY, "OUTPUT_DIR", str(out), *opts])
    return tool.main(args)


def _cityscapes_root(shared_data: Path, tmp_path: Path) -> Path:
    """<root>/cityscapes with train and val both the real sample's val folders (links, nothing copied)."""
    cs = tmp_path / "data" / "cityscapes"
    for kind in ("leftImg8bit", "gtFine"):
        (cs / kind).mkdir(parents=True)
        for split in ("train", "val"):
            (cs / kind / split).symlink_to(shared_data / "cityscapes_sample" / kind / "val")
    return cs.parent


def test_cityscapes_mask_rcnn_trains_and_reports_segm_and_bbox_ap_once(tool, shared_data, tmp_path, monkeypatch):
    from d2_plugin.train import Trainer

    calls = []
    test = Trainer.test.__func__
    monkeypatch.setattr(Trainer, "test", classmethod(lambda cls, *a, **k: calls.append(1) or test(cls, *a, **k)))
    out = tmp_path / "out"
    results = _run(tool, "mask_rcnn_flowssl_R50_C4_cityscapes_frozen.yaml", _cityscapes_root(shared_data, tmp_path),
                   out, "MODEL.WEIGHTS", str(_pkl(tmp_path)))
    assert len(calls) == 1  # the EvalHook's evaluation after the last iteration, reused for results.json
    saved = json.loads((out / "results.json").read_text())
    for task in ("bbox", "segm"):
        assert 0 <= results[task]["AP"] <= 100 and saved["metrics"][task]["AP50"] == results[task]["AP50"]
        assert "AP-person" in results[task] and "AP-car" in results[task]
    assert (out / "model_final.pth").is_file() and saved["method"] == "flowe" and saved["label_fraction"] == 1.0


def test_cityscapes_ground_truth_as_predictions_scores_100_ap(shared_data, tmp_path):
    """The loader's masks, boxes and classes agree with the evaluator's ground truth — AP would
    drop for a shifted box, a wrong class id or a mask in another encoding."""
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog
    from detectron2.structures import Boxes, Instances
    from pycocotools import mask as mask_util

    from d2_plugin.train import Trainer, setup

    cfg = setup(str(REPO / "configs/d2/mask_rcnn_flowssl_R50_C4_cityscapes_frozen.yaml"),
                ["OUTPUT_DIR", str(tmp_path / "out")], data_root=str(_cityscapes_root(shared_data, tmp_path)))
    evaluator = Trainer.build_evaluator(cfg, "cityscapes_flowssl_instance_val")
    evaluator.reset()
    for d in DatasetCatalog.get("cityscapes_flowssl_instance_val"):
        pred = Instances((d["height"], d["width"]))
        pred.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in d["annotations"]]))
        pred.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
        pred.scores = torch.ones(len(d["annotations"]))
        pred.pred_masks = torch.as_tensor(np.stack([mask_util.decode(a["segmentation"]) for a in d["annotations"]]))
        evaluator.process([d], [{"instances": pred}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100) and results["segm"]["AP"] == pytest.approx(100)


def test_voc_data_root_and_a_10_percent_label_subset(tool, shared_data, tmp_path):
    from d2_plugin.train import Trainer, setup

    voc = shared_data / "voc_sample"  # the VOCdevkit layout; <root>/VOC2007 works too
    results = _run(tool, "faster_rcnn_flowssl_R50_C4_voc0712_frozen.yaml", voc, tmp_path / "out",
                   "DATASETS.LABEL_FRACTION", "0.1")
    assert set(results["bbox"]) == {"AP", "AP50", "AP75"}  # PASCAL VOC evaluator on voc_2007_test
    lines = (tmp_path / "out" / "label_subset.txt").read_text().splitlines()
    assert lines[0].startswith("# flowssl label subset: fraction 0.1, seed 0: 1 of 10 training images of "
                               "voc_2007_trainval, voc_2012_trainval")
    assert len(lines) == 3 and Path(lines[2]).is_file() and "/VOCdevkit/VOC20" in lines[2]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (saved["label_fraction"], saved["label_seed"]) == (0.1, 0)

    def listed(seed: int) -> list[str]:  # the trainer's own train loader writes the list again
        out = tmp_path / f"seed{seed}"
        cfg = setup(str(REPO / "configs/d2/faster_rcnn_flowssl_R50_C4_voc0712_frozen.yaml"),
                    [*TINY, "OUTPUT_DIR", str(out), "DATASETS.LABEL_FRACTION", "0.1", "DATASETS.LABEL_SEED", str(seed)],
                    data_root=str(voc))
        Trainer.build_train_loader(cfg)
        return (out / "label_subset.txt").read_text().splitlines()[2:]

    assert listed(0) == lines[2:]
    assert len({tuple(listed(seed)) for seed in range(1, 6)} | {tuple(lines[2:])}) > 1  # the seed matters


def test_bdd100k_detection_on_resized_images(tool, shared_data, tmp_path):
    src = shared_data / "bdd100k_labels_sample" / "det_box2d_example.json"
    for split in ("train", "val"):
        resized_bdd100k(src, tmp_path / "data", split, 0.5)  # 640x360 images, labels scaled with them
    results = _run(tool, "faster_rcnn_flowssl_R50_C4_bdd100k_frozen.yaml", tmp_path / "data", tmp_path / "out")
    assert 0 <= results["bbox"]["AP"] <= 100 and "AP-person" in results["bbox"]


@pytest.mark.parametrize(("opts", "message"), [
    (["DATASETS.TRAIN", "('cityscapes_fine_instance_seg_train',)"], "detectron2#5436"),
    (["DATASETS.TEST", "('cityscapes_val',)"], "'cityscapes_val' is not registered"),
    (["DATASETS.LABEL_FRACTION", "10.0"], r"LABEL_FRACTION must be in \(0, 1\] \(0.01 for 1 %\), got 10.0"),
])
def test_unusable_datasets_are_refused_before_training(tmp_path, opts, message):
    pytest.importorskip("detectron2")
    from d2_plugin.train import ConfigError, _cityscapes_scripts_importable, setup

    if "5436" in message and _cityscapes_scripts_importable():
        pytest.skip("this detectron2 has the cityscapesscripts import")
    with pytest.raises(ConfigError, match=message):
        setup(str(REPO / "configs/d2/mask_rcnn_flowssl_R50_C4_cityscapes_frozen.yaml"), opts, data_root=str(tmp_path))


def test_stock_train_net_config_with_the_convert_fragment_reads_the_encoder(tmp_path):
    """detectron2's own R50-C4 model-zoo config + the YAML ``flowssl convert`` writes = the encoder's
    features; without the fragment the same weights give other features (silently)."""
    pytest.importorskip("detectron2")
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    enc = ResNetEncoder("resnet50", 32).eval()
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"encoder": enc.state_dict(), "meta": {"method": "flowe", **enc.meta}, "model": {}}, tmp_path / "f.pth")
    side = convert(tmp_path / "f.pth", "detectron2", tmp_path / "f.pkl")
    fragment = Path(side["detectron2_yaml"])
    assert fragment == tmp_path / "f.yaml"
    stock = model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")
    # what the README tells a user: uncomment _BASE_ and point it at the model-zoo config
    text = fragment.read_text()
    assert '# _BASE_: "<detectron2>/configs/COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"' in text
    user = tmp_path / "train.yaml"
    user.write_text(text.replace('# _BASE_: "<detectron2>/configs/COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"',
                                 f'_BASE_: "{stock}"'))

    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # RGB
    x = (torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255 - torch.tensor(PIXEL_MEAN_01)[:, None, None]) \
        / torch.tensor(PIXEL_STD_01)[:, None, None]  # the pretraining normalisation

    def stock_model(config: str, opts: list[str]) -> tuple[torch.Tensor, torch.nn.Module]:
        """detectron2's train_net setup (no flowssl keys) and weight loading; the input as it normalises it."""
        cfg = get_cfg()
        cfg.merge_from_file(config)
        cfg.merge_from_list([*opts, "MODEL.DEVICE", "cpu"])
        model = build_model(cfg).eval()
        DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        pixels = image if cfg.INPUT.FORMAT == "RGB" else image[:, :, ::-1]  # as detectron2's loader reads it
        return model.preprocess_image([{"image": torch.as_tensor(pixels.transpose(2, 0, 1).copy())}]).tensor, model

    def features(model: torch.nn.Module, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res4 = model.backbone(inp)["res4"]
        return res4, model.roi_heads.res5(res4)  # res5 lives in the C4 ROI head

    with torch.no_grad():
        # input: RGB and pixel statistics (float32 rounding of two ways to normalise: ~5e-7)
        inp, model = stock_model(str(user), [])
        torch.testing.assert_close(inp, x, atol=1e-5, rtol=0)
        # network: stride in the 3x3, FrozenBN, every weight in place (random R50 activations reach ~10^2,
        # so the same input is fed to both: a 5e-7 input difference would grow to ~1e-3)
        ours = enc.forward_stages(inp)
        res4, res5 = features(model, inp)
        torch.testing.assert_close(res4, ours["layer3"], atol=1e-4, rtol=0)
        torch.testing.assert_close(res5, ours["layer4"], atol=1e-4, rtol=0)
        # the stock config alone loads the same file without complaint, but normalises as MSRA (BGR, std 1)
        # and strides the 1x1 conv
        inp, model = stock_model(stock, ["MODEL.WEIGHTS", str(tmp_path / "f.pkl")])
        assert (inp - x).abs().max() > 10
        res4, _ = features(model, x)
        ours = enc.forward_stages(x)
        assert (res4 - ours["layer3"]).norm() > 0.1 * ours["layer3"].norm()


def test_convert_writes_no_fragment_where_stock_detectron2_has_no_such_resnet(tmp_path):
    torch.save({"encoder": ResNetEncoder("resnet14", 8).state_dict(), "meta": {"method": "flowe"}, "model": {}},
               tmp_path / "f.pth")
    side = convert(tmp_path / "f.pth", "detectron2", tmp_path / "f.pkl")
    assert side["detectron2_yaml"] is None and not (tmp_path / "f.yaml").exists()


def yaml_tuple(text: str) -> list[str]:
    """A yacs tuple string ``("a", "b")`` (or a list) as names."""
    return [n.strip(" '\"") for n in str(text).strip("()[]").split(",") if n.strip(" '\"")]


def test_data_root_reaches_every_dataset_the_configs_name(tmp_path):
    """detectron2 registers VOC at import from $DETECTRON2_DATASETS; --data-root must still reach it,
    like BDD100K, Cityscapes and the synthetic video: each loader reads under the root or names a path there."""
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog

    from d2_plugin.train import setup
    from pretrain.data.synthetic import write_cityscapes_layout

    from .test_d2_plugin import D2_CONFIGS, _resolved

    root = tmp_path / "root"
    write_cityscapes_layout(root / "synthetic_cityscapes", seed=0, videos={"train": 1, "val": 1}, frames_per_video=1)
    names = set()
    for path in D2_CONFIGS:
        datasets = _resolved(path).get("DATASETS", {})
        names |= {n for key in ("TRAIN", "TEST") for n in yaml_tuple(datasets.get(key, "()"))}
        setup(str(path), data_root=str(root))
    assert {"voc_2007_trainval", "voc_2012_trainval", "voc_2007_test", "bdd100k_det_train", "bdd100k_det_val",
            "cityscapes_flowssl_instance_train", "synthetic_instance_val"} <= names
    for name in sorted(names):
        try:
            dicts = DatasetCatalog.get(name)
        except (FileNotFoundError, OSError) as exc:
            assert str(root) in str(exc), f"{name}: {exc}"
        else:
            assert dicts and all(d["file_name"].startswith(str(root)) for d in dicts), name

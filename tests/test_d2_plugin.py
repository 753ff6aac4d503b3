"""d2 plugin: configs and BDD100K conversion without detectron2; training, freezing, equivalence
and evaluation with it (skipped when detectron2 is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from d2_plugin.datasets import BDD100K_CLASSES, load_bdd100k_det, load_synthetic_instances
from d2_plugin.export import convert
from pretrain.data.synthetic import write_cityscapes_layout
from pretrain.models import ResNetEncoder

from .conftest import REPO

D2_CONFIGS = sorted((REPO / "configs" / "d2").glob("*.yaml"))


def _resolved(path: Path) -> dict:
    """A yaml config merged with its _BASE_ chain (plain dict merge, as detectron2 does)."""
    data = yaml.safe_load(path.read_text())
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    merged = _resolved(path.parent / base)

    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) else v
        return a

    return merge(merged, data)


@pytest.mark.parametrize("path", D2_CONFIGS, ids=lambda p: p.stem)
def test_config_text(path):
    cfg = _resolved(path)
    assert cfg["MODEL"]["BACKBONE"]["NAME"] in ("build_flowssl_resnet_backbone", "build_flowssl_resnet_fpn_backbone")
    assert cfg["INPUT"]["FORMAT"] == "RGB" and cfg["MODEL"]["PIXEL_MEAN"] == [123.675, 116.28, 103.53]
    assert cfg["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
    if "C4" in path.stem:
        assert cfg["MODEL"]["ROI_HEADS"]["NAME"] == "FlowsslRes5ROIHeads"
    if "frozen" in path.stem:
        assert cfg["MODEL"]["FLOWSSL"]["FROZEN"] is True and cfg["MODEL"]["RESNETS"]["NORM"] == "FrozenBN"
    if "finetune" in path.stem:
        assert cfg["MODEL"]["FLOWSSL"]["FROZEN"] is False
    if "bdd100k" in path.stem:  # §4.2: 12 epochs, batch 16, lr 0.02, steps at epochs 8 and 11
        s = cfg["SOLVER"]
        assert (s["IMS_PER_BATCH"], s["BASE_LR"], s["MAX_ITER"]) == (16, 0.02, 12 * 70000 // 16)
        assert yaml.safe_load(str(s["STEPS"]).replace("(", "[").replace(")", "]")) == [8 * 4375, 11 * 4375]
    if "cityscapes" in path.stem:  # §4.4: 64 epochs, batch 8, lr 0.01, step at 56
        s = cfg["SOLVER"]
        assert (s["IMS_PER_BATCH"], s["BASE_LR"]) == (8, 0.01) and cfg["MODEL"]["MASK_ON"] is True


def test_bdd100k_json_to_detectron2_dicts(shared_data):
    src = shared_data / "bdd100k_labels_sample" / "det_box2d_example.json"
    dicts = load_bdd100k_det(src, "/images", height=720, width=1280)  # sizes given: no image headers read
    assert len(dicts) == 2 and dicts[0]["file_name"] == "/images/00091078-875c1f73-0000166.jpg"
    annos = [a for d in dicts for a in d["annotations"]]
    assert len(annos) == 1  # "person" kept as class person; "other person" is not among the 8 classes
    a = annos[0]
    assert BDD100K_CLASSES[a["category_id"]] == "person" and a["bbox_mode"] == 0
    import json

    raw = [lab for f in json.loads(src.read_text()) for lab in f["labels"] or [] if lab["category"] == "person"][0]
    assert a["bbox"] == [raw["box2d"]["x1"], raw["box2d"]["y1"], raw["box2d"]["x2"], raw["box2d"]["y2"]]


def test_missing_bdd100k_labels_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="det_train.json does not exist"):
        load_bdd100k_det(tmp_path / "det_train.json", tmp_path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("d2") / "synthetic"
    return write_cityscapes_layout(root, seed=0, videos={"train": 3, "val": 1}, frames_per_video=2)


def test_synthetic_instances_have_boxes_around_their_masks(synthetic):
    from pycocotools import mask as mask_util

    dicts = load_synthetic_instances(synthetic, "train")
    assert len(dicts) == 6 and all(d["annotations"] for d in dicts)
    for a in dicts[0]["annotations"]:
        m = mask_util.decode(a["segmentation"])
        ys, xs = m.nonzero()
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] and 0 <= a["category_id"] < 5


# -- with detectron2 -----------------------------------------------------------------------------

def _d2():
    return pytest.importorskip("detectron2")


def _pkl(tmp_path: Path, os_: int = 8) -> Path:
    torch.manual_seed(0)
    enc = ResNetEncoder("resnet14", os_)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"encoder": enc.state_dict(), "meta": {"method": "flowe", **enc.meta}, "model": {}}, tmp_path / "f.pth")
    convert(tmp_path / "f.pth", "detectron2", tmp_path / "f.pkl")
    return tmp_path / "f.pkl"


@pytest.mark.parametrize("path", D2_CONFIGS, ids=lambda p: p.stem)
def test_every_config_builds(path, tmp_path):
    _d2()
    from detectron2.modeling import build_model

    from d2_plugin.train import setup

    cfg = setup(str(path), ["MODEL.FLOWSSL.ARCH", "resnet14", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "",
                            "MODEL.DEVICE", "cpu"], data_root=str(tmp_path))
    model = build_model(cfg)
    encoder_params = [p for n, p in model.named_parameters() if n.startswith(("backbone.bottom_up", "roi_heads.res5"))
                      or (n.startswith("backbone.") and "fpn" not in n and "bottom_up" not in cfg.MODEL.BACKBONE.NAME
                          and "fpn" not in cfg.MODEL.BACKBONE.NAME)]
    assert encoder_params and all(p.requires_grad != cfg.MODEL.FLOWSSL.FROZEN for p in encoder_params)


@pytest.mark.parametrize(("os_", "dilations"), [(8, ("2", "4")), (32, ("1", "1"))])
def test_backbone_features_equal_the_pretrain_encoder(tmp_path, os_, dilations):
    _d2()
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from d2_plugin.train import setup

    pkl = _pkl(tmp_path, os_)
    cfg = setup(str(REPO / "configs/d2/faster_rcnn_flowssl_R14_C4_synthetic_tiny.yaml"),
                ["MODEL.WEIGHTS", str(pkl), "MODEL.FLOWSSL.RES4_DILATION", dilations[0],
                 "MODEL.FLOWSSL.RES5_DILATION", dilations[1]], data_root=str(tmp_path))
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53] and cfg.MODEL.FLOWSSL.METHOD == "flowe"
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(str(pkl))
    enc = ResNetEncoder("resnet14", os_)
    enc.load_state_dict(torch.load(tmp_path / "f.pth", weights_only=True)["encoder"])
    enc.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = enc.forward_stages(x)
        res4 = model.backbone(x)["res4"]
        res5 = model.roi_heads.res5(res4)
    torch.testing.assert_close(res4, ours["layer3"], atol=1e-4, rtol=0)
    torch.testing.assert_close(res5, ours["layer4"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_readout_trains_only_rpn_and_box_heads(tmp_path, synthetic, frozen):
    _d2()
    from d2_plugin.train import Trainer, setup

    cfg = setup(str(REPO / "configs/d2/mask_rcnn_flowssl_R14_C4_synthetic_tiny.yaml"),
                ["MODEL.WEIGHTS", str(_pkl(tmp_path)), "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path / "out"),
                 "MODEL.FLOWSSL.FROZEN", str(frozen), "MODEL.RESNETS.NORM", "FrozenBN" if frozen else "BN",
                 "DATASETS.TEST", "()"],
                data_root=str(tmp_path), synthetic_root=str(synthetic))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    encoder = {k for k in state if k.startswith(("backbone.", "roi_heads.res5."))}
    assert any(k.startswith("proposal_generator.rpn_head") for k in changed)
    assert any(k.startswith("roi_heads.box_predictor") for k in changed)
    assert any(k.startswith("roi_heads.mask_head") for k in changed)
    if frozen:
        assert not (changed & encoder)  # weights and BN statistics, res5 included
        assert any(k.startswith("roi_heads.res5.") and k.endswith("running_var") for k in encoder)
    else:
        assert any(k.startswith("roi_heads.res5.") for k in changed & encoder)


def test_evaluation_produces_ap(tmp_path, synthetic):
    _d2()
    import json

    from d2_plugin.train import evaluate, setup

    cfg = setup(str(REPO / "configs/d2/faster_rcnn_flowssl_R14_C4_synthetic_tiny.yaml"),
                ["MODEL.WEIGHTS", str(_pkl(tmp_path)), "OUTPUT_DIR", str(tmp_path / "out")],
                data_root=str(tmp_path), synthetic_root=str(synthetic))
    results = evaluate(cfg)
    assert {"AP", "AP50", "AP75"} <= set(results["bbox"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["framework"] == "detectron2" and saved["frozen"] is True and "AP50" in saved["metrics"]["bbox"]


def test_detectron2_refuses_the_narrow_encoder(tmp_path):
    """resnet10n (basic blocks at widths 16-128) has no detectron2 build: a sidecar naming it, or
    MODEL.FLOWSSL.ARCH set to it, is one error naming the arch (never a stock R-18 built instead)."""
    import json

    from d2_plugin.config import checkpoint_hints
    from pretrain.config import ConfigError

    (tmp_path / "w.pkl.json").write_text(json.dumps({"arch": "resnet10n", "detectron2_config": {}}))
    with pytest.raises(ConfigError, match=r"arch resnet10n \(basic blocks.*cannot be built by detectron2"):
        checkpoint_hints(tmp_path / "w.pkl")
    (tmp_path / "w.pkl.json").write_text(json.dumps({"arch": "resnet50", "detectron2_config": {
        "MODEL.RESNETS.DEPTH": 10}}))
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.DEPTH' is 10, expected one of \[14, 50, 101\]"):
        checkpoint_hints(tmp_path / "w.pkl")
    _d2()
    from detectron2.modeling import build_model

    from d2_plugin.train import setup

    cfg = setup(str(REPO / "configs/d2/faster_rcnn_flowssl_R14_C4_synthetic_tiny.yaml"),
                ["MODEL.FLOWSSL.ARCH", "resnet10n", "MODEL.DEVICE", "cpu"], data_root=str(tmp_path))
    with pytest.raises(KeyError, match="MODEL.FLOWSSL.ARCH: arch resnet10n"):
        build_model(cfg)

"""mmseg plugin: configs build, frozen readout really is frozen, evaluation writes the tables' JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmengine.config import Config  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import mmseg_plugin  # noqa: E402,F401
from mmseg_plugin.runner import load_cfg, run_test, run_train  # noqa: E402
from pretrain.data.synthetic import write_cityscapes_layout  # noqa: E402
from pretrain.models import ResNetEncoder  # noqa: E402

from .conftest import REPO, tiny_poodle  # noqa: E402

register_all_modules()
CONFIGS = sorted((REPO / "configs" / "mmseg").glob("*.py"))
TINY = REPO / "configs" / "mmseg" / "deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"
NARROW = REPO / "configs" / "mmseg" / "deeplabv1_flowssl-r10n-frozen_1xb4-300_synthetic-64x128.py"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_builds(path):
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports == {"imports": ["mmseg_plugin"], "allow_failed_imports": False}
    assert cfg.model.data_preprocessor.mean == [123.675, 116.28, 103.53] and cfg.model.data_preprocessor.bgr_to_rgb
    assert cfg.val_evaluator.type == "PerClassIoUMetric"
    if "r50" in path.stem:
        cfg.model.backbone.arch = "resnet14"  # building R50 adds nothing to the check
    if cfg.model.backbone.norm_cfg.type == "SyncBN":
        cfg.model.backbone.norm_cfg.type = "BN"
    model = MODELS.build(cfg.model)
    head_params = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    if "deeplabv1" in path.stem:
        assert head_params == ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]  # one 1×1 conv
    frozen = [p.requires_grad for p in model.backbone.parameters()]
    assert (not any(frozen)) if "frozen" in path.stem else all(frozen)


def _flowssl_checkpoint(tmp_path: Path, arch: str = "resnet14") -> Path:
    torch.manual_seed(0)
    enc = ResNetEncoder(arch, 8)
    path = tmp_path / ("flowssl.pth" if arch == "resnet14" else f"flowssl_{arch}.pth")
    torch.save({"encoder": enc.state_dict(), "meta": {"method": "rand_init", **enc.meta}, "model": {}}, path)
    return path


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mmseg") / "synthetic"
    return write_cityscapes_layout(root, seed=0, videos={"train": 2, "val": 1}, frames_per_video=2)


def _cfg(tmp_path, data_root, config=TINY, iters=3, arch="resnet14", **options):
    opts = {"train_cfg.max_iters": iters, "train_cfg.val_interval": iters, "param_scheduler.0.end": iters,
            "default_hooks.checkpoint.interval": iters, "default_hooks.logger.interval": 1,
            "train_dataloader.batch_size": 2, **options}
    for split in ("train", "val", "test"):
        opts[f"{split}_dataloader.dataset.data_root"] = str(data_root)
    return load_cfg(config, tmp_path / "work", _flowssl_checkpoint(tmp_path, arch), opts)


def _backbone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_readout_leaves_backbone_bit_identical(tmp_path, synthetic_root, frozen):
    cfg = _cfg(tmp_path, synthetic_root, **{"model.backbone.frozen": frozen})
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    runner._init_model_weights() if hasattr(runner, "_init_model_weights") else runner.model.init_weights()
    before = _backbone_state(runner.model)
    head_before = runner.model.decode_head.conv_seg.weight.clone()
    # the backbone starts from the flowssl checkpoint
    enc = torch.load(tmp_path / "flowssl.pth", weights_only=True)["encoder"]
    assert torch.equal(before["layer4.0.conv2.weight"], enc["layer4.0.conv2.weight"])
    runner.train()
    after = _backbone_state(runner.model)
    changed = [k for k in before if not torch.equal(before[k], after[k]) and "num_batches" not in k]
    assert not torch.equal(head_before, runner.model.decode_head.conv_seg.weight)
    if frozen:
        assert changed == []  # weights *and* BN running statistics
    else:
        assert any("running_mean" in k for k in changed) and any(k.endswith("conv1.weight") for k in changed)


@pytest.mark.parametrize("arch", ["resnet14", "resnet10n"])
def test_backbone_features_equal_the_pretrain_encoder(tmp_path, arch):
    ckpt = _flowssl_checkpoint(tmp_path, arch)
    mm = MODELS.build(dict(type="FlowsslResNet", arch=arch, output_stride=8, frozen=True, checkpoint=str(ckpt)))
    mm.init_weights()
    mm.eval()
    enc = ResNetEncoder(arch, 8)
    enc.load_state_dict(torch.load(ckpt, weights_only=True)["encoder"])
    enc.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = enc.forward_stages(x)
        theirs = mm(x)
    for name, t in zip(("layer1", "layer2", "layer3", "layer4"), theirs, strict=True):
        torch.testing.assert_close(t, ours[name], atol=1e-5, rtol=0)


def test_narrow_readout_config_reads_the_narrow_encoder(tmp_path, synthetic_root):
    """The resnet10n readout: its head takes layer4's 128 channels, and the trained backbone is the checkpoint's."""
    cfg = _cfg(tmp_path, synthetic_root, config=NARROW, iters=2, arch="resnet10n")
    assert cfg.model.backbone.arch == "resnet10n" and cfg.model.decode_head.in_channels == 128
    model = run_train(cfg).model
    enc = torch.load(tmp_path / "flowssl_resnet10n.pth", weights_only=True)["encoder"]
    assert torch.equal(model.backbone.layer4[0].conv1.weight, enc["layer4.0.conv1.weight"])
    assert model.decode_head.conv_seg.weight.shape == (6, 128, 1, 1)


def test_evaluation_writes_miou_and_per_class_iou(tmp_path, synthetic_root):
    cfg = _cfg(tmp_path, synthetic_root)
    run_train(cfg)
    ckpt = Path(cfg.work_dir) / "iter_3.pth"
    assert ckpt.is_file()
    result = run_test(_cfg(tmp_path, synthetic_root), str(ckpt), tmp_path / "res.json")
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved == result and saved["frozen"] is True and saved["decode_head"] == "DeepLabV1Head"
    assert {"aAcc", "mIoU", "mAcc", "IoU.background", "IoU.cross"} <= set(saved["metrics"])
    assert 0 <= saved["metrics"]["mIoU"] <= 100


def test_trains_on_real_cityscapes_sample(tmp_path, shared_data):
    root = shared_data / "cityscapes_sample"

    def real(cfg):
        for split in ("train", "val", "test"):
            ds = cfg[f"{split}_dataloader"]["dataset"]
            ds.type = "CityscapesDataset"  # the real 19 classes
            ds.data_prefix = dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val")
        cfg.model.decode_head.num_classes = 19

    cfg = load_cfg(TINY, tmp_path / "w", _flowssl_checkpoint(tmp_path),
                   {"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "param_scheduler.0.end": 2,
                    "default_hooks.checkpoint.interval": 2, "train_dataloader.batch_size": 1,
                    **{f"{s}_dataloader.dataset.data_root": str(root) for s in ("train", "val", "test")}},
                   modify=real)
    runner = run_train(cfg)
    assert (Path(cfg.work_dir) / "iter_2.pth").is_file()
    assert runner.model.decode_head.conv_seg.out_channels == 19


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth does not exist"):
        load_cfg(TINY, tmp_path, str(tmp_path / "nope.pth"))


class _Foreign:
    """A class no mmengine checkpoint contains."""


def test_resume_and_the_guarded_checkpoint_loader(tmp_path, synthetic_root):
    from mmseg_plugin.checkpoint import load_local_checkpoint

    run_train(_cfg(tmp_path, synthetic_root, iters=2))
    cfg = _cfg(tmp_path, synthetic_root, iters=4)
    runner = run_train(cfg, resume=True)  # mmengine's own checkpoint, loaded under torch's weights_only default
    assert runner.iter == 4 and (Path(cfg.work_dir) / "iter_4.pth").is_file()
    torch.save({"state_dict": {}, "evil": _Foreign()}, tmp_path / "foreign.pth")
    with pytest.raises(RuntimeError, match="refusing to unpickle"):
        load_local_checkpoint(str(tmp_path / "foreign.pth"), "cpu")


# -- PooDLe read out through its spatial decoder (issue 21.6) --------------------------------------------

DECODER_TINY = REPO / "configs" / "mmseg" / "deeplabv1_flowssl-r14-poodle-decoder-frozen_1xb4-300_synthetic-64x128.py"


def _poodle_checkpoint(tmp_path: Path, channels: int = 64) -> tuple[Path, torch.nn.Module]:
    model = tiny_poodle(channels)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics: eval mode must use them
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "poodle.pth"
    torch.save({"encoder": model.encoder.state_dict(), "model": model.state_dict(),
                "meta": {"method": "poodle", **model.encoder.meta}}, path)
    return path, model.eval()


@pytest.mark.parametrize("converted", [False, True])
def test_decoder_backbone_returns_poodles_dense_map(tmp_path, converted):
    """From a PooDLe pretraining checkpoint or its `--with-decoder` export, the backbone's last output is
    the pretrained D(f(x)) — the map PooDLe's dense loss was trained on — at stride 8, frozen."""
    from pretrain.convert import convert

    ckpt, model = _poodle_checkpoint(tmp_path)
    if converted:
        convert(ckpt, "mmseg", tmp_path / "export.pth", with_decoder=True)
        ckpt = tmp_path / "export.pth"
    mm = MODELS.build(dict(type="FlowsslResNet", arch="resnet14", output_stride=32, frozen=True,
                           checkpoint=str(ckpt), decoder=dict(channels=64, hidden_factor=0.5)))
    mm.init_weights()
    mm.train()  # a frozen readout keeps BN (decoder's too) in eval mode even in train mode
    assert not any(p.requires_grad for p in mm.parameters())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = model.decoder(model.encoder.forward_stages(x))
        outs = mm(x)
    assert len(outs) == 5 and outs[4].shape[-2:] == (8, 12)
    torch.testing.assert_close(outs[4], want, atol=1e-5, rtol=0)


def test_decoder_backbone_refuses_a_mismatched_or_missing_decoder(tmp_path):
    ckpt, _ = _poodle_checkpoint(tmp_path)
    mm = MODELS.build(dict(type="FlowsslResNet", arch="resnet14", output_stride=32, checkpoint=str(ckpt),
                           decoder=dict(channels=128, hidden_factor=0.5)))
    with pytest.raises(RuntimeError, match="poodle.pth holds a spatial decoder .*'channels': 64.*set model.backbone"):
        mm.init_weights()
    from pretrain.fileio import CheckpointError

    mm = MODELS.build(dict(type="FlowsslResNet", arch="resnet14", output_stride=32,
                           checkpoint=str(_flowssl_checkpoint(tmp_path)), decoder=dict(channels=64)))
    with pytest.raises(CheckpointError, match="flowssl.pth holds no spatial decoder"):
        mm.init_weights()


def test_readout_through_the_decoder_trains_and_says_so_in_results(tmp_path, synthetic_root):
    ckpt, model = _poodle_checkpoint(tmp_path)
    opts = {"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "param_scheduler.0.end": 2,
            "default_hooks.checkpoint.interval": 2, "train_dataloader.batch_size": 2,
            "model.backbone.decoder.channels": 64, "model.decode_head.in_channels": 64,
            **{f"{s}_dataloader.dataset.data_root": str(synthetic_root) for s in ("train", "val", "test")}}
    cfg = load_cfg(DECODER_TINY, tmp_path / "work", str(ckpt), opts)
    runner = run_train(cfg)
    dec = runner.model.backbone.decoder.state_dict()
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in dec.items())  # frozen: untouched
    result = run_test(load_cfg(DECODER_TINY, tmp_path / "work", str(ckpt), opts),
                      str(Path(cfg.work_dir) / "iter_2.pth"), tmp_path / "res.json")
    assert result["backbone_readout"] == "encoder+decoder"
    assert json.loads((tmp_path / "res.json").read_text())["backbone_readout"] == "encoder+decoder"

"""Conversion is exact: one random checkpoint, the same network built three (or four) ways."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torchvision.models import resnet50

from pretrain.cli import main
from pretrain.convert import convert, d2_to_torchvision_name, read_encoder, torchvision_to_d2_name
from pretrain.fileio import CheckpointError
from pretrain.models import ResNetEncoder

STAGES = ("layer1", "layer2", "layer3", "layer4")


def _random_encoder(arch: str, os_: int, seed: int = 0) -> ResNetEncoder:
    """Random weights *and* random BN statistics, so eval-mode outputs depend on every buffer."""
    torch.manual_seed(seed)
    enc = ResNetEncoder(arch, os_)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def _flowssl_ckpt(tmp_path, enc: ResNetEncoder) -> str:
    path = tmp_path / "flowssl.pth"
    torch.save({"encoder": enc.state_dict(), "meta": {"method": "flowe", **enc.meta}, "model": {}}, path)
    return str(path)


@pytest.mark.parametrize("os_", [8, 32])
def test_flowssl_torchvision_mmseg_stage_outputs_agree(tmp_path, os_):
    mmseg_models = pytest.importorskip("mmseg.models")
    enc = _random_encoder("resnet50", os_)
    src = _flowssl_ckpt(tmp_path, enc)
    convert(src, "torchvision", tmp_path / "tv.pth")
    convert(src, "mmseg", tmp_path / "mm.pth")

    dil = {8: [False, True, True], 32: [False, False, False]}[os_]
    tv = resnet50(replace_stride_with_dilation=dil)
    missing, unexpected = tv.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    tv.eval()

    mm = mmseg_models.backbones.ResNet(
        depth=50, strides=(1, 2, 1, 1) if os_ == 8 else (1, 2, 2, 2),
        dilations=(1, 1, 2, 4) if os_ == 8 else (1, 1, 1, 1),
        contract_dilation=True, style="pytorch", out_indices=(0, 1, 2, 3),
        init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "mm.pth")))
    mm.init_weights()
    mm.eval()

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = enc.forward_stages(x)
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        theirs_tv = {}
        for s in STAGES:
            t = getattr(tv, s)(t)
            theirs_tv[s] = t
        theirs_mm = dict(zip(STAGES, mm(x), strict=True))
    stride = {8: 8, 32: 32}[os_]
    assert ours["layer4"].shape[-2:] == (64 // stride, 96 // stride)
    for s in STAGES:
        torch.testing.assert_close(theirs_tv[s], ours[s], atol=1e-4, rtol=0, msg=f"torchvision {s}")
        torch.testing.assert_close(theirs_mm[s], ours[s], atol=1e-4, rtol=0, msg=f"mmseg {s}")


def test_torchvision_to_detectron2_and_back_is_identical(tmp_path):
    tv = _random_encoder("resnet14", 32)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    side = convert(tmp_path / "tv.pth", "detectron2", tmp_path / "d2.pkl")
    with open(tmp_path / "d2.pkl", "rb") as f:
        d2 = pickle.load(f)
    assert d2["__author__"] == "flowssl" and d2["matching_heuristics"] is True
    assert {"stem.conv1.weight", "stem.conv1.norm.running_var", "res2.0.shortcut.weight", "res2.0.shortcut.norm.bias",
            "res5.0.conv3.norm.weight"} <= set(d2["model"])
    assert side["source_layout"] == "torchvision" and side["detectron2_config"]["INPUT.FORMAT"] == "RGB"
    assert side["detectron2_config"]["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    convert(tmp_path / "d2.pkl", "torchvision", tmp_path / "back.pth")
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    for k, v in tv.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        assert torch.equal(back[k], v), k


def test_name_maps_are_inverse():
    for name in ResNetEncoder("resnet50", 32).state_dict():
        d2 = torchvision_to_d2_name(name)
        if d2 is not None:
            assert d2_to_torchvision_name(d2) == name


@pytest.mark.parametrize(("layout", "prefix", "heads"), [
    ("moco", "module.encoder_q.", ["module.encoder_q.fc.0.weight", "module.encoder_k.conv1.weight"]),
    ("byol", "online_network.encoder.", ["online_network.projector.net.0.weight", "target_network.x"]),
    ("torchvision", "", ["fc.weight", "fc.bias"]),
])
def test_released_ssl_layouts_are_detected(tmp_path, layout, prefix, heads, capsys):
    state = ResNetEncoder("resnet50", 32).state_dict()
    ckpt = {f"{prefix}{k}": v for k, v in state.items()}
    ckpt.update({h: torch.zeros(1) for h in heads})
    torch.save({"state_dict": ckpt, "epoch": 200}, tmp_path / "release.pth.tar")
    with pytest.raises(CheckpointError, match="outside the ResNet trunk.*--drop-heads"):
        read_encoder(tmp_path / "release.pth.tar")
    enc = read_encoder(tmp_path / "release.pth.tar", drop_heads=True)
    assert enc.layout == layout and enc.prefix == prefix and enc.arch == "resnet50" and set(enc.state) == set(state)
    assert main(["convert", str(tmp_path / "release.pth.tar"), "--to", "mmseg", "-o", str(tmp_path / "o.pth"),
                 "--drop-heads"]) == 0
    assert f"{layout} layout" in capsys.readouterr().out
    side = json.loads((tmp_path / "o.pth.json").read_text())
    assert side["dropped_keys"] == len(heads) and len(side["sha256"]) == 64


def test_bad_checkpoints_get_clear_errors(tmp_path, capsys):
    enc = _random_encoder("resnet14", 8)
    src = _flowssl_ckpt(tmp_path, enc)
    data = open(src, "rb").read()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 3])
    assert main(["convert", str(tmp_path / "trunc.pth"), "--to", "mmseg", "-o", str(tmp_path / "o.pth")]) == 2
    assert "trunc.pth cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists() and not list(tmp_path.glob(".o.pth*"))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing to load builtins.print"):
        read_encoder(tmp_path / "evil.pkl")

    state = enc.state_dict()
    del state["layer4.0.conv2.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing.*--allow-missing"):
        convert(tmp_path / "partial.pth", "torchvision", tmp_path / "p.pth")
    side = convert(tmp_path / "partial.pth", "torchvision", tmp_path / "p.pth", allow_missing=True)
    assert side["missing_keys"] == ["layer4.0.conv2.weight"]

    torch.save({"foo": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="no ResNet trunk found"):
        read_encoder(tmp_path / "foreign.pth")

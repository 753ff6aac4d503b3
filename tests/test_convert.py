"""Conversion is exact: one random checkpoint, the same network built three (or four) ways."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from torchvision.models import resnet50

from d2_plugin.export import convert
from flowssl.cli import main
from pretrain.convert import d2_to_torchvision_name, read_encoder, torchvision_to_d2_name
from pretrain.fileio import CheckpointError
from pretrain.models import ResNetEncoder

from .conftest import tiny_poodle

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


@pytest.mark.parametrize("os_", [8, 32])
def test_narrow_encoder_converts_to_torchvision_and_mmseg_exactly(tmp_path, os_):
    """resnet10n (basic blocks at widths 16-128): the converted files rebuild the same features in
    torchvision names and through mmseg's own ResNet and BasicBlock, loaded by mmseg's Pretrained init."""
    mmseg_models = pytest.importorskip("mmseg.models")
    enc = _random_encoder("resnet10n", os_)
    src = _flowssl_ckpt(tmp_path, enc)
    assert convert(src, "torchvision", tmp_path / "tv.pth")["arch"] == "resnet10n"
    convert(src, "mmseg", tmp_path / "mm.pth")
    tv = ResNetEncoder("resnet10n", os_)
    tv.load_state_dict(torch.load(tmp_path / "tv.pth", weights_only=True))  # strict: torchvision's names
    assert read_encoder(tmp_path / "tv.pth").arch == "resnet10n"  # told apart from resnet14 without metadata

    class MMResNet10(mmseg_models.backbones.ResNet):
        arch_settings = {10: (mmseg_models.backbones.resnet.BasicBlock, (1, 1, 1, 1))}

    mm = MMResNet10(depth=10, stem_channels=16, base_channels=16, strides=(1, 2, 1, 1) if os_ == 8 else (1, 2, 2, 2),
                    dilations=(1, 1, 2, 4) if os_ == 8 else (1, 1, 1, 1), contract_dilation=True, style="pytorch",
                    out_indices=(0, 1, 2, 3), init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "mm.pth")))
    mm.init_weights()
    mm.eval()  # mmseg's ResNet.train returns None
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = enc.forward_stages(x)
        theirs_tv = tv.eval().forward_stages(x)
        theirs_mm = dict(zip(STAGES, mm(x), strict=True))
    assert ours["layer4"].shape[1:] == (128, 64 // os_, 96 // os_)
    for s in STAGES:
        torch.testing.assert_close(theirs_tv[s], ours[s], atol=0, rtol=0, msg=f"torchvision {s}")
        torch.testing.assert_close(theirs_mm[s], ours[s], atol=1e-5, rtol=0, msg=f"mmseg {s}")


def test_arch_detection_tells_narrow_from_bottleneck_and_detectron2_refuses_narrow(tmp_path, capsys):
    for arch in ("resnet14", "resnet10n"):  # both have one block per stage
        torch.save(ResNetEncoder(arch, 32).state_dict(), tmp_path / f"{arch}.pth")
        assert read_encoder(tmp_path / f"{arch}.pth").arch == arch
    src = _flowssl_ckpt(tmp_path, _random_encoder("resnet10n", 8))
    assert main(["convert", src, "--to", "detectron2", "-o", str(tmp_path / "d2.pkl")]) == 2
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert first.startswith("flowssl: error: --to detectron2: arch resnet10n (basic blocks")
    assert "--to mmseg" in first
    assert not list(tmp_path.glob("d2.pkl*")) and not list(tmp_path.glob(".d2.pkl*"))


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


# -- PooDLe's spatial decoder (issue 21.6) ---------------------------------------------------------------


def _poodle_ckpt(tmp_path, channels: int = 64) -> tuple[str, torch.nn.Module]:
    """A PooDLe pretraining checkpoint as the trainer writes it (encoder, full model, meta)."""
    model = tiny_poodle(channels)
    with torch.no_grad():
        for p in model.decoder.parameters():  # decoder and target decoder differ: the export takes the online one
            p.add_(0.1)
    path = tmp_path / "poodle.pth"
    torch.save({"encoder": model.encoder.state_dict(), "model": model.state_dict(),
                "meta": {"method": "poodle", **model.encoder.meta}}, path)
    return str(path), model


def test_poodle_export_with_decoder_carries_the_online_decoder(tmp_path, capsys):
    src, model = _poodle_ckpt(tmp_path)
    out = tmp_path / "poodle_mmseg.pth"
    assert main(["convert", src, "--to", "mmseg", "-o", str(out), "--with-decoder"]) == 0
    assert "hidden_factor=0.5" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert saved["meta"]["readout"] == "encoder+decoder"
    assert saved["decoder"]["config"] == {"channels": 64, "hidden_factor": 0.5,
                                          "stages": ("layer2", "layer3", "layer4")}
    want = model.decoder.state_dict()
    assert saved["decoder"]["state_dict"].keys() == want.keys()
    assert all(torch.equal(saved["decoder"]["state_dict"][k], v) for k, v in want.items())
    assert not torch.equal(saved["decoder"]["state_dict"]["blocks.0.conv1.weight"],
                           model.target_decoder.state_dict()["blocks.0.conv1.weight"])
    side = json.loads((tmp_path / "poodle_mmseg.pth.json").read_text())
    assert side["decoder"]["channels"] == 64 and side["keys_out"] == len(saved["state_dict"]) + len(want)
    # the default stays the encoder alone
    convert(src, "mmseg", tmp_path / "enc.pth")
    plain = torch.load(tmp_path / "enc.pth", weights_only=True)
    assert "decoder" not in plain and plain["meta"]["readout"] == "encoder"


def test_with_decoder_refuses_what_has_no_decoder_or_cannot_hold_one(tmp_path, capsys):
    src = _flowssl_ckpt(tmp_path, _random_encoder("resnet14", 8))
    assert main(["convert", src, "--to", "mmseg", "-o", str(tmp_path / "x.pth"), "--with-decoder"]) == 2
    err = capsys.readouterr().err
    first = err.strip().splitlines()[0]  # the one-line error (a --debug hint follows)
    assert first.startswith("flowssl: error: ") and "flowssl.pth holds no spatial decoder" in first
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.pth.json").exists()
    poodle, _ = _poodle_ckpt(tmp_path)
    with pytest.raises(CheckpointError, match="--with-decoder writes MMSegmentation files only"):
        convert(poodle, "torchvision", tmp_path / "y.pth", with_decoder=True)
    assert not (tmp_path / "y.pth").exists()

"""Code execution through what the *frameworks* do with what flowssl hands them (issue 20, items 1-3).

Each test plants the exact hostile input, first proves the payload really runs where it is not guarded
(so the test is not vacuous), then asserts the marker file is never created, the exit code, the
one-line message naming the file, and what is left on disk.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from d2_plugin.export import convert, d2_stock_fragment
from flowssl.cli import main
from pretrain.convert import SAFE_NAME, Encoder, checked_meta
from pretrain.fileio import CheckpointError
from pretrain.models import ResNetEncoder

from .conftest import REPO
from .test_faults import _Exec

HOSTILE_METHOD = "flowe)\nPWN: !!python/object/apply:os.system [{cmd!r}]\n# ("


def _encoder_state(arch: str = "resnet50") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return ResNetEncoder(arch, 32).state_dict()


def _one_line(text: str, prefix: str = "") -> str:
    """The error message: one line (the CLI's fixed "--debug" hint aside; with ``prefix``, the one line
    the tool writes among the frameworks' own warnings), and no traceback."""
    lines = [line for line in text.strip().splitlines() if line.strip() and "--debug" not in line
             and line.startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


# -- 1. YAML injection into the stock-detectron2 fragment ---------------------------------------------

def test_the_hostile_method_name_is_live_yaml_when_written_unescaped(tmp_path):
    """What the old fragment did (method inside a ``#`` comment): the newline makes a key that
    ``yaml.unsafe_load`` (detectron2's fallback) runs. Proves the payload of the next tests is real."""
    marker = tmp_path / "pwned"
    text = f"# fragment ({HOSTILE_METHOD.format(cmd=f'touch {marker}')}, resnet50)\nMODEL: {{}}\n"
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(text)
    yaml.unsafe_load(text)
    assert marker.is_file()


@pytest.mark.parametrize("container", ["pth", "pkl"])
def test_convert_refuses_a_hostile_method_name(tmp_path, capsys, container):
    marker = tmp_path / "pwned"
    method = HOSTILE_METHOD.format(cmd=f"touch {marker}")
    src = tmp_path / f"evil.{container}"
    if container == "pth":
        torch.save({"encoder": _encoder_state(), "meta": {"method": method, "arch": "resnet50", "output_stride": 32},
                    "model": {}}, src)
    else:  # a detectron2 pickle as flowssl writes it, with hostile __flowssl_meta__
        side = convert(_saved_flowssl(tmp_path), "detectron2", tmp_path / "good.pkl")
        assert side["method"] == "flowe"
        with open(tmp_path / "good.pkl", "rb") as f:
            payload = pickle.load(f)
        payload["__flowssl_meta__"]["method"] = method
        with open(src, "wb") as f:
            pickle.dump(payload, f)
    out = tmp_path / "out.pkl"
    assert main(["convert", str(src), "--to", "detectron2", "-o", str(out)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert str(src) in err and "'method'" in err and "plain name" in err
    assert not out.exists() and not out.with_suffix(".yaml").exists() and not Path(f"{out}.json").exists()
    assert not marker.exists()


def _saved_flowssl(tmp_path: Path, method: str = "flowe", arch: str = "resnet50") -> Path:
    path = tmp_path / f"{method}_{arch}.pth"
    torch.save({"encoder": _encoder_state(arch), "meta": {"method": method, "arch": arch, "output_stride": 8,
                                                          "config": "print('never read')"}, "model": {}}, path)
    return path


def test_the_fragment_is_exactly_the_data_it_means(tmp_path):
    """Written by a YAML emitter: ``safe_load`` gives back exactly these keys (nothing from the file
    becomes a key), so detectron2's unsafe fallback is never reached; comments are fixed text."""
    # a weights path with YAML syntax in it stays a string
    out = tmp_path / "we: ird # [x]" / "f.pkl"
    side = convert(_saved_flowssl(tmp_path), "detectron2", out)
    text = Path(side["detectron2_yaml"]).read_text()
    data = yaml.safe_load(text)
    assert data == {
        "MODEL": {"WEIGHTS": str(out.resolve()), "PIXEL_MEAN": [123.675, 116.28, 103.53],
                  "PIXEL_STD": [58.395, 57.12, 57.375],
                  "RESNETS": {"DEPTH": 50, "STRIDE_IN_1X1": False, "NORM": "FrozenBN", "RES5_DILATION": 1}},
        "INPUT": {"FORMAT": "RGB"}}
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert all("we: ird" not in line for line in comments)
    # a hand-made Encoder (not read through read_encoder) is still checked
    with pytest.raises(CheckpointError, match="plain name"):
        d2_stock_fragment(Encoder(_encoder_state(), "flowssl", "", {"method": "a\nb: 1"}), out)


@pytest.mark.parametrize(("key", "value"), [("method", "a b"), ("method", 3), ("arch", "resnet50\n"),
                                            ("output_stride", 7), ("output_stride", True),
                                            ("pixel_mean", [0.5, 0.5]), ("pixel_std", [0.2, 0.0, 0.2]),
                                            ("pixel_mean", ["0.4", 0.4, 0.4]), ("config_name", "../x\n"),
                                            ("input_format", "!!python/name:os.system")])
def test_checked_meta_refuses_each_bad_value_naming_the_key(key, value):
    with pytest.raises(CheckpointError, match=f"metadata '{key}'"):
        checked_meta("c.pth", {key: value})


def test_checked_meta_keeps_only_what_flowssl_uses():
    meta = {"method": "flow_similarity", "arch": "resnet14", "output_stride": 8, "pixel_mean": (0.4, 0.5, 0.6),
            "config": "import os", "iteration": 3, "anything": object()}
    assert checked_meta("c.pth", meta) == {"method": "flow_similarity", "arch": "resnet14", "output_stride": 8,
                                           "pixel_mean": [0.4, 0.5, 0.6]}
    assert SAFE_NAME.fullmatch("poodle") and not SAFE_NAME.fullmatch("flowe)\n")


def test_d2_plugin_config_loading_never_takes_the_unsafe_path(tmp_path):
    """``tools/d2_train_net.py --config-file evil.yaml``: detectron2's own merge (allow_unsafe=True)
    runs the tag; the plugin's refuses it with one line naming the file, exit 2."""
    pytest.importorskip("detectron2")
    from detectron2.config import get_cfg

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"MODEL:\n  DEVICE: cpu\nPWN: !!python/object/apply:os.system [{str(f'touch {marker}')!r}]\n")
    with pytest.raises(KeyError):  # detectron2's default: unsafe_load runs the payload, then the key is unknown
        get_cfg().merge_from_file(str(evil))
    assert marker.is_file()
    marker.unlink()
    base = tmp_path / "user.yaml"  # the payload one _BASE_ down
    base.write_text(f"_BASE_: {str(evil)!r}\n")
    for config in (evil, base):
        r = _run([str(REPO / "tools/d2_train_net.py"), "--config-file", str(config)], tmp_path)
        assert r.returncode == 2, r.stderr[-2000:]
        err = _one_line(r.stderr, "d2_train_net: error: ")
        assert str(evil) in err and "not plain YAML" in err
        assert not marker.exists()


# -- 2. mmseg resume executes the checkpoint's meta.config ----------------------------------------------

def _config_payload(marker: Path) -> str:
    return f"gpu_ids = [0]\nopen({str(marker)!r}, 'w').write('pwned')\n"


def test_mmengine_executes_config_text_from_a_checkpoint(tmp_path):
    """What ``Runner.resume`` does with ``meta['config']`` — the payload below is live."""
    pytest.importorskip("mmengine")
    from mmengine.config import Config

    marker = tmp_path / "pwned"
    Config.fromstring(_config_payload(marker), ".py")
    assert marker.is_file()


def test_the_mmengine_loader_drops_every_config_text(tmp_path):
    pytest.importorskip("mmseg")
    from mmengine.runner.checkpoint import CheckpointLoader

    import mmseg_plugin  # noqa: F401  (registers the loader)

    marker = tmp_path / "pwned"
    payload = _config_payload(marker)
    torch.save({"meta": {"config": payload, "cfg": payload, "iter": 2, "dataset_meta": {"classes": ["a"]}},
                "message_hub": {"runtime_info": {"cfg": payload, "iter": 2}, "log_scalars": {}},
                "state_dict": {"w": torch.ones(1)}}, tmp_path / "c.pth")
    back = CheckpointLoader.load_checkpoint(str(tmp_path / "c.pth"), map_location="cpu")
    assert back["meta"] == {"iter": 2, "dataset_meta": {"classes": ["a"]}}
    assert back["message_hub"] == {"runtime_info": {"iter": 2}, "log_scalars": {}}
    assert torch.equal(back["state_dict"]["w"], torch.ones(1)) and not marker.exists()


@pytest.fixture(scope="module")
def mmseg_run(tmp_path_factory):
    """A finished 2-iteration readout (mmengine's own iter_2.pth) to plant payloads into."""
    pytest.importorskip("mmseg")
    pytest.importorskip("mmcv.ops")
    from pretrain.data.synthetic import write_cityscapes_layout

    from .test_mmseg_plugin import _cfg, run_train

    root = tmp_path_factory.mktemp("exec_mmseg")

    data = write_cityscapes_layout(root / "synthetic", seed=0, videos={"train": 2, "val": 1}, frames_per_video=2)
    cfg = _cfg(root, data, iters=2)
    run_train(cfg)
    return root, data, Path(cfg.work_dir), cfg.model.backbone.checkpoint


def _plant(src: Path, dst: Path, marker: Path) -> None:
    from mmseg_plugin.checkpoint import load_mmengine_checkpoint

    ckpt = load_mmengine_checkpoint(src)
    ckpt["meta"]["config"] = _config_payload(marker)  # plain strings: passes any weights_only allow-list
    torch.save(ckpt, dst)


TINY_MMSEG = REPO / "configs/mmseg/deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"


def _mmseg_options(data: Path, backbone: str, iters: int = 3) -> list[str]:
    opts = [f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}", f"param_scheduler.0.end={iters}",
            f"default_hooks.checkpoint.interval={iters}", "train_dataloader.batch_size=2",
            f"model.backbone.checkpoint={backbone}"]
    return opts + [f"{s}_dataloader.dataset.data_root={data}" for s in ("train", "val", "test")]


def test_mmseg_train_resume_with_load_from_never_executes_meta_config(mmseg_run, tmp_path):
    """Route 1: ``tools/mmseg_train.py --resume --cfg-options load_from=evil.pth``."""
    root, data, work, backbone = mmseg_run
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    _plant(work / "iter_2.pth", evil, marker)
    r = _run([str(REPO / "tools/mmseg_train.py"), str(TINY_MMSEG), "--work-dir", str(tmp_path / "w"), "--resume",
              "--cfg-options", *_mmseg_options(data, backbone), f"load_from={evil}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not marker.exists()
    assert (tmp_path / "w" / "iter_3.pth").is_file()  # it resumed from iteration 2 and trained one more


def test_a_planted_last_checkpoint_never_executes_meta_config(mmseg_run, tmp_path):
    """Route 2: an ``iter_N.pth`` + ``last_checkpoint`` planted in a shared work dir, resumed by
    MMSegmentation's *own* ``tools/train.py --resume`` (the plugin imported by the config's
    custom_imports); and mmengine's CheckpointLoader hands back no config text."""
    import mmseg
    from mmengine.runner.checkpoint import CheckpointLoader

    root, data, work, backbone = mmseg_run
    marker = tmp_path / "pwned"
    shared = tmp_path / "shared_work"
    shared.mkdir()
    _plant(work / "iter_2.pth", shared / "iter_2.pth", marker)
    (shared / "last_checkpoint").write_text(str(shared / "iter_2.pth"))
    assert "config" not in CheckpointLoader.load_checkpoint(str(shared / "iter_2.pth"), map_location="cpu")["meta"]
    train = Path(mmseg.__file__).parent / ".mim" / "tools" / "train.py"
    if not train.is_file():
        pytest.skip(f"mmseg's tools are not installed at {train}")
    r = _run([str(train), str(TINY_MMSEG), "--work-dir", str(shared), "--resume", "--cfg-options",
              *_mmseg_options(data, backbone)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not marker.exists()
    assert (shared / "iter_3.pth").is_file()


# -- 3. detectron2's .pyth branch and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD ---------------------------------

@pytest.fixture
def force_unsafe_env(monkeypatch):
    """The commonly set variable that makes a bare ``torch.load`` unpickle anything."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def _evil_torch_file(path: Path, marker: Path, key: str = "model_state") -> Path:
    torch.save({key: {"w": _Exec(f"open({str(marker)!r}, 'w').write('pwned')")}}, path)
    return path


def test_the_environment_variable_makes_a_bare_torch_load_run_code(tmp_path, force_unsafe_env):
    marker = tmp_path / "pwned"
    with open(_evil_torch_file(tmp_path / "evil.pyth", marker), "rb") as f:
        torch.load(f)  # what detectron2's .pyth branch calls
    assert marker.is_file()


@pytest.mark.parametrize("suffix", [".pyth", ".pth", ".pkl", ".bin", ""])
def test_detectron2_weights_of_every_suffix_go_through_the_safe_loader(tmp_path, force_unsafe_env, suffix):
    pytest.importorskip("detectron2")
    from torch import nn

    from d2_plugin.checkpoint import SafeDetectionCheckpointer

    marker = tmp_path / "pwned"
    src = tmp_path / f"evil{suffix}"
    if suffix == ".pkl":
        with open(src, "wb") as f:
            pickle.dump({"model": {"w": _Exec(f"open({str(marker)!r}, 'w').write('pwned')")}, "__author__": "x"}, f)
    else:
        _evil_torch_file(src, marker)
    with pytest.raises(CheckpointError, match="refusing") as info:
        SafeDetectionCheckpointer(nn.Linear(2, 2)).load(str(src))
    assert str(src) in str(info.value)
    assert not marker.exists()


def test_a_pyth_file_of_plain_weights_still_loads(tmp_path, force_unsafe_env):
    pytest.importorskip("detectron2")
    from torch import nn

    from d2_plugin.checkpoint import SafeDetectionCheckpointer

    model = nn.Linear(2, 2)
    torch.save({"model_state": {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}}, tmp_path / "ok.pyth")
    SafeDetectionCheckpointer(model).load(str(tmp_path / "ok.pyth"))
    assert torch.equal(model.weight, torch.ones(2, 2))
    torch.save({"weights": {}}, tmp_path / "bad.pyth")
    with pytest.raises(CheckpointError, match="model_state"):
        SafeDetectionCheckpointer(model).load(str(tmp_path / "bad.pyth"))


def test_flowssl_loaders_ignore_the_environment_variable(tmp_path, force_unsafe_env, capsys):
    from .test_faults import _payloads

    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": _payloads(marker)["reduce"]}}, src)
    assert main(["convert", str(src), "--to", "mmseg", "-o", str(tmp_path / "o.pth")]) == 2
    assert "refusing" in capsys.readouterr().err and not marker.exists()
    if pytest.importorskip("mmseg"):
        from mmseg_plugin.checkpoint import load_mmengine_checkpoint

        with pytest.raises(CheckpointError, match="refusing"):
            load_mmengine_checkpoint(src)
    assert not marker.exists()


# -- 13 (d2 part). tools/d2_train_net.py: one line, exit 2 ---------------------------------------------

D2_CONFIG = REPO / "configs/d2/faster_rcnn_flowssl_R14_C4_synthetic_tiny.yaml"


@pytest.fixture(scope="module")
def d2_synthetic(tmp_path_factory) -> Path:
    from pretrain.data.synthetic import write_cityscapes_layout

    return write_cityscapes_layout(tmp_path_factory.mktemp("exec_d2") / "synthetic", seed=0,
                                   videos={"train": 1, "val": 1}, frames_per_video=2)


def _d2(tmp_path: Path, synthetic: Path, *opts: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return _run([str(REPO / "tools/d2_train_net.py"), "--config-file", str(D2_CONFIG), "--data-root",
                 str(tmp_path / "data"), "--synthetic-root", str(synthetic), *opts, "SOLVER.MAX_ITER", "1",
                 "OUTPUT_DIR", str(tmp_path / "out")], tmp_path, env)


def test_d2_train_net_bad_weights_one_line_exit_2(tmp_path, d2_synthetic):
    pytest.importorskip("detectron2")
    marker = tmp_path / "pwned"
    string_pkl = tmp_path / "string.pkl"
    with open(string_pkl, "wb") as f:
        pickle.dump("model blobs", f)
    good = convert(_saved_flowssl(tmp_path, arch="resnet14"), "detectron2", tmp_path / "good.pkl")
    assert good["arch"] == "resnet14"
    cases = {
        "missing": (tmp_path / "nope.pkl", "does not exist"),
        "string": (string_pkl, "holds a str"),
        "pyth": (_evil_torch_file(tmp_path / "evil.pyth", marker), "refusing"),
    }
    for name, (weights, expected) in cases.items():
        r = _d2(tmp_path, d2_synthetic, "MODEL.WEIGHTS", str(weights), env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
        assert r.returncode == 2, (name, r.stderr[-3000:])
        err = _one_line(r.stderr, "d2_train_net: error: ")
        assert str(weights) in err and expected in err, (name, r.stderr[-2000:])
        assert not marker.exists()
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize(("sidecar", "expected"), [
    ("{not json", "not readable JSON"),
    (json.dumps({"method": "flowe\nPWN: 1", "arch": "resnet14", "detectron2_config": {}}), "'method'"),
    (json.dumps({"method": "flowe", "arch": "resnet14", "detectron2_config": {"MODEL.PIXEL_MEAN": "123"}}),
     "MODEL.PIXEL_MEAN"),
    (json.dumps({"method": "flowe", "arch": "resnet14", "detectron2_config": {"MODEL.WEIGHTS": "x"}}),
     "unknown detectron2_config key"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_d2_bad_sidecar_is_named(tmp_path, d2_synthetic, sidecar, expected):
    pytest.importorskip("detectron2")
    from d2_plugin.train import setup
    from pretrain.config import ConfigError

    convert(_saved_flowssl(tmp_path, arch="resnet14"), "detectron2", tmp_path / "w.pkl")
    Path(f"{tmp_path / 'w.pkl'}.json").write_text(sidecar)
    with pytest.raises(ConfigError, match=expected) as info:
        setup(str(D2_CONFIG), ["MODEL.WEIGHTS", str(tmp_path / "w.pkl")], data_root=str(tmp_path / "data"),
              synthetic_root=str(d2_synthetic))
    assert f"sidecar {tmp_path / 'w.pkl'}.json" in str(info.value) and "\n" not in str(info.value)

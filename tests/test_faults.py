"""Hostile-but-fair inputs and faults (issue 11): each test feeds the real bad input or signal.

Security: code-executing pickles through every loader, output file modes. Preemption: SIGTERM to
the whole process group with DataLoader workers, ``--resume auto``, unreadable newest checkpoints,
stale temp files, divergence, metrics after a resume. Silently wrong results: flow-cache keys and
resolution, architecture shapes on conversion, config typos. Messages: one line, exit 2.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from flowssl.cli import main
from pretrain.api import CheckpointError, ConfigError, Trainer, load_config
from pretrain.convert import convert
from pretrain.fileio import load_checkpoint, save_atomic, write_text_atomic
from pretrain.trainer import DivergenceError, batch_plan, checkpoints_in

from .conftest import DEMO_CONFIG, REPO, TINY, cli_options

# -- code-executing pickles -------------------------------------------------------------------


class _Exec:
    """Unpickling calls exec(code): the classic ``__reduce__`` attack."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


class _Attr:
    """Unpickling calls getattr(obj, name) — a chain of these reaches ``exec`` through
    ``getattr.__self__`` (the builtins module) with no global but ``builtins.getattr``."""

    def __init__(self, obj, name: str) -> None:
        self.obj, self.name = obj, name

    def __reduce__(self):
        return (getattr, (self.obj, self.name))

    def __call__(self, *args):  # pickle wants the REDUCE target callable when writing
        raise AssertionError("only the unpickled object is called")


class _Call:
    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _payloads(marker) -> dict[str, object]:
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    exec_via_getattr = _Call(_Attr(_Attr(builtins.getattr, "__self__"), "exec"), code)
    return {"reduce": _Exec(code), "getattr_chain": exec_via_getattr}


@pytest.fixture(params=["reduce", "getattr_chain"])
def evil(request, tmp_path):
    """(marker, evil.pth written by torch.save, evil.pkl written by pickle) for one payload."""
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[request.param]
    pth, pkl = tmp_path / "evil.pth", tmp_path / "evil.pkl"
    torch.save({"state_dict": {"conv1.weight": payload}, "meta": {}}, pth)
    with open(pkl, "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": payload}, "__author__": "x"}, f)
    # the payload really runs when unpickled without restriction (so the test is not vacuous)
    pickle.loads(pickle.dumps(payload))
    assert marker.is_file()
    marker.unlink()
    return marker, pth, pkl


def test_convert_never_executes_pickles(evil, tmp_path, capsys):
    marker, pth, pkl = evil
    for src in (pth, pkl):
        assert main(["convert", str(src), "--to", "mmseg", "-o", str(tmp_path / "out.pth")]) == 2
        assert not marker.exists()
    assert "refusing" in capsys.readouterr().err


def test_pretrain_resume_never_executes_pickles(evil, tmp_path):
    marker, pth, _ = evil
    work = tmp_path / "work"
    work.mkdir()
    (work / "iter_0000005.pth").write_bytes(pth.read_bytes())
    with pytest.raises(CheckpointError, match="can be read"):
        Trainer(load_config(DEMO_CONFIG, TINY), work, resume="auto")
    assert not marker.exists()


def test_weight_files_of_imagenet_and_raft_never_execute_pickles(evil):
    from pretrain.objectives.fixed import ImageNetSupervised

    marker, pth, _ = evil
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        ImageNetSupervised({"arch": "resnet50", "output_stride": 32}, checkpoint=str(pth))
    from pretrain.flow.sources import build_flow_source

    with pytest.raises((CheckpointError, ValueError), match="refusing|cannot be read"):
        build_flow_source({"type": "raft", "size": "small", "checkpoint": str(pth)})
    assert not marker.exists()


def test_mmseg_loader_never_executes_pickles(evil, tmp_path):
    pytest.importorskip("mmseg")
    from mmengine.runner.checkpoint import CheckpointLoader

    import mmseg_plugin  # noqa: F401  (registers the loader)
    from mmseg_plugin.checkpoint import load_mmengine_checkpoint

    marker, pth, _ = evil
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_mmengine_checkpoint(pth)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):  # what init_model / load_from / resume use
        CheckpointLoader.load_checkpoint(str(pth), map_location="cpu")
    assert not marker.exists()


def test_mmseg_loader_reads_real_mmengine_state(tmp_path):
    """The allow-list is enough for what mmengine really writes: message-hub history buffers and
    numpy arrays/scalars — and it refuses getattr."""
    pytest.importorskip("mmseg")
    from mmengine.logging import HistoryBuffer

    from mmseg_plugin.checkpoint import load_mmengine_checkpoint, mmengine_safe_globals

    buf = HistoryBuffer()
    buf.update(0.5)
    state = {"meta": {"iter": np.int64(3), "seed": np.float64(0.1), "mean": np.zeros(3, np.float32)},
             "message_hub": {"log_scalars": {"train/loss": buf}}, "state_dict": {"w": torch.ones(2)}}
    torch.save(state, tmp_path / "ok.pth")
    back = load_mmengine_checkpoint(tmp_path / "ok.pth")
    assert back["message_hub"]["log_scalars"]["train/loss"].current() == 0.5
    assert back["meta"]["iter"] == 3 and torch.equal(back["state_dict"]["w"], torch.ones(2))
    assert builtins.getattr not in mmengine_safe_globals() and all(g is not eval for g in mmengine_safe_globals())
    from mmseg_plugin.checkpoint import history_buffer_statistic

    with pytest.raises(pickle.UnpicklingError, match="refusing"):  # the getattr stand-in reaches nothing else
        history_buffer_statistic(builtins.getattr, "__self__")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        history_buffer_statistic(HistoryBuffer, "__init__")


def test_detectron2_weights_never_execute_pickles(evil):
    pytest.importorskip("detectron2")
    from torch import nn

    from d2_plugin.checkpoint import SafeDetectionCheckpointer

    marker, pth, pkl = evil
    for src in (pkl, pth):
        with pytest.raises(Exception, match="refusing|not a plain data type"):
            SafeDetectionCheckpointer(nn.Linear(2, 2)).load(str(src))
        assert not marker.exists()


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save_atomic({"x": torch.ones(1)}, tmp_path / "a.pth")
        write_text_atomic("x", tmp_path / "b.json")
        final = Trainer(load_config(DEMO_CONFIG, {**TINY, "max_iters": 1}), tmp_path / "w").train()
        side = convert(final, "mmseg", tmp_path / "c.pth")
    finally:
        os.umask(old)
    for p in (tmp_path / "a.pth", tmp_path / "b.json", final, tmp_path / "w" / "config.py", tmp_path / "c.pth",
              tmp_path / "c.pth.json"):
        assert p.stat().st_mode & 0o777 == 0o640, (p, oct(p.stat().st_mode))
    assert side["keys_out"] > 0


# -- preemption and faults ----------------------------------------------------------------------

def _final_params(path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(path)["model"].items() if "num_batches" not in k}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_stop_signal_to_the_process_group_with_workers_saves_and_resumes_exactly(tmp_path, sig):
    """What SLURM preemption, Kubernetes and ``timeout`` do (SIGTERM), and what SLURM's
    ``--signal=USR2@90`` (submitit's time-out) does: the signal to every process of the job,
    DataLoader workers included. The run saves the current iteration and exits 128 + signal
    (143, 140); ``--resume`` then ends on the same weights as an uninterrupted run."""
    opts = {**TINY, "max_iters": 12, "checkpoint_interval": 100, "num_workers": 1}
    cut = tmp_path / "cut"
    # the same thread count as this process, so float sums happen in the same order in both runs
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "flowssl.cli", "pretrain", str(DEMO_CONFIG), "--work-dir", str(cut),
                             "--cfg-options", *cli_options(opts)], env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, sig)  # the whole group: main process and its worker
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err.decode()[-2000:]
    assert b"Traceback" not in err, err.decode()[-2000:]
    (it, ckpt), = checkpoints_in(cut)
    assert 1 <= it < 12 and load_checkpoint(ckpt)["iteration"] == it
    resumed = Trainer(load_config(DEMO_CONFIG, opts), cut, resume=True).train()
    full = Trainer(load_config(DEMO_CONFIG, {**opts, "num_workers": 0}), tmp_path / "full").train()
    a, b = _final_params(resumed), _final_params(full)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(r)["iteration"] for r in metrics.read_text().splitlines()]
    assert rows == list(range(1, 13))  # no duplicate rows after the resume


def test_resume_auto_and_plain_resume(tmp_path, capsys):
    opts = cli_options({**TINY, "max_iters": 2, "checkpoint_interval": 1})
    work = tmp_path / "w"
    assert main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(work), "--resume", "--cfg-options", *opts]) == 2
    assert "holds no iter_*.pth checkpoint" in capsys.readouterr().err
    assert main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(work), "--resume", "auto", "--cfg-options",
                 *opts]) == 0  # nothing there: starts fresh
    more = cli_options({**TINY, "max_iters": 3, "checkpoint_interval": 1})
    assert main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(work), "--resume", "auto", "--cfg-options",
                 *more]) == 0  # resumes at 2
    rows = [json.loads(r)["iteration"] for r in (work / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]


def test_unreadable_newest_checkpoint_is_skipped_and_stale_temps_removed(tmp_path, caplog):
    cfg = load_config(DEMO_CONFIG, {**TINY, "max_iters": 4, "checkpoint_interval": 2})
    Trainer(cfg, tmp_path).train()
    (tmp_path / "iter_0000004.pth").write_bytes(b"")  # killed while writing, no atomic rename
    (tmp_path / ".iter_0000006.pth.tmp-abc123.pth").write_bytes(b"x" * 1000)
    with pytest.raises(CheckpointError, match=r"iter_0000004.pth is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "iter_0000004.pth")
    trainer = Trainer(cfg, tmp_path, resume=True)
    assert trainer.iteration == 2 and "iter_0000004.pth is empty" in caplog.text
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_convert_of_an_empty_file_is_one_line(tmp_path, capsys):
    (tmp_path / "empty.pth").write_bytes(b"")
    assert main(["convert", str(tmp_path / "empty.pth"), "--to", "mmseg", "-o", str(tmp_path / "o.pth")]) == 2
    err = capsys.readouterr().err
    assert "empty.pth is empty (0 bytes)" in err and "Traceback" not in err


def test_truncated_only_checkpoint_is_a_clear_error(capsys, tmp_path):
    Trainer(load_config(DEMO_CONFIG, {**TINY, "max_iters": 3}), tmp_path).train()
    ckpt = tmp_path / "iter_0000003.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code = main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(tmp_path), "--resume", "--cfg-options",
                 *cli_options(TINY)])
    err = capsys.readouterr().err
    assert code == 2 and "no checkpoint" in err and "iter_0000003.pth" in err


def _nan_at(trainer: Trainer, iterations: set[int]) -> None:
    forward = trainer.model.forward

    def poisoned(batch):
        out = forward(batch)
        if trainer.iteration + 1 in iterations:  # a real NaN through the graph, as bad data gives
            out["loss"] = out["loss"] * torch.tensor(float("nan"))
        return out

    trainer.model.forward = poisoned


def test_nonfinite_steps_are_skipped_counted_and_then_stop(tmp_path, capsys):
    cfg = load_config(DEMO_CONFIG, {**TINY, "max_iters": 6, "checkpoint_interval": 3, "max_nonfinite_steps": 3})
    trainer = Trainer(cfg, tmp_path / "a")
    _nan_at(trainer, {2, 3})
    final = trainer.train()
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 2, 2, 2, 2]
    state = load_checkpoint(final)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())

    trainer = Trainer(cfg, tmp_path / "b")
    _nan_at(trainer, {2, 3, 4, 5})
    with pytest.raises(DivergenceError, match="3 iterations in a row"):
        trainer.train()
    for _, path in checkpoints_in(tmp_path / "b"):  # iteration 3 (skipped) was saved, with finite weights
        state = load_checkpoint(path)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_blown_up_weights_are_never_checkpointed(tmp_path, capsys):
    opts = cli_options({**TINY, "max_iters": 6, "checkpoint_interval": 1, "optimizer.lr": 1e38,
                        "max_nonfinite_steps": 2, "lr_schedule.warmup_iters": 0})
    code = main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(tmp_path), "--cfg-options", *opts])
    err = capsys.readouterr().err
    assert code == 2 and ("NaN/Inf" in err or "non-finite" in err) and "Traceback" not in err
    for _, path in checkpoints_in(tmp_path):
        state = load_checkpoint(path)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


# -- silently wrong results -----------------------------------------------------------------------

def _frames(folder, images) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        cv2.imwrite(str(folder / f"{i:06d}.png"), img)


def _textured(seed: int, h: int = 48, w: int = 96) -> np.ndarray:
    return cv2.GaussianBlur(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)


def test_flow_cache_keys_are_paths_relative_to_the_root(tmp_path, capsys):
    """KITTI raw: every drive has ``image_02/data``; two drives must not share a flow."""
    base = _textured(0, 64, 128)
    _frames(tmp_path / "frames" / "drive1" / "image_02" / "data", [base, np.roll(base, 3, 1)])
    _frames(tmp_path / "frames" / "drive2" / "image_02" / "data", [base, np.roll(base, -5, 1)])
    cfg = REPO / "configs" / "pretrain" / "flowe_r50_frames.py"
    opts = ["data.root=" + str(tmp_path / "frames"), "data.interval=1"]
    assert main(["flow", "precompute", str(cfg), "--out", str(tmp_path / "cache"), "--cfg-options", *opts]) == 0
    files = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*_fw.png"))
    assert files == ["drive1/image_02/data/000000__000001_fw.png", "drive2/image_02/data/000000__000001_fw.png"]
    from pretrain.flow.io import read_flow_png

    f1 = read_flow_png(tmp_path / "cache" / files[0])[0][0, 16:-16, 16:-16].median()
    f2 = read_flow_png(tmp_path / "cache" / files[1])[0][0, 16:-16, 16:-16].median()
    assert abs(f1 - 3) < 0.5 and abs(f2 + 5) < 0.5


def test_old_flow_cache_with_ambiguous_keys_is_refused(tmp_path):
    from pretrain.flow.sources import PrecomputedFlow

    (tmp_path / "flow_cache.json").write_text(json.dumps({"scale": 64.0}))
    with pytest.raises(ValueError, match="older flowssl"):
        PrecomputedFlow(str(tmp_path))


def test_flow_cache_at_half_resolution_is_rescaled(tmp_path):
    """A cache written at half the frames' size holds half-size vectors; they must be doubled."""
    from pretrain.data.pairs import FrameFolderPairs
    from pretrain.flow.io import write_flow_png
    from pretrain.flow.sources import CACHE_KEY_FORMAT

    _frames(tmp_path / "frames" / "seq", [_textured(1, 64, 128), _textured(2, 64, 128)])
    cache = tmp_path / "cache"
    (cache / "seq").mkdir(parents=True)
    (cache / "flow_cache.json").write_text(json.dumps({"scale": 64.0, "key_format": CACHE_KEY_FORMAT}))
    half = torch.tensor([2.0, -1.0])[:, None, None].expand(2, 32, 64)  # (4, -2) px at full size
    write_flow_png(cache / "seq" / "000000__000001_fw.png", half, scale=64.0)
    write_flow_png(cache / "seq" / "000000__000001_bw.png", -half, scale=64.0)
    ds = FrameFolderPairs(str(tmp_path / "frames"), interval=1, crop_size=(64, 128), scale_range=(1.0, 1.0),
                          colour=False, flow={"type": "precomputed", "root": str(cache)})
    fw = ds[0]["flow_fw"]
    assert torch.allclose(fw[0], torch.tensor(4.0)) and torch.allclose(fw[1], torch.tensor(-2.0))
    write_flow_png(cache / "seq" / "000000__000001_fw.png", half[:, :, :40], scale=64.0)  # another aspect
    write_flow_png(cache / "seq" / "000000__000001_bw.png", half[:, :, :40], scale=64.0)
    with pytest.raises(ValueError, match="another aspect ratio"):
        ds[0]


@pytest.mark.parametrize("arch", ["resnext50_32x4d", "wide_resnet50_2"])
def test_convert_refuses_resnext_and_wide_resnet(arch, tmp_path, capsys):
    import torchvision

    torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), tmp_path / "src.pth")
    assert main(["convert", str(tmp_path / "src.pth"), "--to", "mmseg", "-o", str(tmp_path / "o.pth"),
                 "--drop-heads"]) == 2
    err = capsys.readouterr().err
    assert "do not have the shapes of a torchvision resnet50" in err and not (tmp_path / "o.pth").exists()


@pytest.mark.parametrize(("option", "expected"), [
    ("max_iter=2", "did you mean 'max_iters'"),
    ("model.encoder.arhc=resnet18", "did you mean 'arch'"),
    ("optimizer.lrr=0.1", "did you mean 'lr'"),
    ("model.loss_resolutoin=image", "did you mean 'loss_resolution'"),
    ("data.crop_sise=32,64", "did you mean 'crop_size'"),
])
def test_config_typos_are_one_line_errors(option, expected, tmp_path, capsys):
    flowe = REPO / "configs" / "pretrain" / "flowe_r14_synthetic_demo.py"
    code = main(["pretrain", str(flowe), "--work-dir", str(tmp_path), "--cfg-options", *cli_options(TINY), option])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not checkpoints_in(tmp_path)


def test_bench_plan_typos_and_malformed_plans(tmp_path, capsys):
    plan = tmp_path / "plan.py"
    plan.write_text(f"methods = dict(byol={str(DEMO_CONFIG)!r})\nreadouts = []\nseeds = [0]\n"
                    "pretrain_options = dict(max_iter=2)\n")
    assert main(["bench", str(plan), "--work-dir", str(tmp_path / "w")]) == 2
    assert "did you mean 'max_iters'" in capsys.readouterr().err
    plan.write_text("methods = dict(\n")
    assert main(["bench", str(plan), "--work-dir", str(tmp_path / "w")]) == 2
    assert "plan.py cannot be parsed" in capsys.readouterr().err
    plan.write_text("methods = dict()\nreadouts = [dict(name='x')]\nseeds = [0]\n")
    assert main(["bench", str(plan), "--work-dir", str(tmp_path / "w")]) == 2
    assert "readouts[0] lacks" in capsys.readouterr().err


# -- messages ---------------------------------------------------------------------------------

def test_bad_data_in_workers_is_one_line(tmp_path, capsys):
    good = _textured(3, 64, 128)
    _frames(tmp_path / "frames" / "seq", [good] * 6)
    for f in sorted((tmp_path / "frames" / "seq").glob("*.png"))[:4]:
        f.write_bytes(b"not an image")
    cfg = tmp_path / "frames_cfg.py"
    cfg.write_text(f"_base_ = [{str(REPO / 'configs/pretrain/flowe_r14_synthetic_demo.py')!r}]\n"
                   f"data = dict(type='FrameFolderPairs', _delete_=True, root={str(tmp_path / 'frames')!r}, "
                   "interval=1, crop_size=(32, 64), scale_range=(1.0, 1.0), flow=dict(type='identity'), "
                   "max_bad_fraction=0.01)\n")
    opts = cli_options({k: v for k, v in TINY.items() if not k.startswith("data.")} | {"num_workers": 1})
    code = main(["pretrain", str(cfg), "--work-dir", str(tmp_path / "w"), "--cfg-options", *opts])
    err = capsys.readouterr().err
    assert code == 2 and "max_bad_fraction" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert main(["--debug", "pretrain", str(cfg), "--work-dir", str(tmp_path / "w"), "--cfg-options", *opts]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_frames_of_different_sizes_are_reported_as_such(tmp_path, caplog):
    from pretrain.data.pairs import FrameFolderPairs

    _frames(tmp_path / "seq", [_textured(4, 64, 128), _textured(5, 48, 96)])
    ds = FrameFolderPairs(str(tmp_path), interval=1, crop_size=(32, 64), colour=False, flow={"type": "identity"},
                          max_bad_fraction=1.0)
    with pytest.raises(Exception, match="100 consecutive"):
        ds[0]
    assert "differ in size" in caplog.text and "128×64" in caplog.text and "unreadable" not in caplog.text


def test_flo_with_an_absurd_header_is_refused_before_allocating(tmp_path):
    from pretrain.flow.io import FlowFileError, read_flo

    path = tmp_path / "huge.flo"
    path.write_bytes(b"PIEH" + np.array([2**30, 2**30], "<i4").tobytes() + b"\0" * 64)
    with pytest.raises(FlowFileError, match="claims 1073741824×1073741824"):
        read_flo(path)


def test_tables_on_empty_or_malformed_results(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["tables", str(tmp_path / "empty")]) == 2
    assert "no results.json under" in capsys.readouterr().err
    bad = tmp_path / "r" / "flowe" / "cityscapes" / "deeplabv1" / "seed0" / "results.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    assert main(["tables", str(tmp_path / "r")]) == 2
    assert "results.json is not valid JSON" in capsys.readouterr().err
    bad.write_text("[1, 2]")
    assert main(["tables", str(tmp_path / "r")]) == 2
    assert "is not a readout result" in capsys.readouterr().err


# -- the paper's global batch at any GPU count (issue 12) ------------------------------------------

def test_batch_plan_derives_accumulation_or_scales_the_lr():
    assert batch_plan(128, 2, 64) == (1, 1.0)           # the paper: 64 GPUs × 2
    assert batch_plan(128, 2, 8) == (8, 1.0)            # 8 GPUs accumulate 8 micro-batches
    assert batch_plan(None, 2, 8, accum_steps=3) == (3, 1.0)
    assert batch_plan(128, 2, 8, rule="linear_lr") == (1, 16 / 128)
    assert batch_plan(128, 8, 8, rule="sqrt_lr") == (1, 0.5 ** 0.5)
    with pytest.raises(ConfigError, match="not a multiple"):
        batch_plan(128, 3, 8)
    with pytest.raises(ConfigError, match="either global_batch"):
        batch_plan(128, 2, 8, accum_steps=2)


def test_trainer_prints_the_effective_batch(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="flowssl")
    trainer = Trainer(load_config(DEMO_CONFIG, {**TINY, "global_batch": 16}), tmp_path)
    assert trainer.accum == 4
    assert "effective batch 16 = 4 per process × 1 process(es) × 4 accumulation step(s)" in caplog.text
    with pytest.raises(ConfigError, match="not a multiple"):
        Trainer(load_config(DEMO_CONFIG, {**TINY, "global_batch": 6}), tmp_path)


def test_data_workers_auto_shares_the_cores_among_the_node_processes(monkeypatch):
    from pretrain.trainer import data_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert data_workers("auto") == 3 and data_workers(2) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert data_workers("auto") == 1
    with pytest.raises(ConfigError, match="num_workers"):
        data_workers("four")

"""Issue 20, items 8-10 and parts of 13: each test feeds the exact hostile input and checks the exit
code, the one-line message (naming the file or key) and what is left on disk.

8  bench scores the readout checkpoint its own run trained, not a stale higher ``iter_*.pth``;
9  ``convert`` never replaces its input and replaces other outputs only with ``--force``;
10 bench names that would leave the work dir are refused when the plan loads;
13 ``tables`` on null/NaN/garbage metrics and on method names with ``|`` or LaTeX specials; a full
   disk while writing a checkpoint; mmseg label ids beyond the classes.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import pathlib

import pytest
import torch

from flowssl.cli import main
from pretrain.fileio import TEMP_MARK, WriteError, load_checkpoint, save_atomic, write_text_atomic
from pretrain.models import ResNetEncoder

from .conftest import DEMO_CONFIG, REPO, TINY, cli_options

HAS_MMSEG = importlib.util.find_spec("mmseg") is not None and importlib.util.find_spec("mmcv") is not None
needs_mmseg = pytest.mark.skipif(not HAS_MMSEG, reason="mmseg is not installed")
TINY_MMSEG = "configs/mmseg/deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"


def _error_lines(err: str) -> list[str]:
    """The ``flowssl: error:`` lines (the CLI adds one hint line about --debug)."""
    return [line for line in err.splitlines() if line.startswith("flowssl: error:")]


def _flowssl_ckpt(path: pathlib.Path, arch: str = "resnet14") -> pathlib.Path:
    """A flowssl training checkpoint (encoder + model + meta) as ``flowssl pretrain`` writes one."""
    torch.manual_seed(0)
    enc = ResNetEncoder(arch, 32)
    torch.save({"encoder": enc.state_dict(), "model": {"w": torch.ones(2)}, "meta": {"method": "flowe", **enc.meta},
                "iteration": 4}, path)
    return path


# -- 8: the bench tests the readout its own run trained -------------------------------------------

@needs_mmseg
def test_bench_scores_this_runs_readout_not_a_stale_higher_checkpoint(tmp_path, capsys):
    """A killed earlier attempt with a longer schedule left ``iter_50.pth`` in the readout folder;
    the plan trains 1 iteration: ``iter_1.pth`` is what gets scored."""
    ckpt = _flowssl_ckpt(tmp_path / "enc.pth")
    plan = tmp_path / "plan.py"
    plan.write_text(f'''
methods = dict()
checkpoints = dict(mine="{ckpt}")
seeds = [0]
synthetic = dict(videos=dict(train=1, val=1), frames_per_video=2)
readouts = [dict(name="deeplabv1", framework="mmseg", dataset="synthetic", config="{TINY_MMSEG}",
                 options={{"train_cfg.max_iters": 1, "train_cfg.val_interval": 1, "param_scheduler.0.end": 1,
                          "default_hooks.checkpoint.interval": 1, "train_dataloader.batch_size": 1}})]
''')
    work = tmp_path / "work"
    readout = work / "results" / "mine" / "synthetic" / "deeplabv1" / "seed0"
    readout.mkdir(parents=True)
    stale = readout / "iter_50.pth"
    stale.write_bytes(b"left by a killed run with max_iters=50")
    assert main(["bench", str(plan), "--work-dir", str(work)]) == 0
    assert "mine deeplabv1/synthetic: done" in capsys.readouterr().out
    result = json.loads((readout / "results.json").read_text())
    assert result["readout_checkpoint"] == str(readout / "iter_1.pth")
    assert stale.read_bytes() == b"left by a killed run with max_iters=50"  # not ours to delete


# -- 9: convert never overwrites its input, and other files only with --force ---------------------

def test_convert_onto_its_own_input_is_refused_even_with_force(tmp_path, capsys):
    src = _flowssl_ckpt(tmp_path / "iter_0000004.pth")
    before = src.read_bytes()
    for extra in ([], ["--force"]):
        assert main(["convert", str(src), "--to", "torchvision", "-o", str(src), *extra]) == 2
        lines = _error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"output {src} is the input checkpoint" in lines[0]
        assert "even with --force" in lines[0]
    # the same file under another name (relative path with ..) is the same file
    alias = tmp_path / "sub" / ".." / src.name
    (tmp_path / "sub").mkdir()
    assert main(["convert", str(src), "--to", "mmseg", "-o", str(alias), "--force"]) == 2
    assert src.read_bytes() == before and "model" in load_checkpoint(src)  # still a training checkpoint
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(f".*{TEMP_MARK}*"))


def test_convert_replaces_an_existing_output_only_with_force(tmp_path, capsys):
    src = _flowssl_ckpt(tmp_path / "enc.pth")
    out = tmp_path / "enc_tv.pth"
    out.write_bytes(b"someone's file")
    assert main(["convert", str(src), "--to", "torchvision", "-o", str(out)]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{out} exists; pass --force" in lines[0]
    assert out.read_bytes() == b"someone's file" and not (tmp_path / "enc_tv.pth.json").exists()
    assert main(["convert", str(src), "--to", "torchvision", "-o", str(out), "--force"]) == 0
    assert "layer4.0.conv1.weight" in torch.load(out, weights_only=True)
    # a re-convert to the same place (sidecar and file exist now) needs --force again
    assert main(["convert", str(src), "--to", "torchvision", "-o", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_convert_to_detectron2_keeps_a_hand_written_yaml_unless_forced(tmp_path, capsys):
    """ResNet-50: ``convert --to detectron2 -o X.pkl`` writes the stock-config fragment X.yaml."""
    src = _flowssl_ckpt(tmp_path / "r50.pth", "resnet50")
    yaml = tmp_path / "flowe.yaml"
    yaml.write_text("_BASE_: my/hand/written.yaml\nSOLVER:\n  BASE_LR: 0.01\n")
    assert main(["convert", str(src), "--to", "detectron2", "-o", str(tmp_path / "flowe.pkl")]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{yaml} exists; pass --force" in lines[0]
    assert yaml.read_text().startswith("_BASE_: my/hand/written.yaml")
    assert not (tmp_path / "flowe.pkl").exists() and not (tmp_path / "flowe.pkl.json").exists()
    assert main(["convert", str(src), "--to", "detectron2", "-o", str(tmp_path / "flowe.pkl"), "--force"]) == 0
    assert "STRIDE_IN_1X1" in yaml.read_text() and (tmp_path / "flowe.pkl").is_file()


# -- 10: bench names stay inside the work dir ------------------------------------------------------

@pytest.mark.parametrize(("key", "bad"), [
    ("readouts[0].name", "../../escape"), ("readouts[0].dataset", "../escape"), ("readouts[0].name", ".."),
    ("readouts[0].dataset", "a/b"), ("methods key", "../escape"), ("readouts[0].name", ""),
])
def test_bench_names_that_leave_the_work_dir_are_refused_at_load(tmp_path, capsys, key, bad):
    name, dataset, method = "deeplabv1", "synthetic", "byol"
    if key == "readouts[0].name":
        name = bad
    elif key == "readouts[0].dataset":
        dataset = bad
    else:
        method = bad
    plan = tmp_path / "plans" / "plan.py"
    plan.parent.mkdir()
    plan.write_text(f"methods = {{{method!r}: {str(DEMO_CONFIG)!r}}}\nseeds = [0]\nreadouts = [dict(name={name!r}, "
                    f"framework='mmseg', dataset={dataset!r}, config={TINY_MMSEG!r})]\n")
    work = tmp_path / "a" / "b" / "work"
    assert main(["bench", str(plan), "--work-dir", str(work)]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"plan {plan}: {key} {bad!r} is not a plain name" in lines[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["plan.py", "plans"]  # nothing written anywhere


# -- 13: tables -----------------------------------------------------------------------------------

def _result(root, method, readout, seed, metrics_text: str, dataset: str = "synthetic") -> pathlib.Path:
    d = root / method / dataset / readout / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text('{"metrics": ' + metrics_text + "}")
    return d / "results.json"


@pytest.mark.parametrize(("metrics", "key"), [
    ('{"mIoU": "42.5"}', "mIoU"), ('{"mIoU": true}', "mIoU"), ('{"mIoU": [42.5]}', "mIoU"),
    ('{"mIoU": {"v": 1}}', "mIoU"), ('{"mIoU": Infinity}', "mIoU"), ('{"bbox": {"AP": "4.0"}}', "bbox.AP"),
    ('{"bbox": "AP 4.0"}', "bbox"),
])
def test_tables_refuse_a_metric_that_is_not_a_finite_number(tmp_path, capsys, metrics, key):
    _result(tmp_path, "flowe", "deeplabv1", 0, '{"mIoU": 30.0}')
    bad = _result(tmp_path, "flowe", "deeplabv1" if "mIoU" in key else "c4", 1, metrics)
    for fmt in ("md", "latex", "csv"):
        assert main(["tables", str(tmp_path), "--format", fmt]) == 2
        captured = capsys.readouterr()
        lines = _error_lines(captured.err)
        assert len(lines) == 1 and f"{bad}: metrics.{key} is " in lines[0] and "Traceback" not in captured.err
        assert captured.out == ""  # no table with a wrong number in it


def test_tables_show_null_and_nan_as_not_measured_and_name_the_file(tmp_path, capsys):
    """``tools/mmseg_test.py`` writes ``"mIoU": null`` when every val label is ignored; detectron2
    reports AP NaN when the model predicts nothing. The cell says n/a, a note names the file, and a
    mean over the measured seeds says how many were not."""
    null = _result(tmp_path, "flowe", "deeplabv1", 0, '{"mIoU": null}')
    nan = _result(tmp_path, "flowe", "c4", 0, '{"bbox": {"AP": NaN}}')
    _result(tmp_path, "byol", "deeplabv1", 0, '{"mIoU": 30.0}')
    _result(tmp_path, "byol", "deeplabv1", 1, '{"mIoU": null}')
    assert main(["tables", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| synthetic | flowe | n/a | n/a | – | – |" in out
    assert "| synthetic | byol | 30.0 (+1 n/a) | – | – | – |" in out
    assert f"{null}: metrics.mIoU is null/NaN (not measured" in out and f"{nan}: metrics.bbox.AP is null/NaN" in out
    assert main(["tables", str(tmp_path), "--format", "csv"]) == 0
    assert "synthetic,flowe,n/a,n/a,–,–" in capsys.readouterr().out


def test_tables_escape_method_names_in_markdown_and_latex(tmp_path, capsys):
    _result(tmp_path, "a|b", "deeplabv1", 0, '{"mIoU": 30.0}')
    _result(tmp_path, "x_\\input{evil}&$#^%~", "deeplabv1", 0, '{"mIoU": 20.0}')
    _result(tmp_path, "a|b", "limited_10", 0, '{"mIoU": 10.0}')
    assert main(["tables", str(tmp_path)]) == 0
    md = capsys.readouterr().out
    assert "| synthetic | a\\|b | 30.0 | – | – | – |" in md
    assert "| synthetic | a\\|b | – | 10.0 | – |" in md  # Table 6 section too
    assert "| synthetic | x_\\input{evil}&$#^%~ | 20.0 |" in md  # only | is special in a markdown cell
    assert main(["tables", str(tmp_path), "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    row = next(line for line in latex.splitlines() if "evil" in line)
    assert row == ("synthetic & x\\_\\textbackslash{}input\\{evil\\}\\&\\$\\#\\textasciicircum{}\\%"
                   "\\textasciitilde{} & 20.0 & – & – & – \\\\")
    assert "synthetic & a|b & 30.0" in latex


# -- 13: a full disk while writing a checkpoint -----------------------------------------------------

class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)


def _disk_fills_up_at(monkeypatch, name: str, room: int = 4096) -> None:
    """``torch.save`` to a file whose name contains ``name`` runs out of space after ``room`` bytes
    (torch's real writer meets the ENOSPC); other saves are untouched."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if name not in str(f):
            return real_save(obj, f, *args, **kwargs)
        with open(f, "wb") as fh:
            return real_save(obj, _FullDisk(fh, room), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_earlier_one(tmp_path, capsys, monkeypatch):
    """The 2nd checkpoint (iteration 6) hits a full disk: torch's own writer reports
    ``RuntimeError: [enforce fail at inline_container.cc] ...``; the CLI says which file, exit 2."""
    _disk_fills_up_at(monkeypatch, "iter_0000006.pth")
    work = tmp_path / "w"
    opts = cli_options({**TINY, "max_iters": 6, "checkpoint_interval": 3})
    assert main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(work), "--cfg-options", *opts]) == 2
    captured = capsys.readouterr()
    lines = _error_lines(captured.err)
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert f"cannot write {work / 'iter_0000006.pth'}" in lines[0] and "the disk may be full" in lines[0]
    assert load_checkpoint(work / "iter_0000003.pth")["iteration"] == 3  # the earlier checkpoint is intact
    assert not (work / "iter_0000006.pth").exists() and not list(work.glob(f".*{TEMP_MARK}*"))


def test_full_disk_in_save_atomic_and_write_text_atomic_keeps_the_old_file(tmp_path, monkeypatch):
    save_atomic({"x": torch.ones(3)}, tmp_path / "a.pth")
    write_text_atomic("old", tmp_path / "b.json")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "write_text", full)
        with pytest.raises(WriteError, match=r"cannot write .*b\.json \(No space left on device\): the disk may"):
            write_text_atomic("new", tmp_path / "b.json")
    with monkeypatch.context() as m:
        _disk_fills_up_at(m, "a.pth", room=100)
        with pytest.raises(WriteError, match=r"cannot write .*a\.pth \(.*enforce fail.*\): the disk may be full"):
            save_atomic({"x": torch.zeros(1000)}, tmp_path / "a.pth")
    assert torch.equal(load_checkpoint(tmp_path / "a.pth")["x"], torch.ones(3))
    assert (tmp_path / "b.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.json"]  # no temp file left
    # not a write failure (an unpicklable object): the error stays what it is, with its traceback
    with pytest.raises(Exception) as info:
        save_atomic({"f": lambda: 0}, tmp_path / "c.pth")
    assert not isinstance(info.value, WriteError) and not (tmp_path / "c.pth").exists()


# -- 13: mmseg label ids beyond the classes ---------------------------------------------------------

@needs_mmseg
def test_mmseg_metric_names_the_label_file_with_an_out_of_range_id():
    """mmseg's IoUMetric drops such ids silently (torch.histc): a wrong mIoU, no message."""
    from mmseg_plugin.labels import LabelIdError
    from mmseg_plugin.metric import PerClassIoUMetric

    metric = PerClassIoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ("a", "b", "c")}
    label = torch.tensor([[[0, 1], [2, 255]]])
    ok = {"pred_sem_seg": {"data": torch.zeros(1, 2, 2, dtype=torch.long)}, "gt_sem_seg": {"data": label},
          "seg_map_path": "ok.png"}
    metric.process({}, [ok])  # ids 0..2 and the ignore index 255 are fine
    bad = {**ok, "gt_sem_seg": {"data": torch.tensor([[[0, 7], [33, 255]]])}, "seg_map_path": "gtFine/val/x.png"}
    with pytest.raises(LabelIdError, match=r"label file gtFine/val/x\.png: label id 7 is outside 0\.\.2 .*\[7, 33\]"):
        metric.process({}, [bad])


@needs_mmseg
def test_mmseg_training_on_an_out_of_range_label_id_names_the_file(tmp_path, capsys):
    """Before: torch's ``IndexError: Target 40 is out of bounds`` from the loss, naming no file."""
    import cv2
    import numpy as np

    from pretrain.data.synthetic import write_cityscapes_layout

    root = write_cityscapes_layout(tmp_path / "data", seed=0, videos={"train": 1, "val": 1}, frames_per_video=1)
    label = next((root / "gtFine" / "train").rglob("*_labelTrainIds.png"))
    cv2.imwrite(str(label), np.full((128, 256), 40, np.uint8))  # the config has 6 classes
    spec = importlib.util.spec_from_file_location("mmseg_train_tool", REPO / "tools" / "mmseg_train.py")
    mmseg_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mmseg_train)
    opts = [f"{s}_dataloader.dataset.data_root={root}" for s in ("train", "val", "test")]
    opts += ["train_cfg.max_iters=1", "train_dataloader.batch_size=1", "param_scheduler.0.end=1"]
    assert mmseg_train.main([str(REPO / TINY_MMSEG), "--work-dir", str(tmp_path / "w"), "--cfg-options", *opts]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmseg_train: error:")]
    assert len(err) == 1 and f"label file {label}: label id 40 is outside 0..5" in err[0]
    assert not list((tmp_path / "w").glob("iter_*.pth"))

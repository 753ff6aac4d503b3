"""The plugin's configs run unmodified under MMSegmentation's own shipped tools/train.py and
tools/test.py (``custom_imports`` finds ``mmseg_plugin`` on PYTHONPATH); only ``--cfg-options``
shrink them and point them at the data and the flowssl backbone checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

mmseg = pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from pretrain.data.synthetic import write_cityscapes_layout  # noqa: E402
from pretrain.readout import read_subset_list  # noqa: E402

from .conftest import REPO  # noqa: E402
from .test_mmseg_datasets import cli_words, shrink_options  # noqa: E402
from .test_mmseg_plugin import TINY, _flowssl_checkpoint  # noqa: E402

MMSEG_TOOLS = Path(mmseg.__file__).parent / ".mim" / "tools"
BDD_10PCT = REPO / "configs" / "mmseg" / "deeplabv1_flowssl-r50-finetune_8xb2-60k_bdd100k-10pct-512x1024.py"


def _mmseg_tool(name: str, args: list[str], cwd: Path) -> str:
    """Run mmseg's shipped ``tools/<name>.py`` as a user would; its output, or a failure with its tail."""
    script = MMSEG_TOOLS / f"{name}.py"
    if not script.is_file():
        pytest.skip(f"{script} is missing: this mmseg install does not ship its tools")
    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]  # this checkout first
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"mmseg {name}.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _logged_metrics(work_dir: Path) -> dict:
    """The metrics mmengine's LoggerHook dumps after ``runner.test()``: ``WORK_DIR/<time>/<time>.json``
    (mmengine writes NaN as the non-standard ``NaN``, which Python's json reads)."""
    dumps = sorted(p for p in work_dir.glob("*/*.json") if p.stem == p.parent.name)
    assert dumps, f"no metrics JSON under {work_dir}"
    return json.loads(dumps[-1].read_text())


@pytest.mark.slow
def test_mmseg_train_and_test_tools_run_the_plugin_config(tmp_path):
    # relative paths keep mmengine's yapf-formatted config dump fast (see test_mmseg_datasets)
    write_cityscapes_layout(tmp_path / "synthetic", seed=0, videos={"train": 2, "val": 1}, frames_per_video=2,
                            height=64, width=128)
    _flowssl_checkpoint(tmp_path)
    options = cli_words({
        "train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "param_scheduler.0.end": 2,
        "default_hooks.checkpoint.interval": 2, "train_dataloader.batch_size": 1, "randomness.seed": 0,
        "model.backbone.checkpoint": "flowssl.pth",
        **{f"{s}_dataloader.dataset.data_root": "synthetic" for s in ("train", "val", "test")}})
    _mmseg_tool("train", [str(TINY), "--work-dir", "train", "--cfg-options", *options], tmp_path)
    assert (tmp_path / "train" / "iter_2.pth").is_file()
    _mmseg_tool("test", [str(TINY), "train/iter_2.pth", "--work-dir", "test", "--cfg-options", *options], tmp_path)
    metrics = _logged_metrics(tmp_path / "test")
    assert 0 <= metrics["mIoU"] <= 100 and "IoU.background" in metrics and "IoU.cross" in metrics


@pytest.mark.slow
def test_table6_config_trains_on_ten_percent_with_mmseg_train(tmp_path, shared_data):
    root = shared_data / "bdd100k_sample"
    _flowssl_checkpoint(tmp_path)
    options = shrink_options(BDD_10PCT, root)
    assert options["train_dataloader.dataset.dataset.data_root"] == str(root)  # the wrapped BDD100K dataset
    words = cli_words({**options, "model.backbone.checkpoint": "flowssl.pth"})
    out = _mmseg_tool("train", [str(BDD_10PCT), "--work-dir", "work", "--cfg-options", *words], tmp_path)
    work = tmp_path / "work"
    assert (work / "iter_2.pth").is_file()
    # 10 % of the sample's 3 training images rounds to 0: at least one is kept, and listed by LabelSubsetHook
    listed = read_subset_list(work / "label_subset.txt")
    assert len(listed) == 1 and Path(listed[0]).parent == root / "images/10k/train" and Path(listed[0]).is_file()
    assert "label subset: 1 of 3 training images" in out
    # the evaluation at the end of training used the whole validation set (3 images)
    assert "Iter(val) [3/3]" in out and "mIoU" in out

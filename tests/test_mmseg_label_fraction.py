"""Limited labels (FlowE Table 6) in mmseg: a deterministic label subset by seed, its file list, the
``--label-fraction`` option of tools/mmseg_train.py and the Table 6 configs."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest

pytest.importorskip("mmseg")
pytest.importorskip("mmcv.ops")

from mmengine.config import Config  # noqa: E402

import mmseg_plugin  # noqa: E402,F401
from mmseg_plugin.label_fraction import LabelFractionDataset  # noqa: E402
from mmseg_plugin.runner import load_cfg  # noqa: E402
from pretrain.data.synthetic import write_cityscapes_layout  # noqa: E402
from pretrain.readout import LIST_FILE_NAME, read_subset_list, select_subset, subset_size  # noqa: E402
from pretrain.readout import subset_keys as _relative_names  # noqa: E402  (the names images are ranked by)

from .conftest import REPO  # noqa: E402
from .test_mmseg_plugin import TINY, _flowssl_checkpoint  # noqa: E402

NAMES = [f"city/img_{i:03d}.png" for i in range(200)]
TABLE6 = sorted((REPO / "configs" / "mmseg").glob("*pct-*.py"))


@pytest.fixture(scope="module")
def twenty_root(tmp_path_factory) -> Path:
    """20 training images (5 videos × 4 frames), 2 validation images, 64×128."""
    root = tmp_path_factory.mktemp("labels") / "synthetic"
    return write_cityscapes_layout(root, seed=0, videos={"train": 5, "val": 1}, frames_per_video=4, height=64,
                                   width=128)


@pytest.mark.parametrize(("fraction", "n", "size"), [(0.1, 20, 2), (0.01, 20, 1), (0.05, 30, 2), (0.01, 250, 3),
                                                      (1.0, 7, 7), (0.5, 3, 2)])
def test_subset_size_is_the_rounded_fraction_and_at_least_one(fraction, n, size):
    assert subset_size(fraction, n) == size
    assert len(select_subset([f"x{i}" for i in range(n)], fraction, seed=0)) == size


def test_subset_depends_on_seed_and_names_only():
    ten = select_subset(NAMES, 0.1, seed=0)
    assert ten == select_subset(NAMES, 0.1, seed=0) and ten != select_subset(NAMES, 0.1, seed=1)
    shuffled = NAMES[:]
    random.Random(3).shuffle(shuffled)
    assert sorted(shuffled[i] for i in select_subset(shuffled, 0.1, 0)) == [NAMES[i] for i in ten]
    # the same files under another data root are the same names
    assert _relative_names([f"/data/a/{n}" for n in NAMES]) == _relative_names([f"/mnt/b/{n}" for n in NAMES])


def test_fractions_of_one_seed_are_nested():
    one, ten, full = (set(select_subset(NAMES, f, seed=4)) for f in (0.01, 0.1, 1.0))
    assert len(one) == 2 and len(ten) == 20 and len(full) == 200
    assert one < ten < full


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, "ten", None])
def test_bad_fraction_is_a_clear_error(fraction):
    with pytest.raises(ValueError, match=r"must be .*\(0, 1\]"):
        select_subset(NAMES, fraction, 0)


def _dataset_cfg(root: Path, split: str = "train") -> dict:
    return dict(type="SyntheticCityscapesDataset", data_root=str(root), pipeline=[],
                data_prefix=dict(img_path=f"leftImg8bit/{split}", seg_map_path=f"gtFine/{split}"))


def test_wrapper_keeps_the_fraction_and_writes_its_list(tmp_path, twenty_root):
    ds = LabelFractionDataset(_dataset_cfg(twenty_root), fraction=0.25, seed=0, list_file=str(tmp_path / "l.txt"))
    assert len(ds) == 5 and ds.total == 20
    listed = read_subset_list(tmp_path / "l.txt")
    assert listed == ds.files == [ds.get_data_info(i)["img_path"] for i in range(len(ds))]
    assert all(Path(f).is_file() and f.startswith(str(twenty_root)) for f in listed)
    assert ds[0]["img_path"] == listed[0]  # the pipeline sees the subset's samples
    assert ds.metainfo["classes"] == mmseg_plugin.SyntheticCityscapesDataset.METAINFO["classes"]
    again = LabelFractionDataset(_dataset_cfg(twenty_root), fraction=0.25, seed=0)
    other = LabelFractionDataset(_dataset_cfg(twenty_root), fraction=0.25, seed=1)
    assert again.files == listed and other.files != listed and len(other) == 5


def test_dataset_options_on_the_wrapper_point_to_the_wrapped_dataset(tmp_path, twenty_root):
    with pytest.raises(TypeError, match=r"set train_dataloader\.dataset\.dataset\.<data_root> instead"):
        LabelFractionDataset(_dataset_cfg(twenty_root), fraction=0.1, data_root=str(tmp_path))


def test_wrapping_an_empty_dataset_says_what_to_check(tmp_path):
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"SyntheticCityscapesDataset \(data_root='.*empty.*check its data_root"):
        LabelFractionDataset(_dataset_cfg(tmp_path), fraction=0.1)


def test_load_cfg_wraps_only_the_training_set(tmp_path):
    cfg = load_cfg(TINY, tmp_path / "w", label_fraction=0.1, label_seed=3)
    train = cfg.train_dataloader.dataset
    assert train.type == "LabelFractionDataset" and train.fraction == 0.1 and train.seed == 3
    assert train.list_file == str(tmp_path / "w" / LIST_FILE_NAME)
    assert train.dataset.type == "SyntheticCityscapesDataset"
    assert cfg.val_dataloader.dataset.type == cfg.test_dataloader.dataset.type == "SyntheticCityscapesDataset"
    assert load_cfg(TINY, tmp_path / "w").train_dataloader.dataset.type == "SyntheticCityscapesDataset"
    with pytest.raises(ValueError, match="--label-fraction must be in"):
        load_cfg(TINY, tmp_path, label_fraction=0.0)
    with pytest.raises(ValueError, match="already trains on a label fraction"):
        load_cfg(TABLE6[0], tmp_path, label_fraction=0.1)


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(data_root: Path, iters: int = 2) -> list[str]:
    opts = [f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}", f"param_scheduler.0.end={iters}",
            f"default_hooks.checkpoint.interval={iters}", "default_hooks.logger.interval=1",
            "train_dataloader.batch_size=1"]
    return opts + [f"{s}_dataloader.dataset.data_root={data_root}" for s in ("train", "val", "test")]


def test_mmseg_train_tool_trains_on_ten_percent(tmp_path, twenty_root, capsys):
    work = tmp_path / "work"
    argv = [str(TINY), "--work-dir", str(work), "--checkpoint", str(_flowssl_checkpoint(tmp_path)),
            "--label-fraction", "0.1", "--label-seed", "0", "--cfg-options", *_options(twenty_root)]
    assert _tool("mmseg_train").main(argv) == 0
    assert (work / "iter_2.pth").is_file()
    listed = read_subset_list(work / LIST_FILE_NAME)
    expected = LabelFractionDataset(_dataset_cfg(twenty_root), fraction=0.1, seed=0).files
    assert listed == expected and len(listed) == 2
    # evaluation through tools/mmseg_test.py (the validation set is never wrapped: see the load_cfg test)
    out = tmp_path / "results.json"
    assert _tool("mmseg_test").main([str(TINY), str(work / "iter_2.pth"), "--work-dir", str(work), "--out", str(out),
                                     "--cfg-options", *_options(twenty_root)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert 0 <= metrics["mIoU"] <= 100 and metrics["IoU.background"] is not None
    assert _tool("mmseg_train").main([str(TINY), "--work-dir", str(work), "--label-fraction", "2"]) == 2
    assert "--label-fraction must be in (0, 1]" in capsys.readouterr().err


def test_table6_has_three_fractions_per_dataset():
    tags = sorted(p.stem.split("_")[-1] for p in TABLE6)
    assert tags == sorted(f"{d}-{f}pct-512x1024" for d in ("bdd100k", "cityscapes") for f in (1, 10, 100))


@pytest.mark.parametrize("path", TABLE6, ids=lambda p: p.stem)
def test_table6_configs_wrap_the_finetune_config(path):
    cfg = Config.fromfile(str(path))
    tag = path.stem.split("_")[-1].split("-")[-2]  # deeplabv1_..._bdd100k-10pct-512x1024 → 10pct
    fraction = {"1pct": 0.01, "10pct": 0.1, "100pct": 1.0}[tag]
    train = cfg.train_dataloader.dataset
    assert train.type == "LabelFractionDataset" and train.fraction == fraction and train.seed == 0
    assert train.get("list_file") is None and {"type": "LabelSubsetHook"} in cfg.custom_hooks
    base = Config.fromfile(str(path.with_name(path.name.replace(f"-{tag}-", "-"))))  # the fine-tune config
    assert train.dataset == base.train_dataloader.dataset  # only the wrapper differs
    assert cfg.val_dataloader == base.val_dataloader and cfg.model == base.model
    assert cfg.model.backbone.frozen is False and cfg.model.decode_head.type == "DeepLabV1Head"

"""Feature readouts (pretrain.probe): the converged linear probe, dense kNN retrieval, the label ceiling,
BatchNorm recalibration, the feature cache, and the bench's framework='probe' readouts."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from torch import nn

from flowssl.bench import check_plan
from flowssl.cli import main
from pretrain import probe
from pretrain.config import ConfigError

from .conftest import REPO

K = 4  # classes in the hand-made problems


def _pure_cells(n: int, h: int, w: int, generator: torch.Generator, bands: bool = False) -> torch.Tensor:
    """Labels [n, 8h, 8w] constant on every 8×8 cell (random classes; ``bands``: one class per column of
    cells, so a class boundary is never a corner), with a few ignored pixels that leave every cell labelled."""
    cells = torch.randint(0, K, (n, 1 if bands else h, w), generator=generator).expand(n, h, w)
    labels = cells.repeat_interleave(8, 1).repeat_interleave(8, 2).clone()
    labels[:, 3::8, 5::8] = probe.IGNORE_INDEX
    return labels


def test_iou_from_a_hand_made_confusion():
    label = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    conf = probe.confusion_matrix(pred, label, 4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # the 255 pixel is ignored
    miou, iou = probe.iou_from_confusion(conf)
    # class 0: TP 1, union 1+1+1 = 3; class 1: TP 2, union 3; class 2: TP 0, union 1; class 3: absent (NaN)
    assert iou[:3] == pytest.approx([100 / 3, 200 / 3, 0.0]) and math.isnan(iou[3])
    assert miou == pytest.approx(100 / 3)


def test_cell_targets_average_the_one_hot_labels_of_each_8x8_cell():
    labels = torch.zeros(1, 8, 16, dtype=torch.long)
    labels[0, :4, :8] = 1  # left cell: half 1, half 0
    labels[0, :, 8:] = 255  # right cell: all ignored
    labels[0, 0, 8] = 2  # ... but one pixel of class 2
    dist, valid = probe.cell_distributions(labels, 3)
    assert dist[0, :, 0, 0].tolist() == [0.5, 0.5, 0.0] and dist[0, :, 0, 1].tolist() == [0.0, 0.0, 1.0]
    assert valid.all()
    labels[0, 0, 8] = 255
    assert probe.cell_distributions(labels, 3)[1].tolist() == [[[True, False]]]
    assert probe.label_features(labels, 3)[0, :, 0].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]  # a tie: id 0
    with pytest.raises(ValueError, match="label id 7 is outside 0..2"):
        probe.cell_distributions(torch.full((1, 8, 8), 7), 3)


def test_probe_separates_linearly_separable_features_perfectly():
    """Separable cells (class c: a bump on channel c, little noise, plus channels of pure noise) in bands
    of whole cells: the converged probe classifies every cell with logits of about equal confidence, so
    the bilinear logits keep every pixel of a band (its own cell weighs ≥ 9/16) → 100 % IoU."""
    g = torch.Generator().manual_seed(0)

    def data(n):
        labels = _pure_cells(n, 4, 8, g, bands=True)
        cells = labels[:, ::8, ::8]
        feats = 3 * F.one_hot(cells, K).permute(0, 3, 1, 2).float() + 0.05 * torch.randn(n, K, 4, 8, generator=g)
        return torch.cat([feats, torch.randn(n, 3, 4, 8, generator=g)], 1), labels  # plus 3 noise channels

    (train, train_labels), (val, val_labels) = data(6), data(3)
    result = probe.read_out("linear_probe", train, train_labels, val, val_labels, K)
    assert result.miou == 100.0 and result.iou == [100.0] * K
    assert result.fit["converged"] and 0 < result.fit["iterations"] < probe.DEFAULT_MAX_ITER
    capped = probe.linear_probe(train, train_labels, val, val_labels, K, max_iter=2)
    assert capped.fit["iterations"] == 2 and not capped.fit["converged"]  # the cap is reported, not hidden


def test_probe_optimum_is_the_empirical_label_distribution():
    """Closed form: with one-hot features and soft targets, the unregularised optimum's softmax for a
    feature value is the mean target of the cells with that value (the cross-entropy's minimiser)."""
    g = torch.Generator().manual_seed(1)
    value = torch.randint(0, 3, (600,), generator=g)
    x = F.one_hot(value, 3).float()
    targets = torch.distributions.Dirichlet(torch.ones(K)).sample((600,))
    fit = probe.fit_softmax_regression(x, targets, l2=0.0, tol=1e-7)
    predicted = torch.softmax(torch.eye(3) @ fit["weight"].T + fit["bias"], 1)
    empirical = torch.stack([targets[value == v].mean(0) for v in range(3)])
    assert predicted == pytest.approx(empirical, abs=1e-3)
    assert fit["converged"]


def test_knn_on_one_hot_label_features_is_the_label_ceiling():
    """Pure cells: every neighbour of a label feature has the query's label, so the kNN's class scores
    are the one-hot cell labels and its prediction is their bilinear upsampling — the ceiling of a
    stride-8 readout of these labels (corners of small regions are lost). The converged probe on the
    same features (``label_ceiling``) scores the same up to near-ties."""
    g = torch.Generator().manual_seed(2)
    train_labels, val_labels = _pure_cells(6, 4, 8, g), _pure_cells(3, 4, 8, g)
    train, val = probe.label_features(train_labels, K), probe.label_features(val_labels, K)
    knn = probe.read_out("knn", train, train_labels, val, val_labels, K)
    expected = probe.score(probe.label_features(val_labels, K), val_labels, K)  # upsampled one-hot cells
    assert torch.equal(knn.confusion, expected.confusion)
    assert 50 < knn.miou < 100  # stride 8 loses the corners of single cells
    ceiling = probe.label_ceiling(train_labels, val_labels, K)
    assert ceiling.miou == pytest.approx(knn.miou, abs=1.0)


def test_knn_on_random_features_is_near_chance():
    g = torch.Generator().manual_seed(3)
    train_labels, val_labels = _pure_cells(8, 8, 8, g), _pure_cells(4, 8, 8, g)
    train, val = torch.randn(8, 16, 8, 8, generator=g), torch.randn(4, 16, 8, 8, generator=g)
    result = probe.read_out("knn", train, train_labels, val, val_labels, K, k=5, temperature=0.1)
    chance = 100 / (2 * K - 1)  # uniform labels and uniform guesses: IoU = (1/K²) / (2/K − 1/K²)
    assert abs(result.miou - chance) < 6, result.miou
    with pytest.raises(ValueError, match="unknown feature readout 'svm'"):
        probe.read_out("svm", train, train_labels, val, val_labels, K)


def test_standardise_uses_readout_train_statistics_only():
    train = torch.tensor([1.0, 3.0, 1.0, 3.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    train[:, 1] = 5.0  # a constant (dead) channel
    val = torch.full((1, 2, 2, 2), 3.0)
    t, v = probe.standardise(train, val)
    assert t[0, 0].flatten().tolist() == pytest.approx([-math.sqrt(3) / 2, math.sqrt(3) / 2] * 2)  # std 2/√3
    assert v[0, 0].unique().tolist() == pytest.approx([math.sqrt(3) / 2]) and (t[:, 1] == 0).all()


def test_recalibrate_bn_sets_the_running_statistics_to_the_data_moments():
    g = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(3, 3, 1, bias=False)
    nn.init.eye_(conv.weight.view(3, 3))
    bn = nn.BatchNorm2d(3)
    encoder = nn.Sequential(conv, bn)
    images = torch.randint(0, 256, (8, 3, 4, 6), generator=g, dtype=torch.uint8)
    images[:, 0] //= 4  # three channels with other moments
    x = probe._normalised(images)
    assert probe.recalibrate_bn(encoder, images, batch_size=8) == 1
    assert bn.running_mean == pytest.approx(x.mean((0, 2, 3)), abs=1e-5)
    assert bn.running_var == pytest.approx(x.var((0, 2, 3)), rel=1e-4)  # one batch: the unbiased variance
    assert not encoder.training and bn.momentum == 0.1  # left in eval mode, momentum restored
    probe.recalibrate_bn(encoder, images, batch_size=2)  # cumulative average over 4 equal batches
    assert bn.running_mean == pytest.approx(x.mean((0, 2, 3)), abs=1e-5)
    per_batch = torch.stack([x[i:i + 2].var((0, 2, 3)) for i in range(0, 8, 2)]).mean(0)
    assert bn.running_var == pytest.approx(per_batch, rel=1e-4)


def _checkpoint(path, seed: int, output_stride: int = 8):
    """A flowssl-format checkpoint of a random ResNet-14 (the encoder and the settings it was built with)."""
    from pretrain.models import build_encoder

    torch.manual_seed(seed)
    enc = build_encoder("resnet14", output_stride=output_stride)
    settings = {"model.encoder.arch": "resnet14", "model.encoder.output_stride": output_stride}
    torch.save({"encoder": enc.state_dict(), "settings": json.dumps(settings), "meta": {"method": "rand_init"}}, path)
    return path


def test_feature_cache_is_reused_for_its_checkpoint_and_rebuilt_for_another(tmp_path):
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (3, 3, 16, 24), generator=g, dtype=torch.uint8)
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        files[-1].write_bytes(bytes([i]) * 10)
    a, b = _checkpoint(tmp_path / "a.pth", 0, output_stride=32), _checkpoint(tmp_path / "b.pth", 1)
    cache = tmp_path / "features"
    first, info = probe.checkpoint_features(a, {"train": (images, files)}, cache)
    assert first["train"].shape[-2:] == (2, 3) and info["reused"] == {"train": False}  # stride 8 though trained at 32
    again, info = probe.checkpoint_features(a, {"train": (images, files)}, cache)
    assert info["reused"] == {"train": True} and torch.equal(again["train"], first["train"])
    other, info = probe.checkpoint_features(b, {"train": (images, files)}, cache)  # another checkpoint file
    assert info["reused"] == {"train": False} and not torch.equal(other["train"], first["train"])
    _, info = probe.checkpoint_features(b, {"train": (images[:2], files[:2])}, cache)  # another image list
    assert info["reused"] == {"train": False}
    _, info = probe.checkpoint_features(b, {"train": (images[:2], files[:2])}, cache, recalibrate_on="train")
    assert info["reused"] == {"train": False}  # recalibrated BatchNorm: other features
    (cache / "train.pt").write_bytes(b"truncated")
    rebuilt, info = probe.checkpoint_features(a, {"train": (images, files)}, cache)
    assert info["reused"] == {"train": False} and torch.equal(rebuilt["train"], first["train"])


def _probe_plan(tmp_path, **extra) -> Config:
    plan = {"methods": {"rand_init": "configs/pretrain/rand_init_r14_synthetic_demo.py"}, "seeds": [0],
            "readouts": [dict(name="linear_probe", framework="probe", dataset="synthetic", options={"tol": 1e-3}),
                         dict(name="knn", framework="probe", dataset="synthetic", options={"k": 5})]}
    return Config({**plan, **extra})


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "svm"}, "name must be one of"),
    ({"dataset": "cityscapes"}, "synthetic data only"),
    ({"options": {"k": 5}}, "linear_probe takes only"),
    ({"options": {"max_iter": 0.5}}, "max_iter must be a positive integer"),
])
def test_plan_check_refuses_a_bad_probe_readout(tmp_path, change, message):
    plan = _probe_plan(tmp_path)
    check_plan(plan, tmp_path / "plan.py")
    plan.readouts[0].update(change)
    with pytest.raises(ConfigError, match=message):
        check_plan(plan, tmp_path / "plan.py")
    with pytest.raises(ConfigError, match="recalibrate_bn names \\['byol'\\]"):
        check_plan(_probe_plan(tmp_path, recalibrate_bn=["byol"]), tmp_path / "plan.py")


def test_bench_probe_readouts_write_results_that_tables_show(tmp_path, capsys):
    plan = tmp_path / "plan.py"
    plan.write_text(f'''
methods = dict(rand_init="{REPO}/configs/pretrain/rand_init_r14_synthetic_demo.py")
pretrain_options = dict(quiet=True)
seeds = [0]
synthetic = dict(videos=dict(train=1, val=1), frames_per_video=2)
recalibrate_bn = ["rand_init"]
readouts = [dict(name="linear_probe", framework="probe", dataset="synthetic", options=dict(tol=1e-3)),
            dict(name="knn", framework="probe", dataset="synthetic")]
''')
    work = tmp_path / "work"
    assert main(["bench", str(plan), "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "rand_init linear_probe/synthetic: done" in out and "rand_init knn/synthetic: done" in out
    result = json.loads((work / "results/rand_init/synthetic/linear_probe/seed0/results.json").read_text())
    assert 0 <= result["metrics"]["mIoU"] <= 100 and "IoU.background" in result["metrics"]
    assert result["fit"]["iterations"] >= 1 and result["bn_recalibrated"] is True
    assert sorted(p.name for p in (work / "features/rand_init/seed0").iterdir()) == ["train.pt", "val.pt"]
    assert not (work / "converted").exists()  # the probe reads the pretraining checkpoint itself
    assert "| dataset | method | probe mIoU | kNN mIoU |" in out  # what the plan ran, nothing else
    knn = json.loads((work / "results/rand_init/synthetic/knn/seed0/results.json").read_text())["metrics"]["mIoU"]
    row = next(line for line in out.splitlines() if line.startswith("| synthetic | rand_init |"))
    probe_cell, knn_cell = row.split(" | ")[2:4]  # mean, then the bootstrap interval over val images
    assert probe_cell.startswith(f"{result['metrics']['mIoU']:.1f} [") and knn_cell.startswith(f"{knn:.1f} [")
    assert len(result["per_image_confusion"]) == 2  # one per val image
    assert main(["bench", str(plan), "--work-dir", str(work)]) == 0
    assert "linear_probe/synthetic: skipped (done)" in capsys.readouterr().out


def test_bootstrap_interval_over_val_images():
    """Identical images leave nothing to resample (a point); mixed images give an interval around the
    full-set mIoU, and the table shows it beside mean ± std."""
    from pretrain.probe import bootstrap_miou, iou_from_confusion

    same = torch.tensor([[5, 1], [2, 8]]).expand(6, 2, 2)
    lo, hi = bootstrap_miou([same, same], samples=200)
    assert lo == pytest.approx(hi) == pytest.approx(iou_from_confusion(same.sum(0))[0])
    g = torch.Generator().manual_seed(0)
    mixed = torch.randint(0, 20, (12, 3, 3), generator=g)
    lo, hi = bootstrap_miou([mixed], samples=300)
    assert lo < iou_from_confusion(mixed.sum(0))[0] < hi
    with pytest.raises(ValueError, match=r"\[N, K, K\]"):
        bootstrap_miou([torch.zeros(3, 2, 4)])


def test_foreground_labels_merge_object_classes_and_keep_ignored_pixels():
    labels = torch.tensor([[[0, 1, 2], [5, 255, 0]]])
    assert probe.foreground_labels(labels).tolist() == [[[0, 1, 1], [1, 255, 0]]]


def test_instance_recall_is_the_fraction_of_each_instance_predicted_as_its_class():
    """Two instances by hand: a class-1 instance of 4 px with 3 hit, a class-2 one of 2 px with none;
    stuff pixels (ids below 1000) are no instance."""
    ids = torch.tensor([[[1001, 1001, 0, 2000], [1001, 1001, 0, 2000]]])
    pred = torch.tensor([[[1, 1, 0, 1], [1, 3, 2, 0]]])
    rows = probe.instance_recall(pred, ids).tolist()
    assert rows == [[4.0, 1.0, 0.75], [2.0, 2.0, 0.0]]
    with pytest.raises(ValueError, match="differ in shape"):
        probe.instance_recall(pred[:, :1], ids)


def test_readout_diagnostics_on_a_bench_work_dir(tmp_path, capsys):
    """benchmarks/readout_diagnostics.py on a finished bench: the label-ceiling row beats Rand Init on
    both the binary probe and instance recall, and the numbers land in diagnostics.json."""
    import importlib.util

    plan = tmp_path / "plan.py"
    plan.write_text(f'''
methods = dict(rand_init="{REPO}/configs/pretrain/rand_init_r10n_v3_demo.py")
pretrain_options = dict(quiet=True)
seeds = [0]
synthetic = dict(videos=dict(train=2, val=1), frames_per_video=2, world="v3")
readouts = [dict(name="linear_probe", framework="probe", dataset="synthetic", options=dict(tol=1e-3))]
''')
    work = tmp_path / "work"
    assert main(["bench", str(plan), "--work-dir", str(work)]) == 0
    spec = importlib.util.spec_from_file_location("readout_diagnostics", REPO / "benchmarks/readout_diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(work)]) == 0
    assert "| rand_init seed0 |" in capsys.readouterr().out
    rows = json.loads((work / "diagnostics.json").read_text())["rows"]
    ceiling, floor = rows["ceiling (one-hot labels)"], rows["rand_init seed0"]
    assert ceiling["fg/bg fg IoU"] > floor["fg/bg fg IoU"] and ceiling["fg/bg fg IoU"] > 80
    assert ceiling["recall large"] > floor["recall large"]

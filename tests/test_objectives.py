"""Cross-pixel flow similarity, its classification baseline, S3 losses, every method's smoke run, the
objectives' checkpoint layout and the registry."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from flowssl.demo import DEMO_CONFIGS
from pretrain.api import Trainer, load_config
from pretrain.fileio import load_checkpoint
from pretrain.losses import (
    affine_motion_loss,
    cross_pixel_similarity_loss,
    flow_bin_classification_loss,
    histogram_entropy_loss,
    normalize_flow_log,
)
from pretrain.objectives import FlowClassification, ImageNetSupervised, Oracle
from pretrain.objectives.crosspixel import gather_points, sample_points
from pretrain.registry import DATASETS, OBJECTIVES, build_from

from .conftest import REPO

# Recorded with the objectives as they were before issue 22 recomposed them (see its "about").
LAYOUT = json.loads((REPO / "tests" / "data" / "objective_layout.json").read_text())


def _transcribed_eq3(phi: torch.Tensor, f: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """Eq. 2–5 written out with loops, for one image."""
    n = len(phi)
    k_phi = [[0.25 * torch.dot(phi[p], phi[q]) / (phi[p].norm() * phi[q].norm()) for q in range(n)] for p in range(n)]
    k_f = [[torch.exp(-(f[p] - f[q]).pow(2).sum() / (2 * sigma2)) for q in range(n)] for p in range(n)]
    loss = 0.0
    for q in range(n):
        for p in range(n):
            z_f = sum(torch.exp(k_f[p][qq]) for qq in range(n) if qq != p) + 1
            z_phi = sum(torch.exp(k_phi[p][qq]) for qq in range(n) if qq != p) + math.exp(-0.75)
            s_f = (1 if p == q else torch.exp(k_f[p][q])) / z_f
            s_phi = (math.exp(-0.75) if p == q else torch.exp(k_phi[p][q])) / z_phi
            loss = loss - s_f * torch.log(s_phi)
    return loss


def test_cross_pixel_loss_equals_transcription_of_eq2_to_5_and_its_gradient():
    torch.manual_seed(0)
    phi = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    flow = torch.rand(2, 7, 2, dtype=torch.float64) * 2 - 1
    log_s2 = torch.tensor(math.log(0.05), dtype=torch.float64, requires_grad=True)
    ours = cross_pixel_similarity_loss(phi, flow, log_s2.exp(), reduction="sum")
    ref = sum(_transcribed_eq3(phi[b], flow[b], log_s2.exp()) for b in range(2))
    torch.testing.assert_close(ours, ref)
    g_ours = torch.autograd.grad(ours, (phi, log_s2))
    g_ref = torch.autograd.grad(ref, (phi, log_s2))
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b)
    assert g_ours[1].abs() > 0  # σ receives gradient
    torch.testing.assert_close(cross_pixel_similarity_loss(phi, flow, log_s2.exp()), ours / 14)


def test_cross_pixel_loss_is_lowest_when_embeddings_group_like_the_flow():
    torch.manual_seed(0)
    n = 32
    groups = torch.arange(n) % 2
    flow = torch.stack([groups * 0.8 - 0.4, torch.zeros(n)], -1)[None].double()  # two rigid motions
    good = torch.nn.functional.one_hot(groups, 2).double()[None]                  # grouped as the flow
    wrong = torch.nn.functional.one_hot((torch.arange(n) // 2) % 2, 2).double()[None]
    s2 = torch.tensor(0.01, dtype=torch.float64)
    l_good = cross_pixel_similarity_loss(good, flow, s2)
    assert l_good < cross_pixel_similarity_loss(wrong, flow, s2)
    for _ in range(5):
        assert l_good < cross_pixel_similarity_loss(torch.randn(1, n, 2, dtype=torch.float64), flow, s2)


def test_cross_pixel_objective_reads_flow_and_hypercolumns_at_the_same_pixels():
    """sample_points, gather_points and the hypercolumn must agree on the pixel and on x/y order. The
    flow's x component varies along x and its y component along y, on a non-square view; a stride-1
    "stage" that *is* the flow and no MLP make the embedding the flow itself at the sampled pixels."""
    h, w = 24, 40
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    flow = torch.stack([0.5 * xs - 3, -0.8 * ys + 2])[None]
    eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    valid = torch.zeros(1, h, w, dtype=torch.bool)
    valid[:, 2:9, 5:37] = True  # a wide band: x and y ranges differ
    batch = {"view1": torch.zeros(1, 3, h, w), "affine1": eye, "flow_fw": flow, "valid_fw": valid}
    torch.manual_seed(0)
    model = FlowClassification({"arch": "resnet14"}, head={"stages": ("stem",)}, num_points=64)
    model.head.mlp = torch.nn.Identity()
    model.encoder.forward_stages = lambda x: {"stem": flow.expand(x.shape[0], -1, -1, -1)}
    emb, target = model.embed(batch)
    torch.testing.assert_close(normalize_flow_log(emb.transpose(1, 2)), target)
    points = sample_points(valid, 64)  # (x, y) inside the band, nowhere else
    assert points[..., 0].min() >= 5 and points[..., 0].max() <= 36
    assert points[..., 1].min() >= 2 and points[..., 1].max() <= 8
    torch.testing.assert_close(gather_points(flow, points), torch.stack([0.5 * points[..., 0] - 3,
                                                                         -0.8 * points[..., 1] + 2], -1))


def test_log_flow_normalisation_eq6():
    f = torch.tensor([0.0, 56.0, -7.0, 1000.0, -1000.0])
    expected = torch.tensor([0.0, 1.0, -math.log(8) / math.log(57), 1.0, -1.0])
    torch.testing.assert_close(normalize_flow_log(f, 56.0), expected)


def test_flow_bin_classification_targets():
    flow = torch.tensor([[[-1.0, 1.0], [0.0, -0.999], [0.99, 0.0]]])  # [B=1, N=3, 2]
    logits = torch.full((1, 32, 3), -20.0)
    for n, (bx, by) in enumerate([(0, 15), (8, 0), (15, 8)]):
        logits[0, bx, n] = 20.0
        logits[0, 16 + by, n] = 20.0
    assert flow_bin_classification_loss(logits, flow) < 1e-6
    logits[0, 0, 0], logits[0, 1, 0] = -20.0, 20.0  # one wrong bin → large loss
    assert flow_bin_classification_loss(logits, flow) > 10


def _affine_scene(h: int = 24, w: int = 32):
    """Three regions (left, middle, right thirds), each with its own exact affine motion."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    region = (torch.arange(w) * 3 // w).expand(h, w)
    motions = [torch.tensor([[0.5, 0.2, 1.0], [0.0, -0.3, 0.5]]), torch.tensor([[-2.0, 0.0, 0.0], [0.1, 0.0, -1.0]]),
               torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 0.0]])]
    flow = torch.zeros(2, h, w)
    for r, a in enumerate(motions):
        m = region == r
        flow[:, m] = a[:, 0:1] * xs[m] + a[:, 1:2] * ys[m] + a[:, 2:3]
    truth = torch.nn.functional.one_hot(region, 3).permute(2, 0, 1).float()
    return flow[None], truth[None]


def test_affine_motion_loss_is_zero_for_the_true_segmentation():
    flow, truth = _affine_scene()
    assert affine_motion_loss(truth, flow) < 1e-3
    halves = torch.zeros_like(truth)
    halves[:, 0, :, :16], halves[:, 1, :, 16:] = 1, 1
    assert affine_motion_loss(halves, flow) > 0.1
    soft = torch.full_like(truth, 1 / 3).requires_grad_(True)
    loss = affine_motion_loss(soft, flow)
    loss.backward()
    assert loss > 0.1 and soft.grad.abs().sum() > 0


def test_histogram_entropy_loss_prefers_regions_of_one_motion():
    flow, truth = _affine_scene()
    flow = torch.zeros_like(flow)
    flow[:, 0, :, :16], flow[:, 0, :, 16:] = 1.0, 8.0  # two magnitudes
    true = torch.zeros(1, 2, 24, 32)
    true[:, 0, :, :16], true[:, 1, :, 16:] = 1, 1
    mixed = torch.zeros(1, 2, 24, 32)
    mixed[:, 0, :12], mixed[:, 1, 12:] = 1, 1
    # mixing two motions 50/50 adds ln 2 of entropy to each region
    assert histogram_entropy_loss(mixed, flow) - histogram_entropy_loss(true, flow) > 0.9 * math.log(2)


def _two_motion_scene():
    """Magnitude 1 on the left half, 8 on the right; the true 2-region split and a wrong (top/bottom) one."""
    flow = torch.zeros(1, 2, 24, 32)
    flow[:, 0, :, :16], flow[:, 0, :, 16:] = 1.0, 8.0
    true, mixed = torch.zeros(1, 2, 24, 32), torch.zeros(1, 2, 24, 32)
    true[:, 0, :, :16], true[:, 1, :, 16:] = 1, 1
    mixed[:, 0, :12], mixed[:, 1, 12:] = 1, 1
    return flow, true, mixed


@pytest.mark.parametrize("outlier_valid", [True, False])
def test_histogram_entropy_range_is_robust_to_an_outlier(outlier_valid):
    """One 200-px cell (a flow failure, valid or flagged) must not squeeze 1 px and 8 px into one bin:
    with the batch maximum as range the true/wrong gap fell from ln 2 to 0.02 nats."""
    flow, true, mixed = _two_motion_scene()
    flow[0, :, 3, 5] = torch.tensor([200.0, 0.0])
    valid = torch.ones(1, 24, 32, dtype=torch.bool)
    valid[0, 3, 5] = outlier_valid
    gap = histogram_entropy_loss(mixed, flow, valid) - histogram_entropy_loss(true, flow, valid)
    assert gap > 0.9 * math.log(2), gap
    fixed = histogram_entropy_loss(mixed, flow, valid, max_magnitude=10.0) - histogram_entropy_loss(
        true, flow, valid, max_magnitude=10.0)
    assert fixed > 0.9 * math.log(2), fixed


def test_histogram_entropy_weights_each_region_by_its_mass():
    """Region A (3/4 of the pixels) mixes two motions, region B (1/4) has one: the loss is
    ¾·H(A) + ¼·H(B), not the plain mean of the two entropies."""
    flow = torch.zeros(1, 2, 24, 32)
    flow[:, 0, :, :12], flow[:, 0, :, 12:24], flow[:, 0, :, 24:] = 1.0, 8.0, 4.0
    a = torch.zeros(1, 1, 24, 32)
    a[..., :24] = 1
    b = 1 - a
    h_a = histogram_entropy_loss(a, flow, a[:, 0] > 0, max_magnitude=8.0)  # one region: its entropy
    h_b = histogram_entropy_loss(b, flow, b[:, 0] > 0, max_magnitude=8.0)
    both = histogram_entropy_loss(torch.cat([a, b], 1), flow, max_magnitude=8.0)
    assert h_a - h_b > 0.3  # so the ¾/¼ and the ½/½ weightings differ by > 0.07 nats
    torch.testing.assert_close(both, 0.75 * h_a + 0.25 * h_b)


def test_affine_motion_fit_ignores_invalid_pixels():
    """Garbage flow on 10% of the pixels, flagged invalid, changes neither the fits nor the loss."""
    flow, truth = _affine_scene()
    gen = torch.Generator().manual_seed(0)
    bad = torch.rand(1, 24, 32, generator=gen) < 0.1
    corrupted = torch.where(bad[:, None], torch.randn(1, 2, 24, 32, generator=gen) * 50, flow)
    assert affine_motion_loss(truth, corrupted, ~bad) < 1e-3
    torch.testing.assert_close(affine_motion_loss(truth, corrupted, ~bad), affine_motion_loss(truth, flow, ~bad))
    assert affine_motion_loss(truth, corrupted) > 1.0  # without the mask the garbage is fitted and scored


SMOKE = {"max_iters": 2, "checkpoint_interval": 2, "batch_size": 2, "num_workers": 0, "device": "cpu", "quiet": True}


@pytest.mark.parametrize("method", sorted(m for m in DEMO_CONFIGS if m != "imagenet_supervised"))
def test_every_method_trains_on_the_synthetic_video(method, tmp_path):
    cfg = load_config(DEMO_CONFIGS[method], SMOKE)
    if cfg.data.type == "SyntheticPairs":  # keep the smoke test small
        cfg.merge_from_dict({"data.height": 64, "data.width": 128, "data.crop_size": (64, 128)})
        if cfg.data.get("mode") == "byol":
            cfg.merge_from_dict({"data.view_size": (32, 64)})
    ckpt = load_checkpoint(Trainer(cfg, tmp_path).train())
    assert ckpt["meta"]["method"] == cfg.model.type and ckpt["meta"]["config_name"] == f"{method}_r14_synthetic_demo"
    assert ckpt["encoder"].keys() == load_checkpoint(Trainer(cfg, tmp_path / "again").train())["encoder"].keys()
    assert all(torch.isfinite(v).all() for v in ckpt["encoder"].values() if v.is_floating_point())


def test_rand_init_is_the_seeded_initialisation(tmp_path):
    cfg = lambda seed: load_config(DEMO_CONFIGS["rand_init"], {"seed": seed, "quiet": True})  # noqa: E731
    a = load_checkpoint(Trainer(cfg(0), tmp_path / "a").train())
    b = load_checkpoint(Trainer(cfg(0), tmp_path / "b").train())
    c = load_checkpoint(Trainer(cfg(1), tmp_path / "c").train())
    assert a["iteration"] == 0 and a["meta"]["method"] == "rand_init"
    assert all(torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    assert not torch.equal(a["encoder"]["conv1.weight"], c["encoder"]["conv1.weight"])


def test_imagenet_entry_point_wraps_torchvision_weights(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="not available offline.*model.checkpoint"):
        ImageNetSupervised({"arch": "resnet50"})
    torch.manual_seed(3)
    tv = resnet50()
    torch.save(tv.state_dict(), tmp_path / "r50.pth")
    model = ImageNetSupervised({"arch": "resnet50", "output_stride": 32}, checkpoint=str(tmp_path / "r50.pth"))
    x = torch.randn(1, 3, 64, 64)
    tv.eval(), model.eval()
    trunk = torch.nn.Sequential(*list(tv.children())[:-2])
    torch.testing.assert_close(model.encoder(x), trunk(x))


def _digest(items: list) -> str:
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def _layout(state: dict[str, torch.Tensor]) -> dict:
    """The state dict's ordered keys and shapes, whole and per top-level module (readable on failure)."""
    pairs = [[k, list(v.shape)] for k, v in state.items()]
    modules: dict[str, list] = {}
    for key, shape in pairs:
        modules.setdefault(key.split(".")[0], []).append([key, shape])
    return {"sha256": _digest(pairs),
            "modules": {name: f"{len(items)} tensors {_digest(items)[:16]}" for name, items in modules.items()}}


def _shipped_objective(name: str) -> torch.nn.Module:
    model = dict(load_config(REPO / "configs" / "pretrain" / f"{name}.py").model)
    if (model.get("flow") or {}).get("type") == "raft":
        model["flow"] = None  # outside the state dict; built last; its weights are not offline
    return build_from(OBJECTIVES, model, "objective", "model")


@pytest.mark.parametrize("name", sorted(LAYOUT["configs"]))
def test_every_shipped_objective_keeps_the_checkpoint_layout_it_had(name):
    """Checkpoints written before load after: the same keys and shapes, in the same order (which is
    also the optimiser's parameter order, so a resumed optimiser state lands on the same weights)."""
    with torch.device("meta"):  # shapes only: no memory, no random draws
        got = _layout(_shipped_objective(name).state_dict())
    want = LAYOUT["configs"][name]["layout"]
    assert got["modules"] == want["modules"]
    assert got["sha256"] == want["sha256"]


@pytest.mark.parametrize("name", sorted(n for n, rec in LAYOUT["configs"].items() if "init_sha256" in rec))
def test_demo_objectives_draw_the_initial_weights_they_drew(name):
    """Parameters are created, and drawn from the RNG, in the order they were: a seed gives the weights
    (and so the demo the numbers) it gave. Re-record only if torch itself changes its initialisers."""
    torch.manual_seed(0)
    digest = hashlib.sha256()
    for key, value in _shipped_objective(name).state_dict().items():
        digest.update(key.encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    assert digest.hexdigest() == LAYOUT["configs"][name]["init_sha256"]


_BUILD_BY_NAME = (
    "from pretrain.registry import DATASETS, OBJECTIVES, build_from\n"
    "model = build_from(OBJECTIVES, {'type': 'flowe', 'encoder': {'arch': 'resnet14'}}, 'objective', 'model')\n"
    "data = build_from(DATASETS, {'type': 'SyntheticPairs', 'num_videos': 1}, 'dataset', 'data')\n"
    "print(type(model).__name__, type(data).__name__, len(OBJECTIVES.module_dict))\n"
)


@pytest.mark.parametrize("first", [
    # the registry alone: nothing has imported an objective, a dataset or pretrain.api
    "import sys\nimport pretrain.registry\n"
    "assert not [m for m in sys.modules if m.startswith(('pretrain.objectives', 'pretrain.data', 'pretrain.api'))]\n",
    "import pretrain.trainer\n",  # the trainer without pretrain.api
], ids=["registry", "trainer"])
def test_the_registry_imports_the_objectives_and_datasets_it_names(first):
    """A fresh interpreter builds objectives and datasets by name from any entry point: each registry
    imports the package that registers into it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", first + _BUILD_BY_NAME], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["FlowE", "SyntheticPairs", str(len(OBJECTIVES.module_dict))]


# -- the oracle (issue 23): supervised on the pretraining videos' labels --------------------------

def test_labelled_views_crop_resize_and_flip_the_labels_with_the_image():
    """A block image whose value encodes its block's label: after the shared random resized crop and
    flip (colour distortion off), the nearest-resized labels still read off the bilinear image, except
    on the one-pixel seams between blocks."""
    from pretrain.data.augment import BYOLViews

    labels = (torch.arange(4)[:, None] * 8 + torch.arange(8)[None]).repeat_interleave(16, 0).repeat_interleave(16, 1)
    image = (labels.float() / 32)[None].repeat(3, 1, 1)  # 64×128, 16×16-px blocks, 32 labels
    views = BYOLViews((32, 64), scale=(0.2, 1.0))
    views.colour1 = lambda x: x  # geometry only
    flipped = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out = views.labelled(image, labels)
        assert out["label"].shape == (32, 64) and out["label"].dtype == labels.dtype
        assert out["image"].shape == (3, 32, 64) and type(out["label"]) is torch.Tensor
        agree = (out["image"][0] * 32).round().long() == out["label"]
        assert agree.float().mean() > 0.6, seed
        flipped += int(out["label"][0, 0] > out["label"][0, -1])
    assert 0 < flipped < 6  # the flip happened, to image and labels alike


def test_oracle_trains_on_the_labels_lowers_its_loss_and_exports_its_encoder_alone(tmp_path):
    from pretrain.convert import convert

    opts = {**SMOKE, "max_iters": 12, "checkpoint_interval": 12, "batch_size": 4, "log_interval": 1,
            "data.height": 64, "data.width": 128, "data.crop_size": (32, 64), "data.num_videos": 4}
    cfg = load_config(DEMO_CONFIGS["oracle"], opts)
    sample = build_from(DATASETS, dict(cfg.data), "dataset", "data")[0]
    assert sample["image"].shape == (3, 32, 64) and sample["label"].shape == (32, 64)
    assert sample["label"].max() < 6
    ckpt_path = Trainer(cfg, tmp_path).train()
    losses = [json.loads(r)["loss"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3  # from ≈ ln 6 towards the labels' entropy
    assert last < 0.7 * first, (first, last)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["meta"]["method"] == "oracle" and any(k.startswith("head.") for k in ckpt["model"])
    assert set(ckpt["encoder"]) == {k[len("encoder."):] for k in ckpt["model"] if k.startswith("encoder.")}
    sidecar = convert(ckpt_path, "torchvision", tmp_path / "tv.pth")
    assert sidecar["method"] == "oracle"
    assert set(torch.load(tmp_path / "tv.pth", weights_only=True)) == set(ckpt["encoder"])
    with pytest.raises(KeyError, match="labels=True"):
        Oracle({"arch": "resnet14"})({"view1": torch.zeros(1, 3, 32, 32)})

"""Every pretrain config parses, names registered parts, and the paper configs carry §4.2's numbers."""

from __future__ import annotations

import pytest

from pretrain.api import load_config
from pretrain.flow.sources import FLOW_SOURCES
from pretrain.registry import DATASETS, OBJECTIVES, build_from

from .conftest import REPO

CONFIGS = sorted((REPO / "configs" / "pretrain").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_names_registered_parts(path):
    cfg = load_config(path)
    assert OBJECTIVES.get(cfg.model.type) is not None
    assert DATASETS.get(cfg.data.type) is not None
    for flow in (cfg.model.get("flow"), cfg.data.get("flow")):
        if flow:
            assert FLOW_SOURCES.get(flow["type"]) is not None


@pytest.mark.parametrize("name", ["flowe_r50_bdd100k", "flowe_r50_cityscapes_seq", "flowe_r50_frames",
                                  "byol_r50_bdd100k"])
def test_paper_protocol(name):
    cfg = load_config(REPO / "configs" / "pretrain" / f"{name}.py")
    assert cfg.optimizer == {"type": "LARS", "lr": 0.1, "weight_decay": 1e-6, "momentum": 0.9}
    assert cfg.batch_size * 64 == cfg.global_batch == 128
    assert cfg.model.encoder == {"arch": "resnet50", "output_stride": 8}
    assert cfg.model.projector == {"hidden_channels": 4096, "out_channels": 256}
    assert tuple(cfg.data.crop_size) == (512, 1024)
    if name.startswith("flowe"):
        assert cfg.data.affine == {"scale": (0.5, 2.0), "rotation": 30.0}
        assert tuple(cfg.data.scale_range) == (0.75, 1.25)
    assert cfg.max_iters == {"flowe_r50_frames": 160000}.get(name, 60000)


def test_flowe_paper_config_without_raft_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = load_config(REPO / "configs" / "pretrain" / "flowe_r50_bdd100k.py",
                      {"model.encoder.arch": "resnet14", "model.projector.hidden_channels": 8,
                       "model.predictor.hidden_channels": 8})
    with pytest.raises(FileNotFoundError, match="flow.checkpoint=/path/to/raft_large"):
        build_from(OBJECTIVES, dict(cfg.model), "objective")


@pytest.mark.parametrize("name", ["flowe_r50_bdd100k", "flowe_r50_cityscapes_seq", "flowe_r50_frames"])
def test_flowe_paper_configs_use_synthetic_only_raft_in_fp32(name):
    """FlowE §3.3: RAFT trained on synthetic data only (torchvision's C_T_V2, not the KITTI/HD1K-tuned
    default), 32 refinement iterations (RAFT's evaluation), fp32 under bf16 autocast."""
    flow = load_config(REPO / "configs" / "pretrain" / f"{name}.py").model.flow
    assert (flow.type, flow.size, flow.weights, flow.num_flow_updates, flow.amp) == ("raft", "large", "C_T_V2", 32,
                                                                                      False)
    # occlusion thresholds: the consistency check FlowE cites (Sundaram et al.), the sources' defaults
    assert (flow.get("alpha1", 0.01), flow.get("alpha2", 0.5)) == (0.01, 0.5)


@pytest.mark.parametrize("name,regions", [("s3_affine_r50_bdd100k", 5), ("s3_affine_r14_synthetic_demo", 5),
                                          ("s3_entropy_r50_bdd100k", 10), ("s3_entropy_r14_synthetic_demo", 10)])
def test_s3_configs_use_the_papers_number_of_regions(name, regions):
    """S3-CNN: L = 5 for the affine loss (cube, Sintel), L = 10 for the entropy loss (YouTube)."""
    cfg = load_config(REPO / "configs" / "pretrain" / f"{name}.py")
    assert cfg.model.num_regions == regions
    model = build_from(OBJECTIVES, {**dict(cfg.model), "encoder": {"arch": "resnet14"}}, "objective")
    assert model.segment.out_channels == regions


def test_poodle_paper_config_carries_the_reference_values():
    """configs/pretrain/poodle_r50_bdd100k.py: the values its comments source (PooDLe code, paper epochs)."""
    cfg = load_config(REPO / "configs" / "pretrain" / "poodle_r50_bdd100k.py")
    m = cfg.model
    assert (m.type, m.encoder.arch, m.encoder.output_stride) == ("poodle", "resnet50", 32)
    assert m.decoder == {"channels": 2048, "hidden_factor": 0.5}
    assert m.subcrops == {"num": 6, "scale": (0.05, 0.3), "ratio": (3 / 4, 4 / 3), "size": (192, 192),
                          "jitter": 0.1, "max_tries": 5}
    assert m.loss_weights == {"dense": 0.5, "pooled": 0.5} and m.loss_resolution == "image"
    assert (m.flow.weights, m.flow.num_flow_updates) == ("C_T_V2", 24)
    assert (m.flow.alpha1, m.flow.alpha2) == (0.1, 0.5)  # poodle.yaml's occlusion thresholds, not FlowE's
    assert cfg.optimizer == {"type": "AdamW", "lr": 5e-4, "betas": (0.9, 0.999), "eps": 1e-6, "weight_decay": 1e-2}
    assert cfg.batch_size * 32 == cfg.global_batch == 128
    assert tuple(cfg.data.interval_s) == (0.5, 1.0) and tuple(cfg.data.crop_size) == (512, 1024)
    assert cfg.data.affine == {"scale": (0.9, 1.1), "rotation": 10.0, "hflip": 0.5}
    assert cfg.max_iters == 54700 and cfg.lr_schedule.warmup_iters == 1094


def test_poodle_config_builds_its_raft_with_the_reference_occlusion_thresholds(tmp_path):
    """The α keys reach the RAFT source (a random RAFT-small file stands in for the weights), and they
    change the mask: α₁ = 0.1 tolerates a forward–backward mismatch that 0.01 calls occluded."""
    import torch
    from torchvision.models.optical_flow import raft_small

    from pretrain.flow.sources import FlowPair, RAFTFlow

    ckpt = tmp_path / "raft.pth"
    torch.save(raft_small(weights=None).state_dict(), ckpt)
    cfg = load_config(REPO / "configs" / "pretrain" / "poodle_r50_bdd100k.py",
                      {"model.flow.size": "small", "model.flow.checkpoint": str(ckpt)})
    source = build_from(FLOW_SOURCES, dict(cfg.model.flow), "flow source")
    assert isinstance(source, RAFTFlow) and (source.alpha1, source.alpha2) == (0.1, 0.5)
    fw = torch.full((1, 2, 32, 32), 4.0)
    bw = -fw * 0.8  # |f + b̂|² = 1.28 px²: above 0.01·(|f|² + |b̂|²) + 0.5 = 1.02, below 0.1·(…) + 0.5 = 5.7
    inner = (slice(None), slice(0, 24), slice(0, 24))  # pixels whose partner lies inside the frame
    strict = FlowPair.from_consistency(fw, bw, 0.01, 0.5)
    loose = FlowPair.from_consistency(fw, bw, source.alpha1, source.alpha2)
    assert not strict.valid_fw[inner].any() and loose.valid_fw[inner].all()


def test_flow_precompute_takes_the_configs_raft_settings(tmp_path, monkeypatch):
    """One key picks FlowE's RAFT weights (issue 21.8): `flowssl flow precompute --source raft` builds the
    config's model.flow (weights, iterations, α) — not torchvision's defaults — and --checkpoint wins."""
    import pretrain.flow.sources as sources
    from flowssl.cli import main

    frames = tmp_path / "frames" / "seq"
    frames.mkdir(parents=True)
    import cv2
    import numpy as np

    for i in range(2):
        cv2.imwrite(str(frames / f"{i:04d}.png"), np.full((24, 32, 3), 40 * i, np.uint8))
    built = []
    real = sources.build_flow_source

    def spy(cfg):
        built.append(dict(cfg))
        return real({"type": "dis"})

    monkeypatch.setattr(sources, "build_flow_source", spy)
    cfg = REPO / "configs" / "pretrain" / "flowe_r50_frames.py"
    opts = ["data.root=" + str(tmp_path / "frames"), "data.interval=1", "model.flow.weights=C_T_SKHT_V2"]
    assert main(["flow", "precompute", str(cfg), "--out", str(tmp_path / "c1"), "--source", "raft",
                 "--checkpoint", "/x/raft.pth", "--cfg-options", *opts]) == 0
    assert built[-1] == {"type": "raft", "size": "large", "weights": "C_T_SKHT_V2", "num_flow_updates": 32,
                         "amp": False, "checkpoint": "/x/raft.pth"}
    assert main(["flow", "precompute", str(cfg), "--out", str(tmp_path / "c2"), "--cfg-options", *opts]) == 0
    assert built[-1] == {"type": "dis"}  # another kind of source: nothing of RAFT's carried over


NARROW_METHODS = ("rand_init", "byol", "flowe", "flow_similarity", "flow_classification", "s3_affine", "poodle")


@pytest.mark.parametrize("method", NARROW_METHODS)
def test_narrow_demo_configs_differ_from_the_r14_ones_only_in_the_encoder(method):
    """Each *_r10n_synthetic_demo is its r14 demo with arch resnet10n (PooDLe's decoder as wide as layer4):
    data, batch, budget, heads and optimiser stay what they are for every method."""
    from pretrain.trainer import flat_settings

    narrow = load_config(REPO / "configs" / "pretrain" / f"{method}_r10n_synthetic_demo.py")
    wide = load_config(REPO / "configs" / "pretrain" / f"{method}_r14_synthetic_demo.py")
    a, b = flat_settings(narrow), flat_settings(wide)
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} - {"filename_resolved"}
    assert changed == {"model.encoder.arch"} | ({"model.decoder.channels"} if method == "poodle" else set())
    assert narrow.model.encoder.arch == "resnet10n"
    objective = build_from(OBJECTIVES, dict(narrow.model), "objective", "model")
    assert objective.encoder.arch == "resnet10n" and objective.encoder.out_channels == 128
    if method == "poodle":
        assert objective.decoder.out_channels == objective.encoder.out_channels

"""benchmarks/pretrain_step.py: the measurement runs on CPU at tiny sizes and the MFU peak lookup."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pretrain.objectives import flowe as flowe_mod

from .conftest import REPO


@pytest.fixture(scope="module")
def pretrain_step():
    spec = importlib.util.spec_from_file_location("pretrain_step", REPO / "benchmarks" / "pretrain_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_measure_reports_time_memory_and_flops_under_autocast(pretrain_step):
    before = flowe_mod.equivariance_loss
    r = pretrain_step.measure("feature", "resnet14", (32, 64), pairs=1, steps=1, device="cpu", amp="bf16",
                              flow_kind="given", raft_updates=1, symmetric=False)
    assert flowe_mod.equivariance_loss is before  # the timing wrapper is removed again
    assert r["step_s"] > 0 and 0 < r["loss_part_s"] < r["step_s"] and r["peak_mb"] >= 0
    stem = 2 * (16 * 32) * 64 * (3 * 7 * 7)  # FLOPs of the stride-2 7×7 stem conv on a 32×64 view
    assert r["flops"] > 3 * stem  # forward + backward of the online encoder, and more


@pytest.mark.parametrize("name,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                       ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                       ("NVIDIA L40S", 362e12), ("NVIDIA A10", 125e12), ("Some GPU", 989e12)])
def test_peak_lookup_prefers_the_longest_matching_name(pretrain_step, monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert pretrain_step.default_peak("cuda")[0] == peak
    assert pretrain_step.default_peak("cpu")[0] is None


def test_compare_times_both_encoders_of_the_demo_in_one_process(pretrain_step, capsys):
    threads = torch.get_num_threads()
    pretrain_step.compare(["byol"], rounds=1, threads=1, batch_size=2)  # BYOL's head norms over the batch
    assert torch.get_num_threads() == threads  # restored: later runs in this process compute as before
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("byol")]
    assert [r[1] for r in rows] == ["resnet14", "resnet10n"] and rows[0][-1] == "1.00×"
    assert float(rows[1][-2]) < float(rows[0][-2]) / 10  # GFLOP per step: the narrow encoder's is far below

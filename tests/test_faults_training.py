"""Training states nobody guarded (issue 20, items 4-7): each test feeds the exact input of the issue.

A diverged model (lr 1e38: finite weights, NaN features) is never checkpointed as a success; the
counts of skipped steps survive a requeue; a batch with no valid pixel is skipped, not trained on
with loss 0; a fresh run never shares a work dir with another run, and a resume never continues a
run under other settings.
"""

from __future__ import annotations

import json

import pytest
import torch

from flowssl.cli import main
from pretrain.api import Trainer, TrainingInterrupted, load_config
from pretrain.data.pairs import FramePairs
from pretrain.fileio import load_checkpoint
from pretrain.trainer import changed_settings, checkpoints_in

from .conftest import DEMO_CONFIG, REPO, TINY, cli_options
from .test_faults import _nan_at

FLOWE_DEMO = REPO / "configs" / "pretrain" / "flowe_r14_synthetic_demo.py"
FLOW_SIMILARITY_DEMO = REPO / "configs" / "pretrain" / "flow_similarity_r14_synthetic_demo.py"
# TINY's data and head sizes for the flow objectives (SyntheticPairs with its exact flow)
TINY_FLOW = {k: v for k, v in TINY.items() if not k.startswith("model.")} | {"batch_size": 2}
TINY_HEADS = {"model.projector.hidden_channels": 32, "model.projector.out_channels": 16,
              "model.predictor.hidden_channels": 32}


def _pretrain(capsys, config, work, options, *extra) -> tuple[int, str, str]:
    code = main(["pretrain", str(config), "--work-dir", str(work), *extra, "--cfg-options", *cli_options(options)])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    """The one ``flowssl: error:`` line (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("flowssl: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _rows(work) -> list[dict]:
    return [json.loads(r) for r in (work / "metrics.jsonl").read_text().splitlines()]


def _iters(work) -> list[int]:
    return [i for i, _ in checkpoints_in(work)]


def _snapshot(work) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(work.iterdir()) if p.is_file()}


# -- 4: a diverged model is never checkpointed as a success ------------------------------------

def _probe_features_finite(path) -> bool:
    from pretrain.models import build_encoder

    ckpt = load_checkpoint(path)
    encoder = build_encoder(arch=ckpt["meta"]["arch"], output_stride=ckpt["meta"]["output_stride"])
    encoder.load_state_dict(ckpt["encoder"])
    with torch.no_grad():
        return bool(torch.isfinite(encoder.eval()(torch.randn(2, 3, 64, 64))).all())


def test_diverged_model_with_finite_weights_is_refused_at_the_checkpoint(tmp_path, capsys):
    """lr 1e38 for 4 iterations: the weights stay finite (|w| ~1e36) but every feature is NaN."""
    code, out, err = _pretrain(capsys, DEMO_CONFIG, tmp_path, {**TINY, "max_iters": 4, "optimizer.lr": 1e38})
    line = _error_line(err)
    assert code == 2 and "checkpoint:" not in out, (out, err)
    assert "diverged at iteration 3" in line and "NaN/Inf" in line and "no checkpoint was written" in line, line
    assert _iters(tmp_path) == []  # neither iteration 3 nor 4: nothing diverged is left as "latest"
    assert [r["iteration"] for r in _rows(tmp_path)] == [1, 2, 3]


def test_probe_leaves_rng_and_bn_statistics_untouched(tmp_path):
    trainer = Trainer(load_config(DEMO_CONFIG, TINY), tmp_path)
    trainer.objective.train()
    rng = torch.get_rng_state()
    state = {k: v.clone() for k, v in trainer.objective.state_dict().items()}
    trainer.check_probe_features()
    assert torch.equal(rng, torch.get_rng_state()) and trainer.objective.encoder.training
    for k, v in trainer.objective.state_dict().items():
        assert torch.equal(v, state[k]), k


# -- 5: the counts of skipped steps survive a resume ---------------------------------------------

@pytest.fixture
def nan_flow(monkeypatch):
    """Every pair's flow is NaN, as a broken flow cache or flow network gives."""
    sample = FramePairs.sample

    def poisoned(self, rng):
        out = sample(self, rng)
        out["flow_fw"] = torch.full_like(out["flow_fw"], float("nan"))
        out["flow_bw"] = torch.full_like(out["flow_bw"], float("nan"))
        return out

    monkeypatch.setattr(FramePairs, "sample", poisoned)


def test_requeued_job_with_nan_flow_stops_instead_of_running_forever(tmp_path, capsys, nan_flow):
    """4 NaN steps, requeued blindly with ``--resume auto``: the 5th in a row (max_nonfinite_steps
    5) stops the run, although it is the first of the second job."""
    opts = {**TINY_FLOW, **TINY_HEADS, "max_iters": 4, "checkpoint_interval": 2}
    code, out, err = _pretrain(capsys, FLOWE_DEMO, tmp_path, opts, "--resume", "auto")
    assert code == 0 and "iter_0000004.pth" in out, err
    assert [r["skipped_steps"] for r in _rows(tmp_path)] == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "iter_0000004.pth")["nonfinite"] == {"in_row": 4, "total": 4}

    code, out, err = _pretrain(capsys, FLOWE_DEMO, tmp_path, {**opts, "max_iters": 8}, "--resume", "auto")
    line = _error_line(err)
    assert code == 2 and "5 iterations in a row (up to 5) were skipped" in line and "max_nonfinite_steps=5" in line
    assert _iters(tmp_path) == [2, 4]
    assert [r["iteration"] for r in _rows(tmp_path)] == [1, 2, 3, 4]


def test_resume_keeps_the_skipped_step_counts_and_the_weights_exact(tmp_path):
    cfg = load_config(DEMO_CONFIG, {**TINY, "max_iters": 4, "checkpoint_interval": 100})
    full = Trainer(cfg, tmp_path / "full")
    _nan_at(full, {2})
    full_ckpt = load_checkpoint(full.train())

    cut = Trainer(cfg, tmp_path / "cut")
    _nan_at(cut, {2})
    step = cut.run_step

    def step_then_stop():
        logs = step()
        if cut.iteration == 3:
            cut._stop_signal = 15  # what the SIGTERM handler records
        return logs

    cut.run_step = step_then_stop
    with pytest.raises(TrainingInterrupted):
        cut.train()
    resumed = load_checkpoint(Trainer(cfg, tmp_path / "cut", resume=True).train())
    skipped = [r["skipped_steps"] for r in _rows(tmp_path / "full")]
    assert skipped == [0, 1, 1, 1] and [r["skipped_steps"] for r in _rows(tmp_path / "cut")] == skipped
    assert resumed["nonfinite"] == full_ckpt["nonfinite"] == {"in_row": 0, "total": 1}
    for k, v in full_ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


# -- 6: a batch with no valid pixel is skipped, not trained on with loss 0 -----------------------

@pytest.fixture
def all_occluded(monkeypatch):
    """Every pixel of every pair is occluded (no flow correspondence)."""
    sample = FramePairs.sample

    def occluded(self, rng):
        out = sample(self, rng)
        out["valid_fw"] = torch.zeros_like(out["valid_fw"])
        out["valid_bw"] = torch.zeros_like(out["valid_bw"])
        return out

    monkeypatch.setattr(FramePairs, "sample", occluded)


@pytest.mark.parametrize("config, heads", [(FLOWE_DEMO, TINY_HEADS), (FLOW_SIMILARITY_DEMO, {})],
                         ids=["flowe", "flow_similarity"])
def test_all_occluded_batches_are_skipped_not_trained_on(tmp_path, capsys, all_occluded, config, heads):
    opts = {**TINY_FLOW, **heads, "max_iters": 4, "checkpoint_interval": 4}
    init = Trainer(load_config(config, opts), tmp_path / "init").objective.state_dict()
    code, out, err = _pretrain(capsys, config, tmp_path / "w", opts)
    assert code == 0, err
    rows = _rows(tmp_path / "w")
    assert [r["skipped_steps"] for r in rows] == [1, 2, 3, 4] and all(r["valid_fraction"] == 0 for r in rows)
    ckpt = load_checkpoint(tmp_path / "w" / "iter_0000004.pth")
    assert ckpt["optimizer"]["state"] == {}  # no optimiser step, so no weight decay
    for k, v in ckpt["model"].items():  # nor EMA: the target network too is where it started
        if "num_batches_tracked" not in k:
            assert torch.equal(v, init[k]), k


# -- 7: one work dir, one run ------------------------------------------------------------------------

def test_fresh_run_in_a_used_work_dir_is_refused_and_resume_checks_the_settings(tmp_path, capsys):
    work = tmp_path / "same"
    eight = {**TINY, "max_iters": 8, "checkpoint_interval": 2}
    assert _pretrain(capsys, DEMO_CONFIG, work, eight)[0] == 0
    assert _iters(work) == [4, 6, 8]
    before = _snapshot(work)

    code, out, err = _pretrain(capsys, DEMO_CONFIG, work, {**eight, "max_iters": 2, "seed": 5})
    line = _error_line(err)
    assert code == 2 and "checkpoint:" not in out
    assert f"work dir {work} already holds a run (iter_0000004.pth, iter_0000006.pth, iter_0000008.pth, " \
           "metrics.jsonl); continue it with --resume, or use another --work-dir" in line, line
    assert _snapshot(work) == before

    code, _, err = _pretrain(capsys, DEMO_CONFIG, work, {**eight, "max_iters": 2, "seed": 5}, "--resume")
    line = _error_line(err)
    assert code == 2 and "iter_0000008.pth was trained with other settings: seed (checkpoint 0, config 5)." in line
    assert "max_iters" not in line.split("Resume with")[0]  # the schedule length may change
    assert _snapshot(work) == before

    changed = {**eight, "optimizer.lr": 0.05, "data.crop_size": (32, 32), "model.base_momentum": 0.9}
    code, _, err = _pretrain(capsys, DEMO_CONFIG, work, changed, "--resume")
    line = _error_line(err)
    assert code == 2 and ("data.crop_size (checkpoint [32, 64], config [32, 32]); model.base_momentum (checkpoint "
                          "0.99, config 0.9); optimizer.lr (checkpoint 0.2, config 0.05)") in line, line
    assert _snapshot(work) == before

    # paths, workers, logging and the schedule length may change
    longer = {**eight, "max_iters": 10, "checkpoint_interval": 5, "log_interval": 2, "quiet": False}
    code, out, err = _pretrain(capsys, DEMO_CONFIG, work, longer, "--resume")
    assert code == 0 and f"checkpoint: {work / 'iter_0000010.pth'}" in out, err
    assert _iters(work) == [6, 8, 10]


def test_settings_a_resume_may_change():
    saved = {"seed": 0, "max_iters": 8, "checkpoint_interval": 2, "num_workers": 0, "device": "cpu",
             "log_interval": 1, "data.root": "/old/frames", "data.flow.root": "/old/cache",
             "model.flow.checkpoint": "/old/raft.pth", "data.crop_size": [32, 64], "optimizer.lr": 0.2,
             "filename_resolved": "configs/pretrain/x.py"}
    moved = {**saved, "max_iters": 20, "checkpoint_interval": 5, "num_workers": "auto", "device": "auto",
             "log_interval": 10, "data.root": "/new/frames", "data.flow.root": "/new/cache",
             "model.flow.checkpoint": "/new/raft.pth", "filename_resolved": "/abs/configs/pretrain/x.py"}
    assert changed_settings(saved, moved) == []
    assert changed_settings(saved, {**moved, "seed": 5, "sync_bn": True}) == [
        "seed (checkpoint 0, config 5)", "sync_bn (checkpoint unset, config True)"]


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path, capsys):
    """A stale higher iteration (unreadable, skipped by --resume) must not push the new one out."""
    opts = {**TINY, "max_iters": 4, "checkpoint_interval": 2, "keep_checkpoints": 1}
    assert _pretrain(capsys, DEMO_CONFIG, tmp_path, opts)[0] == 0
    (tmp_path / "iter_0000100.pth").write_bytes(b"")  # a kill during the write of a longer run
    code, out, err = _pretrain(capsys, DEMO_CONFIG, tmp_path, {**opts, "max_iters": 6}, "--resume")
    assert code == 0 and f"checkpoint: {tmp_path / 'iter_0000006.pth'}" in out, err
    assert (tmp_path / "iter_0000006.pth").is_file() and _iters(tmp_path) == [6, 100]


def test_run_that_died_before_its_first_checkpoint(tmp_path, capsys):
    """Its metrics rows block a fresh run (pointing to --resume auto), which then starts over
    without mixing the dead run's rows into the new ones."""
    opts = {**TINY, "max_iters": 2, "checkpoint_interval": 2}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"iteration": 1, "loss": 9.0}) + "\n")
    code, _, err = _pretrain(capsys, DEMO_CONFIG, tmp_path, opts)
    assert code == 2 and "already holds a run (metrics.jsonl); start it over with --resume auto" in _error_line(err)
    assert _pretrain(capsys, DEMO_CONFIG, tmp_path, opts, "--resume", "auto")[0] == 0
    rows = _rows(tmp_path)
    assert [r["iteration"] for r in rows] == [1, 2] and rows[0]["loss"] != 9.0

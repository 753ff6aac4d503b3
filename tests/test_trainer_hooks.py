"""The trainer as a loop with hooks around one ``run_step`` (issue 22, items 5-6): a notebook step
writes nothing, hooks run in order, log.txt holds what the terminal showed, the benchmark times the
trainer's own step, messages come once per run, and the CLI reads its arguments as a user means them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from flowssl.cli import main
from pretrain.api import Trainer, load_config
from pretrain.hooks import HookBase
from pretrain.trainer import DivergenceError, checkpoints_in

from .conftest import DEMO_CONFIG, REPO, TINY, cli_options
from .test_faults import _nan_at

PRETRAIN = REPO / "configs" / "pretrain"
# TINY's data for the flow objectives, with narrow heads
TINY_FLOW = {k: v for k, v in TINY.items() if not k.startswith("model.")} | {"batch_size": 2}
TINY_HEADS = {"flowe": {"model.projector.hidden_channels": 32, "model.projector.out_channels": 16,
                        "model.predictor.hidden_channels": 32},
              "poodle": {"model.projector.hidden_channels": 32, "model.predictor.hidden_channels": 32,
                         "model.pooled_projector.hidden_channels": 32, "model.pooled_predictor.hidden_channels": 32,
                         "model.decoder.channels": 64}}


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.objective.state_dict().items() if v.is_floating_point()}


def _moved(before: dict[str, torch.Tensor], trainer: Trainer) -> bool:
    after = trainer.objective.state_dict()
    return any(not torch.equal(v, after[k]) for k, v in before.items())


# -- a notebook: build from a config, run one step, write nothing ----------------------------------

def test_a_notebook_step_needs_no_private_method_and_writes_nothing(tmp_path, monkeypatch):
    notebook = tmp_path / "notebook"
    notebook.mkdir()
    monkeypatch.chdir(notebook)
    trainer = Trainer(load_config("pretrain/byol_r14_synthetic_demo.py", TINY))
    before = _weights(trainer)
    logs = trainer.run_step()
    assert trainer.iteration == 1 and np.isfinite(logs["loss"]) and logs["skipped_steps"] == 0
    assert _moved(before, trainer)
    assert trainer.run_step()["lr"] != logs["lr"] and trainer.iteration == 2  # on through the run's schedule
    assert list(notebook.iterdir()) == [] and list(tmp_path.iterdir()) == [notebook]


@pytest.mark.parametrize("method", ["byol", "flowe", "poodle"])
def test_the_first_step_never_mixes_devices(tmp_path, method):
    """A GPU user's default device is not where the model is: with torch's default set to ``meta``,
    every tensor the step (and the checkpoint's probe) makes without naming its device would land
    there and fail; model and batch stay on the CPU."""
    config = PRETRAIN / f"{method}_r14_synthetic_demo.py"
    opts = TINY if method == "byol" else {**TINY_FLOW, **TINY_HEADS[method]}
    trainer = Trainer(load_config(config, opts))
    batches = trainer.next_batches()
    before = _weights(trainer)
    torch.set_default_device("meta")
    try:
        logs = trainer.run_step(batches)
        trainer.check_probe_features()
    finally:
        torch.set_default_device(None)
    assert np.isfinite(logs["loss"]) and trainer.nonfinite_total == 0 and _moved(before, trainer)
    assert {p.device.type for p in trainer.objective.parameters()} == {"cpu"}


# -- hooks --------------------------------------------------------------------------------------

class _Record(HookBase):
    def __init__(self, calls: list, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = calls, fail_at

    def before_train(self) -> None:
        self.calls.append(("before_train", self.trainer.iteration))

    def before_step(self) -> None:
        self.calls.append(("before_step", self.trainer.iteration))

    def after_step(self) -> None:
        self.calls.append(("after_step", self.trainer.iteration, round(self.trainer.logs["loss"], 6)))
        if self.trainer.iteration == self.fail_at:
            raise RuntimeError("a hook stops the run")

    def after_train(self) -> None:
        self.calls.append(("after_train", self.trainer.iteration))


def test_hooks_run_around_each_step_and_after_train_runs_after_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls: list = []
    trainer = Trainer(load_config(DEMO_CONFIG, {**TINY, "max_iters": 2}))
    trainer.register_hooks([_Record(calls)])
    assert trainer.train() is None and list(tmp_path.iterdir()) == []  # no work dir, no files
    assert [c[:2] for c in calls] == [("before_train", 0), ("before_step", 0), ("after_step", 1),
                                      ("before_step", 1), ("after_step", 2), ("after_train", 2)]
    assert all(np.isfinite(c[2]) for c in calls if c[0] == "after_step")

    calls.clear()
    trainer = Trainer(load_config(DEMO_CONFIG, {**TINY, "max_iters": 3}))
    trainer.register_hooks([_Record(calls, fail_at=1)])
    with pytest.raises(RuntimeError, match="a hook stops the run"):
        trainer.train()
    assert [c[0] for c in calls] == ["before_train", "before_step", "after_step", "after_train"]


def test_the_divergence_guard_is_a_hook_around_run_step(tmp_path):
    """Alone, run_step skips and counts; the guard (registered by every trainer) stops the run."""
    cfg = load_config(DEMO_CONFIG, {**TINY, "max_iters": 4, "max_nonfinite_steps": 2})
    trainer = Trainer(cfg)
    _nan_at(trainer, {1, 2, 3})
    before = _weights(trainer)
    for _ in range(3):
        trainer.run_step()
    assert trainer.nonfinite_in_row == 3 and trainer.iteration == 3 and not _moved(before, trainer)
    assert "non-finite loss nan" in trainer.skip_reason

    trainer = Trainer(cfg)
    _nan_at(trainer, {1, 2, 3})
    with pytest.raises(DivergenceError, match=r"2 iterations in a row \(up to 2\) were skipped, the last for "
                                              r"non-finite loss nan"):
        trainer.train()


# -- log.txt ------------------------------------------------------------------------------------------

def test_log_txt_has_the_start_line_every_warning_and_periodic_lines_with_eta(tmp_path):
    work = tmp_path / "w"
    cfg = load_config(DEMO_CONFIG, {**TINY, "max_iters": 4, "log_interval": 2})
    trainer = Trainer(cfg, work)
    _nan_at(trainer, {2})
    trainer.train()
    text = (work / "log.txt").read_text()
    lines = text.splitlines()
    assert re.search(r"INFO start at iteration 0 of 4: byol_r14_synthetic_demo, method byol, effective batch 4 ", text)
    assert re.search(r"WARNING iteration 2: non-finite loss nan.*, update skipped \(1 in a row, 1 in all\)", text)
    periodic = [line for line in lines if re.search(r"INFO iteration \d+/4: loss ", line)]
    assert [re.search(r"iteration (\d+)/4", line)[1] for line in periodic] == ["2", "4"]
    assert all(re.search(r"skipped_steps 1, lr [\d.e-]+, time [\d.e-]+; [\d.e-]+ s/iter, eta \d+:\d\d:\d\d$", line)
               for line in periodic), periodic
    assert f"saved {work / 'iter_0000003.pth'}" in text and lines[-1].endswith("finished at iteration 4")

    # a resume appends (after the setup's own warnings), a divergence ends the log with its reason
    (work / ".iter_0000009.pth.tmp-abc123.pth").write_bytes(b"x")
    trainer = Trainer(load_config(DEMO_CONFIG, {**TINY, "max_iters": 8, "log_interval": 2,
                                                "max_nonfinite_steps": 2}), work, resume=True)
    _nan_at(trainer, {5, 6})
    with pytest.raises(DivergenceError):
        trainer.train()
    more = (work / "log.txt").read_text()
    assert more.startswith(text)
    new = more[len(text):].splitlines()
    assert "WARNING removed 1 temp file(s) left by interrupted writes" in new[0]
    assert any("INFO start at iteration 4 of 8" in line for line in new)
    assert re.search(r"ERROR stopped at iteration 6: 2 iterations in a row \(up to 6\) were skipped", new[-1]), new


def test_a_run_refused_at_setup_leaves_log_txt_as_it_was(tmp_path, capsys):
    work = tmp_path / "w"
    opts = cli_options({**TINY, "max_iters": 2, "checkpoint_interval": 2})
    assert main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(work), "--cfg-options", *opts]) == 0
    before = (work / "log.txt").read_bytes()
    assert main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(work), "--cfg-options", *opts]) == 2
    assert main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(work), "--resume", "--cfg-options", *opts,
                 "seed=3"]) == 2
    assert "already holds a run" in capsys.readouterr().err and (work / "log.txt").read_bytes() == before


# -- rank 0 speaks -------------------------------------------------------------------------------------

def test_two_ranks_print_the_checkpoint_once_and_write_one_log(tmp_path):
    opts = cli_options({**TINY, "max_iters": 2, "checkpoint_interval": 2})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={port}", "--master_addr=127.0.0.1", str(REPO / "tools" / "train.py"),
                          str(DEMO_CONFIG), "--work-dir", str(tmp_path / "ddp"), "--cfg-options", *opts],
                         check=True, env=env, cwd=REPO, capture_output=True, text=True, timeout=600).stdout
    assert out.count("checkpoint:") == 1, out
    assert (tmp_path / "ddp" / "log.txt").read_text().count("start at iteration 0 of 2") == 1


# -- the benchmark runs the trainer's step -----------------------------------------------------------

def test_the_benchmark_times_trainer_run_step(monkeypatch):
    spec = importlib.util.spec_from_file_location("pretrain_step", REPO / "benchmarks" / "pretrain_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    steps = []
    run_step = Trainer.run_step

    def counted(self, batches=None):
        steps.append(len(batches))
        return run_step(self, batches)

    monkeypatch.setattr(Trainer, "run_step", counted)
    r = bench.measure("feature", "resnet14", (32, 64), pairs=1, steps=2, device="cpu", amp="none",
                      flow_kind="given", raft_updates=1, symmetric=False)
    assert steps == [1] * 4 and r["step_s"] > 0  # warm-up, 2 timed, 1 counted: each one trainer step


# -- the CLI reads what the user means -----------------------------------------------------------------

def test_resume_followed_by_the_config_takes_it_as_the_config(tmp_path, capsys):
    work = str(tmp_path / "w")
    two = cli_options({**TINY, "max_iters": 2, "checkpoint_interval": 2})
    # the exact input: --resume, then the config
    assert main(["pretrain", "--resume", str(DEMO_CONFIG), "--work-dir", work, "--cfg-options", *two]) == 2
    err = capsys.readouterr().err
    assert "holds no iter_*.pth checkpoint" in err and "invalid choice" not in err  # mode 'latest', config read
    assert main(["pretrain", "--resume", "auto", str(DEMO_CONFIG), "--work-dir", work, "--cfg-options", *two]) == 0
    four = cli_options({**TINY, "max_iters": 4, "checkpoint_interval": 2})
    assert main(["pretrain", "--resume", str(DEMO_CONFIG), "--work-dir", work, "--cfg-options", *four]) == 0
    assert f"checkpoint: {tmp_path / 'w' / 'iter_0000004.pth'}" in capsys.readouterr().out
    assert [json.loads(r)["iteration"] for r in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3, 4]

    assert main(["pretrain", str(DEMO_CONFIG), "--resume", "lastest", "--work-dir", work]) == 2
    assert "--resume takes latest or auto (or nothing), got 'lastest'" in capsys.readouterr().err
    assert main(["pretrain", "--resume", "--work-dir", work]) == 2
    assert "flowssl pretrain needs a CONFIG" in capsys.readouterr().err


def test_a_short_config_name_resolves_the_same_in_every_subcommand(tmp_path, monkeypatch, capsys):
    """Outside the repository, ``pretrain/x.py`` and ``bench/x.py`` are found under configs/."""
    monkeypatch.chdir(tmp_path)
    opts = cli_options({**TINY, "max_iters": 1, "checkpoint_interval": 1})
    assert main(["pretrain", "pretrain/byol_r14_synthetic_demo.py", "--work-dir", "p", "--cfg-options", *opts]) == 0
    assert main(["bench", "bench/paper_bdd100k.py", "--work-dir", "b", "--print-commands"]) == 0
    assert "flowssl pretrain" in capsys.readouterr().out
    code = main(["flow", "precompute", "pretrain/flowe_r14_synthetic_demo.py", "--out", "cache"])
    assert code == 2 and "has no fixed list of frame pairs" in capsys.readouterr().err  # found, then read

    # one rule, one message: the same missing short name in each subcommand
    (tmp_path / "readout.pth").write_bytes(b"x")
    for argv in (["pretrain", "pretrain/nope.py"], ["bench", "pretrain/nope.py"],
                 ["flow", "precompute", "pretrain/nope.py", "--out", "cache"],
                 ["show", "predictions", "pretrain/nope.py", "readout.pth", "image.png", "--out", "o.png"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "pretrain/nope.py does not exist (configs live under" in err and "Traceback" not in err, (argv, err)
    assert [i for i, _ in checkpoints_in(tmp_path / "p")] == [1]


# -- a failed run leaves no worker behind ------------------------------------------------------------

def test_a_run_that_fails_in_its_workers_leaves_no_worker_alive(tmp_path, capsys):
    """Workers ignore SIGTERM (preemption), so multiprocessing's exit handler cannot terminate one:
    a worker still alive after a failed run made the interpreter (the test suite, a notebook kernel)
    wait for it forever at exit. The run must stop its workers itself, whatever keeps the exception."""
    import multiprocessing

    from .test_faults import _frames, _textured

    _frames(tmp_path / "frames" / "seq", [_textured(3, 64, 128)] * 6)
    for f in sorted((tmp_path / "frames" / "seq").glob("*.png"))[:4]:
        f.write_bytes(b"not an image")
    cfg = tmp_path / "frames_cfg.py"
    cfg.write_text(f"_base_ = [{str(REPO / 'configs/pretrain/flowe_r14_synthetic_demo.py')!r}]\n"
                   f"data = dict(type='FrameFolderPairs', _delete_=True, root={str(tmp_path / 'frames')!r}, "
                   "interval=1, crop_size=(32, 64), scale_range=(1.0, 1.0), flow=dict(type='identity'), "
                   "max_bad_fraction=0.01)\n")
    before = set(multiprocessing.active_children())
    opts = cli_options({k: v for k, v in TINY.items() if not k.startswith("data.")} | {"num_workers": 1})
    for debug in ([], ["--debug"]):  # --debug prints the traceback, which holds the loader's iterator
        assert main([*debug, "pretrain", str(cfg), "--work-dir", str(tmp_path / f"w{len(debug)}"),
                     "--cfg-options", *opts]) == 2
        left = [p for p in multiprocessing.active_children() if p not in before and p.is_alive()]
        assert left == [], left
    capsys.readouterr()

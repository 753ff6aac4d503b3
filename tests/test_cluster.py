"""The cluster's own launch paths (issue 24): tasks started by srun form one process group (or are
refused), a stop signal hands over to submitit's requeue only after the checkpoint is saved, and
``flowssl flow precompute`` shards over ranks and job-array tasks into the cache one process writes."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from flowssl.cli import main
from flowssl.flow_tools import shard_from_env
from pretrain.api import Trainer, TrainingInterrupted, load_config
from pretrain.dist import LaunchError, first_host, slurm_rendezvous
from pretrain.fileio import load_checkpoint
from pretrain.trainer import checkpoints_in

from .conftest import DEMO_CONFIG, REPO, TINY, cli_options
from .test_faults import _frames, _textured

SRUN_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
             "SLURM_STEP_NODELIST": "gpu[007-008]", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}


def _task(procid: int, localid: int = 0, **extra: str) -> dict[str, str]:
    return {**SRUN_STEP, "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), **extra}


# -- tasks started by srun -------------------------------------------------------------------------

def test_srun_tasks_get_one_rendezvous():
    a, b = slurm_rendezvous(_task(0)), slurm_rendezvous(_task(1))
    assert a["MASTER_ADDR"] == b["MASTER_ADDR"] == "gpu007" and a["MASTER_PORT"] == b["MASTER_PORT"]
    assert (a["RANK"], b["RANK"], a["WORLD_SIZE"], a["LOCAL_WORLD_SIZE"]) == ("0", "1", "2", "1")
    # submitit's port rule (TorchDistributedEnvironment): drawn from the job id, so jobs sharing a node differ
    assert int(a["MASTER_PORT"]) == random.Random("4242").randint(20000, 60000)
    other = slurm_rendezvous({**_task(0), "SLURM_JOB_ID": "4243"})
    assert other["MASTER_PORT"] != a["MASTER_PORT"]
    given = slurm_rendezvous(_task(1, MASTER_ADDR="10.0.0.5", MASTER_PORT="29511"))
    assert (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("10.0.0.5", "29511")


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_STEP_ID": "0"}, None),  # one task: as before
    ({}, None),                                                               # no SLURM at all
    (_task(0, WORLD_SIZE="4", RANK="3"), None),                               # torchrun's variables win
])
def test_one_task_or_torchrun_is_not_slurms_group(env, expected):
    assert slurm_rendezvous(env) is expected


@pytest.mark.parametrize(("env", "message"), [
    # sbatch's script itself: SLURM_NTASKS of the allocation, SLURM_PROCID 0, but no srun step
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_NODELIST": "gpu1"},
     "SLURM allocated 8 tasks (SLURM_NTASKS) but this process was not started by srun"),
    ({k: v for k, v in _task(1).items() if k != "SLURM_STEP_NODELIST"}, "neither MASTER_ADDR nor a node list"),
    # srun started two tasks, each ran a standalone torchrun: two groups of one, two rank-0 writers
    (_task(0, WORLD_SIZE="1", RANK="0"), "torchrun's WORLD_SIZE is 1 but srun started 2 tasks"),
])
def test_tasks_that_cannot_join_are_refused(env, message):
    with pytest.raises(LaunchError, match=re.escape(message)):
        slurm_rendezvous(env)


def test_first_host_of_slurm_host_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol: parsed here
    assert first_host("gpu[003-005,9],cpu1") == "gpu003"
    assert first_host("node7") == first_host("node7,node8") == "node7"
    assert first_host("rack[2-3]-n[01-04]") == "rack2-n01"
    scontrol = tmp_path / "scontrol"  # when scontrol exists, its expansion is the truth
    scontrol.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'expanded-a\\nexpanded-b\\n'\n")
    scontrol.chmod(0o755)
    assert first_host("gpu[003-005]") == "expanded-a"


def test_batch_script_with_several_tasks_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "0")
    code = main(["pretrain", str(DEMO_CONFIG), "--work-dir", str(tmp_path / "w"), "--cfg-options", *cli_options(TINY)])
    err = capsys.readouterr().err
    assert code == 2 and "not started by srun" in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


def test_two_srun_tasks_form_one_process_group_with_one_writer(tmp_path):
    """Two processes with SLURM's variables only (what srun gives its tasks; no torchrun variable):
    one 2-process group (gloo), rank 0 alone writes log.txt, metrics and checkpoints and prints."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                        "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    base |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_PORT": str(port)}
    opts = cli_options({**TINY, "max_iters": 2, "checkpoint_interval": 2, "global_batch": 8})
    work = tmp_path / "w"
    procs = [subprocess.Popen([sys.executable, "-m", "flowssl.cli", "pretrain", str(DEMO_CONFIG), "--work-dir",
                               str(work), "--cfg-options", *opts],
                              env={**base, **_task(r, r, SLURM_STEP_NODELIST="127.0.0.1")}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("checkpoint:" in out for out, _ in outs) == 1  # one rank prints
    text = (work / "log.txt").read_text()
    assert text.count("start at iteration 0") == 1 and "× 2 process(es) × 1 accumulation step(s)" in text
    assert [json.loads(r)["iteration"] for r in (work / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert [i for i, _ in checkpoints_in(work)] == [2]


# -- stop signals and a launcher's own handler -------------------------------------------------------

def _signal_at(trainer: Trainer, iteration: int, sig: int) -> None:
    """A real signal to this process, delivered right after ``iteration``'s step."""
    step = trainer.run_step

    def step_then_signal():
        logs = step()
        if trainer.iteration == iteration:
            os.kill(os.getpid(), sig)
        return logs

    trainer.run_step = step_then_signal


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGCONT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_a_launchers_handler_gets_the_signal_after_the_checkpoint(tmp_path, restore_handlers):
    cfg = load_config(DEMO_CONFIG, {**TINY, "max_iters": 2, "checkpoint_interval": 100})
    seen = []

    def launcher(signum, frame):  # what a launcher installed before the run (submitit: its requeue)
        seen.append((signum, [i for i, _ in checkpoints_in(tmp_path / "a")]))

    signal.signal(signal.SIGUSR2, launcher)
    trainer = Trainer(cfg, tmp_path / "a")
    _signal_at(trainer, 1, signal.SIGUSR2)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGUSR2"):  # the handler returned: stop as before
        trainer.train()
    assert seen == [(signal.SIGUSR2, [1])] and signal.getsignal(signal.SIGUSR2) is launcher
    trainer = Trainer(cfg, tmp_path / "b")  # Python's own SIGINT handler is not chained: no KeyboardInterrupt
    _signal_at(trainer, 1, signal.SIGINT)
    with pytest.raises(TrainingInterrupted, match="SIGINT"):
        trainer.train()


class _PretrainJob:
    """A submitit job that pretrains into a work dir, resumable (submitit's Checkpointable)."""

    def __init__(self, work) -> None:
        self.work = work

    def __call__(self):
        return None

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@pytest.mark.parametrize("procid", [0, 1])
def test_usr2_in_a_submitit_job_saves_then_submitit_requeues(tmp_path, monkeypatch, restore_handlers, procid):
    """submitit's own USR2 handler (installed by its job process before the function runs) requeues and
    exits: it runs only once the current iteration is on disk, and the requeued job resumes exactly.
    On a rank other than 0 submitit neither requeues nor exits: the run stops as on SIGTERM."""
    submitit = pytest.importorskip("submitit")
    from submitit.core.utils import DelayedSubmission, JobPaths
    from submitit.slurm.slurm import SlurmJobEnvironment

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_PROCID", str(procid))
    env = SlurmJobEnvironment()
    requeued = []
    cut = tmp_path / "cut"
    monkeypatch.setattr(env, "_requeue", lambda countdown: requeued.append([i for i, _ in checkpoints_in(cut)]))
    delayed = DelayedSubmission(_PretrainJob(str(cut)))
    delayed.set_timeout(60, 3)
    paths = JobPaths(tmp_path / "submitit", job_id="77", task_id=procid)
    paths.folder.mkdir(parents=True)
    env._handle_signals(paths, delayed)  # what submitit's job process does before calling the function

    assert submitit.JobEnvironment._usr_sig() == signal.SIGUSR2
    cfg = load_config(DEMO_CONFIG, {**TINY, "max_iters": 2, "checkpoint_interval": 100})
    trainer = Trainer(cfg, cut)
    _signal_at(trainer, 1, signal.SIGUSR2)
    if procid != 0:
        with pytest.raises(TrainingInterrupted):
            trainer.train()
        assert requeued == [] and [i for i, _ in checkpoints_in(cut)] == [1]
        return
    with pytest.raises(SystemExit):  # submitit's exit after `scontrol requeue`
        trainer.train()
    assert requeued == [[1]]  # requeued with iteration 1 already saved
    assert isinstance(DelayedSubmission.load(paths.submitted_pickle).function, _PretrainJob)
    resumed = load_checkpoint(Trainer(cfg, cut, resume="auto").train())  # what the requeued job runs
    full = load_checkpoint(Trainer(cfg, tmp_path / "full").train())
    assert resumed["iteration"] == 2
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


# -- flow precompute at cluster scale ----------------------------------------------------------------

FRAMES_CONFIG = REPO / "configs" / "pretrain" / "flowe_r50_frames.py"


@pytest.fixture
def frames(tmp_path):
    """Two sequences of 5 frames in two sizes: 8 pairs with interval 1, batches that span both sizes."""
    return _sequences(tmp_path / "frames", n=5, sizes=((64, 128), (72, 144)))


def _sequences(root, n: int, sizes) -> object:
    """A textured frame panning 2 px per frame, one sequence per size."""
    for s, (h, w) in enumerate(sizes):
        base = _textured(s, h, w)
        _frames(root / f"seq{'AB'[s]}", [np.roll(base, 2 * i, 1) for i in range(n)])
    return root


def _precompute(capsys, frames, out, *extra) -> tuple[int, str, str]:
    code = main(["flow", "precompute", str(FRAMES_CONFIG), "--out", str(out), *extra, "--cfg-options",
                 f"data.root={frames}", "data.interval=1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tree(root) -> dict[str, bytes]:
    """Every file of the cache but the shard records, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "flow_cache.shards" not in p.parts}


def test_shards_write_byte_for_byte_the_cache_one_process_writes(tmp_path, frames, capsys):
    code, out, _ = _precompute(capsys, frames, tmp_path / "one", "--batch-size", "3")
    assert code == 0 and "8 computed, 0 already there" in out
    one = _tree(tmp_path / "one")
    assert len(one) == 17 and "flow_cache.json" in one  # 8 pairs × fw/bw + flow_cache.json
    two = tmp_path / "two"
    code, out, _ = _precompute(capsys, frames, two, "--batch-size", "3", "--shard", "1/2", "--workers", "0")
    assert code == 0 and "shard 1/2: 3 computed" in out and "1 of 2 shards finished" in out
    assert not (two / "flow_cache.json").exists()  # the cache is not complete yet
    code, out, _ = _precompute(capsys, frames, two, "--batch-size", "3", "--shard", "0/2")
    assert code == 0 and "shard 0/2: 5 computed" in out and "all 2 shards finished, wrote flow_cache.json" in out
    assert _tree(two) == one
    for i in (2, 0, 1):  # three shards (batch 0..2 one each), in any order
        assert _precompute(capsys, frames, tmp_path / "three", "--batch-size", "3", "--shard", f"{i}/3")[0] == 0
    assert _tree(tmp_path / "three") == one


def test_shards_from_torchrun_srun_and_job_arrays():
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4)
    assert shard_from_env(_task(1)) == (1, 2)
    array = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "2", "SLURM_ARRAY_TASK_MAX": "9",
             "SLURM_ARRAY_TASK_COUNT": "8"}
    assert shard_from_env(array) == (3, 8)
    assert shard_from_env({**array, **_task(1)}) == (7, 16)  # array task 3 of 8, srun task 1 of 2
    with pytest.raises(ValueError, match="not consecutive"):
        shard_from_env({**array, "SLURM_ARRAY_TASK_COUNT": "4"})  # --array=2-9:2


def test_a_killed_shard_resumes_into_the_same_cache(tmp_path, frames, capsys, monkeypatch):
    import flowssl.flow_tools as tools

    code, _, _ = _precompute(capsys, frames, tmp_path / "one", "--batch-size", "2")
    one = _tree(tmp_path / "one")
    cut = tmp_path / "cut"
    real, calls = tools._flow_batches, []

    def killed_at_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill would stop it: after batch 1's files, before batch 3's
        yield from real(*args)

    with monkeypatch.context() as m:
        m.setattr(tools, "_flow_batches", killed_at_second_batch)
        with pytest.raises(KeyboardInterrupt):
            _precompute(capsys, frames, cut, "--batch-size", "2", "--shard", "1/2", "--workers", "0")
    written = sorted(p.name for p in cut.rglob("*_fw.png"))
    assert written == ["000002__000003_fw.png", "000003__000004_fw.png"]  # batch 1: pairs 2, 3
    (cut / "seqA" / "000003__000004_bw.png").unlink()  # killed between a pair's two files
    (cut / "seqA" / ".000003__000004_bw.png.tmp-x1y2z3.png").write_bytes(b"half a png")
    assert _precompute(capsys, frames, cut, "--batch-size", "2", "--shard", "0/2")[0] == 0
    code, _, err = _precompute(capsys, frames, cut, "--merge")
    assert code == 2 and "shard(s) 1 of 2 have not finished" in err and not (cut / "flow_cache.json").exists()
    code, out, _ = _precompute(capsys, frames, cut, "--batch-size", "2", "--shard", "1/2")
    assert code == 0 and "shard 1/2: 3 computed, 1 already there" in out and "wrote flow_cache.json" in out
    assert _tree(cut) == one  # the resumed pair, the stale temp gone, byte for byte
    (cut / "flow_cache.json").unlink()
    code, out, _ = _precompute(capsys, frames, cut, "--merge")
    assert code == 0 and _tree(cut) == one


@pytest.mark.parametrize(("extra", "message"), [
    (["--shard", "2/2"], "--shard takes I/N with 0 <= I < N"),
    (["--shard", "0/2", "--batch-size", "3"], "is being filled with --batch-size 2"),
    (["--shard", "0/3", "--batch-size", "2"], "is being filled with --shard I/2"),
    (["--shard", "0/2", "--batch-size", "2", "--scale", "32"], "is being filled with other settings"),
    (["--batch-size", "2", "--scale", "32"], "is being filled with other settings"),  # one process too
    (["--shard", "0/2", "--batch-size", "0"], "--batch-size must be a positive integer"),
])
def test_shards_that_would_not_fit_together_are_refused(tmp_path, frames, capsys, extra, message):
    cut = tmp_path / "cut"
    assert _precompute(capsys, frames, cut, "--batch-size", "2", "--shard", "1/2")[0] == 0
    before = _tree(cut)
    code, _, err = _precompute(capsys, frames, cut, *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert _tree(cut) == before


def test_raft_runs_in_batches_and_shards_agree(tmp_path, capsys, monkeypatch):
    from torchvision.models.optical_flow import raft_small

    from pretrain.flow.sources import RAFTFlow

    weights = tmp_path / "raft_small_random.pth"
    torch.manual_seed(0)
    torch.save(raft_small(weights=None).state_dict(), weights)
    sizes = []
    forward = RAFTFlow.forward

    def counted(self, img1, img2, info=None):
        sizes.append(img1.shape[0])
        return forward(self, img1, img2, info)

    monkeypatch.setattr(RAFTFlow, "forward", counted)
    frames = _sequences(tmp_path / "frames", n=3, sizes=((128, 128), (136, 128)))  # RAFT: 128 px at least
    raft = ["--source", "raft", "--checkpoint", str(weights), "--batch-size", "2"]
    small = ["model.flow.size=small", "model.flow.num_flow_updates=2"]

    def run(out, *extra):
        code = main(["flow", "precompute", str(FRAMES_CONFIG), "--out", str(out), *raft, *extra, "--cfg-options",
                     f"data.root={frames}", "data.interval=1", *small])
        assert code == 0, capsys.readouterr().err

    run(tmp_path / "one")
    assert sizes == [2, 2]  # batches of 2 pairs: seqA's 2, seqB's 2
    sizes.clear()
    run(tmp_path / "two", "--shard", "1/2")
    run(tmp_path / "two", "--shard", "0/2")
    assert sizes == [2, 2] and _tree(tmp_path / "two") == _tree(tmp_path / "one")

"""flowssl bench --launcher local|slurm: the plan's steps as submitit jobs, --status, --print-commands,
the paper's readout batch, and the bad inputs (one line, exit 2, nothing submitted)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from flowssl import launch
from flowssl.cli import main
from pretrain.config import ConfigError

from .conftest import REPO

PAPER = str(REPO / "configs/bench/paper_bdd100k.py")
MMSEG_TINY = "configs/mmseg/deeplabv1_flowssl-r14-frozen_1xb4-300_synthetic-64x128.py"
CITYSCAPES_4XB2 = REPO / "configs/mmseg/deeplabv1_flowssl-r50-frozen_4xb2-40k_cityscapes-512x1024.py"


def _plan(tmp_path: Path, extra: str = "", readout: str = MMSEG_TINY) -> str:
    """Rand Init (one checkpoint at iteration 0) and a 4-iteration BYOL of 32×64 crops, one mmseg
    readout of 2 iterations on a 2-frame synthetic set."""
    (tmp_path / "byol_tiny.py").write_text(f'''
_base_ = ["{REPO}/configs/pretrain/byol_r14_synthetic_demo.py"]
batch_size = 2
deterministic = True
data = dict(crop_size=(32, 64), height=64, width=128, num_videos=4)
model = dict(projector=dict(hidden_channels=32, out_channels=16), predictor=dict(hidden_channels=32))
''')
    plan = tmp_path / "plan.py"
    plan.write_text(f'''
methods = dict(rand_init="{REPO}/configs/pretrain/rand_init_r14_synthetic_demo.py", byol="{tmp_path}/byol_tiny.py")
pretrain_options = dict(max_iters=4, checkpoint_interval=1, quiet=True, num_workers=0, device="cpu")
seeds = [0]
synthetic = dict(videos=dict(train=1, val=1), frames_per_video=2)
readouts = [dict(name="deeplabv1", framework="mmseg", dataset="synthetic", config="{readout}",
                 options={{"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "param_scheduler.0.end": 2,
                          "default_hooks.checkpoint.interval": 2}})]
{extra}''')
    return str(plan)


def _refused(capsys, argv: list[str], *words: str) -> str:
    """``flowssl`` exits 2 with one error line that holds ``words``."""
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flowssl: error:")]
    assert len(err) == 1 and all(w in err[0] for w in words), err
    return err[0]


def _status(work: Path) -> dict:
    return json.loads((work / "status.json").read_text())


def _sigterm_when_saved(work: Path, key: str, checkpoint: Path, timeout_s: float = 900) -> None:
    """SIGTERM the local job running ``key`` (a cluster's preemption or scancel) once it saved ``checkpoint``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        entry = _status(work).get(key, {}) if (work / "status.json").is_file() else {}
        if entry.get("state") == "running" and checkpoint.is_file():
            os.kill(int(entry["job_id"]), signal.SIGTERM)  # submitit's local controller forwards it to the task
            return
        time.sleep(0.05)
    raise AssertionError(f"{key} never saved {checkpoint}")


@pytest.mark.slow
def test_local_launcher_matches_in_process_and_resubmits_only_a_killed_job(tmp_path, capsys):
    pytest.importorskip("mmseg")
    plan = _plan(tmp_path)
    inproc, work = tmp_path / "inprocess", tmp_path / "local"
    assert main(["bench", plan, "--work-dir", str(inproc)]) == 0
    capsys.readouterr()

    # first run: the BYOL pretraining job is killed after its first checkpoint
    byol = work / "pretrain" / "byol" / "seed0"
    rc: list[int] = []
    argv = ["bench", plan, "--work-dir", str(work), "--launcher", "local"]
    run = threading.Thread(target=lambda: rc.append(main(argv)))
    run.start()
    _sigterm_when_saved(work, "pretrain/byol/seed0", byol / "iter_0000001.pth")
    run.join()
    out = capsys.readouterr().out
    assert rc == [0] and "pretrain/byol/seed0: failed" in out and "run the same command again" in out
    first = _status(work)
    assert first["pretrain/byol/seed0"]["state"] == "failed" and Path(first["pretrain/byol/seed0"]["log"]).is_file()
    assert first["results/byol/synthetic/deeplabv1/seed0"]["state"] == "blocked"  # never ran on a missing encoder
    assert first["results/rand_init/synthetic/deeplabv1/seed0"]["state"] == "done"
    assert main(["bench", plan, "--work-dir", str(work), "--status"]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"pretrain/byol/seed0 +failed \(job \d+, .*TrainingInterrupted.*; log: /", shown)
    assert re.search(r"results/rand_init/synthetic/deeplabv1/seed0 +done", shown)

    # the same command again: only BYOL's steps (and the tables) are submitted, and BYOL resumes
    assert main(argv) == 0
    out = capsys.readouterr().out
    second = _status(work)
    for key in ("pretrain/rand_init/seed0", "converted/rand_init/seed0", "results/rand_init/synthetic/deeplabv1/seed0"):
        assert second[key]["job_id"] == first[key]["job_id"], key  # not resubmitted
    assert second["pretrain/byol/seed0"]["job_id"] != first["pretrain/byol/seed0"]["job_id"]
    assert all(second[k]["state"] == "done" for k in second), second
    resumed = re.search(r"resumed from \S+iter_(\d+)\.pth at iteration (\d+)", (byol / "log.txt").read_text())
    assert resumed and int(resumed[2]) >= 1  # never from 0
    assert "| synthetic | byol |" in out and "| synthetic | rand_init |" in out

    # what the jobs produced is what the in-process run produced: the same encoder, the same readout
    a = torch.load(inproc / "pretrain/byol/seed0/iter_0000004.pth", weights_only=True)["encoder"]
    b = torch.load(byol / "iter_0000004.pth", weights_only=True)["encoder"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    for method in ("rand_init", "byol"):
        rel = f"results/{method}/synthetic/deeplabv1/seed0/results.json"
        assert json.loads((work / rel).read_text())["metrics"] == json.loads((inproc / rel).read_text())["metrics"]


def _scripts(work: Path) -> dict[str, str]:
    """The dry run's sbatch scripts by step (``001_pretrain_flowe_seed0.sh`` → ``pretrain_flowe_seed0``)."""
    return {p.stem.split("_", 1)[1]: p.read_text() for p in sorted((work / "slurm_dry_run").glob("*.sh"))}


def _flags(script: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M))


def _job_ids(out: str) -> dict[str, str]:
    return dict(re.findall(r"^(\S+): job (\d+),", out, re.M))


def test_slurm_dry_run_of_the_paper_plan(tmp_path, capsys):
    """submitit's SLURM executor builds every job's sbatch script; nothing is submitted (no srun here)."""
    work = tmp_path / "w"
    assert main(["bench", PAPER, "--work-dir", str(work), "--launcher", "slurm", "--dry-run", "--partition", "gpu",
                 "--account", "vision", "--timeout", "600"]) == 0
    out = capsys.readouterr().out
    ids, scripts = _job_ids(out), _scripts(work)
    methods = ("rand_init", "byol", "byol_crop", "byol_crop_video", "flowe", "flow_similarity")
    # four readouts per method, two of them detectron2's: skipped (and said so) where it is not installed
    have_d2 = importlib.util.find_spec("detectron2") is not None
    readouts = 4 if have_d2 else 2
    assert len(scripts) == len(ids) == len(methods) * (1 + 1 + readouts) + 1 and "nothing submitted" in out
    assert have_d2 or "results/flowe/bdd100k/c4/seed0: skipped (detectron2 is not installed)" in out
    assert not (work / "status.json").exists() and not (work / "submitit").exists()

    pre = _flags(scripts["pretrain_flowe_seed0"])  # the paper's 64 GPUs: 8 nodes × 8, one task per GPU
    assert (pre["nodes"], pre["ntasks-per-node"], pre["gpus-per-node"]) == ("8", "8", "8")
    assert pre["signal"] == "USR2@120" and "requeue" in pre and "dependency" not in pre
    assert (pre["partition"], pre["account"], pre["time"]) == ("gpu", "vision", "600")
    assert "python -u -m submitit.core._submit" in scripts["pretrain_flowe_seed0"]

    conv = _flags(scripts["converted_flowe_seed0"])
    assert conv["dependency"] == f"afterok:{ids['pretrain/flowe/seed0']}" and "gpus-per-node" not in conv
    seg = _flags(scripts["results_flowe_bdd100k_deeplabv1_seed0"])  # 8xb2: 8 GPUs, the paper's batch 16
    assert seg["dependency"] == f"afterok:{ids['converted/flowe/seed0']}" and seg["kill-on-invalid-dep"] == "yes"
    assert (seg["nodes"], seg["ntasks-per-node"], seg["gpus-per-node"]) == ("1", "8", "8")
    assert seg["signal"] == "USR2@120" and "requeue" in seg
    if have_d2:
        det = _flags(scripts["results_flowe_bdd100k_c4_seed0"])  # detectron2 starts its own process per GPU
        assert (det["ntasks-per-node"], det["gpus-per-node"]) == ("1", "8")
    tables = _flags(scripts["tables"])
    assert sorted(tables["dependency"].removeprefix("afterany:").split(":"), key=int) == sorted(
        (v for k, v in ids.items() if k != "tables"), key=int)


def test_slurm_rerun_skips_queued_jobs_and_status_shows_requeues(tmp_path, capsys, monkeypatch):
    """With a stand-in for sbatch/sacct: the second submission leaves alive jobs alone and chains the
    new ones to them; --status reads SLURM's states and the jobs' attempt counts."""
    import submitit

    monkeypatch.setattr(submitit, "SlurmExecutor", launch._dry_run_executor())
    monkeypatch.setattr(launch._dry_run_executor(), "scripts", [])
    states: dict[str, str] = {}
    monkeypatch.setattr(launch, "_slurm_state", lambda entry: states.get(str(entry["job_id"]), "FAILED"))
    work = tmp_path / "w"
    argv = ["bench", PAPER, "--work-dir", str(work), "--launcher", "slurm", "--seeds", "0"]
    assert main(argv) == 0
    first = _job_ids(capsys.readouterr().out)
    assert _status(work)["pretrain/flowe/seed0"]["state"] == "queued"
    states.update({first["pretrain/flowe/seed0"]: "RUNNING", first["pretrain/byol/seed0"]: "PENDING"})
    record = work / "jobs" / "pretrain_flowe_seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"job_id": first["pretrain/flowe/seed0"], "attempts": 3, "state": "running"}))
    assert main([*argv, "--status"]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"pretrain/flowe/seed0 +requeued 2 time\(s\), running \(job \d+\)", shown)
    assert re.search(r"pretrain/byol/seed0 +queued \(job \d+\)", shown)
    assert re.search(r"pretrain/rand_init/seed0 +failed \(job \d+, FAILED\); log: /\S+_0_log.err", shown)
    assert _status(work)["pretrain/flowe/seed0"]["state"] == "requeued"

    assert main(argv) == 0
    out = capsys.readouterr().out
    second = _job_ids(out)
    assert "pretrain/flowe/seed0" not in second and "pretrain/byol/seed0" not in second  # still alive
    assert f"pretrain/flowe/seed0: job {first['pretrain/flowe/seed0']} is running, not resubmitted" in out
    assert "pretrain/rand_init/seed0" in second  # failed: submitted again
    conv = launch._dry_run_executor().scripts  # the new conversion waits for the running job
    flowe_conv = [text for _, text in conv if "flowssl-converted_flowe_seed0" in text][-1]
    assert f"--dependency=afterok:{first['pretrain/flowe/seed0']}\n" in flowe_conv


def test_print_commands_are_what_a_cluster_runs(tmp_path, capsys):
    work = tmp_path / "w"
    assert main(["bench", PAPER, "--work-dir", str(work), "--print-commands"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    pre = [line for line in lines if line.startswith("torchrun") and "flowssl pretrain" in line]
    assert len(pre) == 6 and all("--nnodes=8 " in line and "--nproc-per-node=8 " in line for line in pre)
    assert f"--work-dir {work.resolve()}/pretrain/flowe/seed0 --resume auto" in out
    assert "effective batch 128 = 64 GPUs × 2 × 1 accumulation step(s)" in out  # the paper's, no accumulation
    seg = [line for line in lines if "mmseg_train.py" in line]
    assert len(seg) == 12 and all(line.startswith("torchrun --standalone --nproc-per-node=8 /") for line in seg)
    assert len([line for line in lines if "flowssl.d2_train_net" in line and "--num-gpus 8" in line]) == 12
    assert len([line for line in lines if "mmseg_test.py" in line]) == 12 and f"flowssl tables {work.resolve()}" in out
    assert not work.exists()  # nothing written


def test_readout_on_fewer_gpus_than_its_config_is_refused_or_scaled(tmp_path, capsys):
    """A 4xb2 config on one process: refused before any compute, or its lr scaled by the plan's rule
    with the effective batch logged."""
    from flowssl.bench import Bench, readout_batch

    plan = _plan(tmp_path, readout=str(CITYSCAPES_4XB2))
    work = tmp_path / "w"
    _refused(capsys, ["bench", plan, "--work-dir", str(work)], "batch 8 = 4 GPUs × 2", "1 device(s)",
             "--launcher slurm", "readout_batch_rule")
    assert not (work / "pretrain").exists()
    with pytest.raises(ConfigError, match="readout_batch_rule must be one of"):
        Bench(_plan(tmp_path, "readout_batch_rule = 'linear'", str(CITYSCAPES_4XB2)), work).check_readout_batches()

    assert readout_batch(CITYSCAPES_4XB2, 2, 1, "linear_lr", "x")[:2] == (2, 0.25)
    assert readout_batch(CITYSCAPES_4XB2, 2, 1, "sqrt_lr", "x")[:2] == (2, 0.5)
    assert readout_batch(CITYSCAPES_4XB2, 2, 4, None, "x")[:2] == (8, 1.0)  # the config's GPUs: unchanged
    pytest.importorskip("mmseg")
    from mmseg_plugin.runner import load_cfg

    bench = Bench(_plan(tmp_path, "readout_batch_rule = 'linear_lr'", str(CITYSCAPES_4XB2)), work)
    bench.check_readout_batches()
    cfg, terminal = load_cfg(CITYSCAPES_4XB2), io.StringIO()
    lr = cfg.optim_wrapper.optimizer.lr
    bench._keep_paper_batch(CITYSCAPES_4XB2, cfg, {"name": "deeplabv1"}, terminal)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(lr / 4)
    assert "effective batch 2 = 1 device(s) × 2 (config: 8 = 4 GPUs × 2), lr ×0.25" in terminal.getvalue()


def test_a_preempted_job_hands_the_signal_to_submitit_which_requeues_it(tmp_path, monkeypatch):
    """The trainer saved on submitit's USR2 and raised TrainingInterrupted: the job passes the signal
    back to submitit's handler (which calls checkpoint() — this same job — and requeues it)."""
    from submitit.helpers import Checkpointable

    from pretrain.trainer import TrainingInterrupted

    class Env:
        USR_SIG, global_rank, num_tasks, job_id = "USR2", 0, 1, "42"

    bench = launch.Bench(_plan(tmp_path), tmp_path / "w")
    step = next(s for s in launch.plan_steps(bench) if s.key == "pretrain/byol/seed0")
    job = launch.job_for(bench, step)
    assert isinstance(job, Checkpointable) and job.checkpoint().function is job  # requeued as itself

    def preempted(_bench):
        raise TrainingInterrupted(signal.SIGUSR2, tmp_path / "iter_0000002.pth")

    monkeypatch.setattr(launch, "_job_environment", lambda: Env())
    monkeypatch.setattr(job, "_run", preempted)
    caught: list[int] = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: caught.append(signum))  # submitit's, standing in
    try:
        with pytest.raises(TrainingInterrupted):
            job()
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert caught == [signal.SIGUSR2]
    record = json.loads((tmp_path / "w" / "jobs" / "pretrain_byol_seed0.json").read_text())
    assert (record["state"], record["job_id"], record["attempts"]) == ("interrupted", "42", 1)


@pytest.mark.parametrize("argv, words", [
    (["--launcher", "pbs"], ["unknown launcher 'pbs'", "inprocess, local, slurm"]),
    (["--launcher", "local", "--partition", "gpu"], ["--partition gpu is a SLURM setting", "--launcher local"]),
    (["--partition", "gpu"], ["--partition sets a job's resources", "--launcher slurm"]),
    (["--launcher", "local", "--dry-run"], ["--dry-run", "--launcher slurm"]),
    (["--launcher", "slurm"], ["no 'srun' on this machine", "--dry-run"]),
])
def test_bad_launcher_input_is_one_line_and_submits_nothing(tmp_path, capsys, argv, words):
    work = tmp_path / "w"
    _refused(capsys, ["bench", _plan(tmp_path), "--work-dir", str(work), *argv], *words)
    assert not work.exists()


def test_a_plan_naming_a_partition_with_the_local_launcher_is_refused(tmp_path, capsys):
    work = tmp_path / "w"
    plan = _plan(tmp_path, "slurm = dict(partition='gpu')")
    _refused(capsys, ["bench", plan, "--work-dir", str(work), "--launcher", "local"],
             "slurm.partition='gpu' is a SLURM setting")
    _refused(capsys, ["bench", _plan(tmp_path, "slurm = dict(partion='gpu')"), "--work-dir", str(work), "--launcher",
                      "slurm", "--dry-run"], "slurm.partion is not a job setting")
    assert not work.exists()


def test_missing_submitit_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    work = tmp_path / "w"
    _refused(capsys, ["bench", _plan(tmp_path), "--work-dir", str(work), "--launcher", "local"],
             "submitit, which is not installed", "pip install submitit")
    assert not work.exists()

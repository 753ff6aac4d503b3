"""``flowssl bench PLAN --launcher local|slurm``: a plan's steps as submitit jobs, ``--status``, and
``--print-commands`` (what a cluster runs, by hand).

One job per step: each method × seed's pretraining (one, possibly multi-node, job running the same
trainer with ``resume="auto"``), the conversion of its checkpoint, each readout (mmseg on its config's
GPU count through mmengine's SLURM launcher, detectron2 through its own launcher), and the tables.
Every job is :class:`submitit.helpers.Checkpointable`: at a time-out (or a preemption that sends the
signal) submitit requeues the same callable, and a pretraining resumes from its newest checkpoint.

``slurm``: everything is submitted at once and chained by SLURM (``afterok``; the tables job
``afterany``, so it writes what finished). ``local`` (submitit's LocalExecutor, which has no
dependencies): one job at a time, stage by stage (pretraining, conversion, readouts, tables); a step
whose dependency failed is not run. Either way, what is finished (its output file) is skipped, and
with ``slurm`` so is what is still queued or running (its job id in ``status.json``).

Files under the work dir: ``status.json`` (each step's job id, launcher, state, log), ``jobs/<step>.json``
(written by the job itself: attempts — a requeue is one more —, state, error), ``submitit/`` (submitit's
pickles and the jobs' stdout/stderr), ``tables.md`` (the tables job's output).
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import logging
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.config import CONFIG_DIR, ConfigError, load_config
from pretrain.fileio import write_text_atomic

from .bench import Bench, converted_path, paper_gpus

try:  # a dependency (pyproject.toml); without it only --launcher local/slurm are refused (submitit_module)
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover
    Checkpointable = object  # type: ignore[misc,assignment]

LAUNCHERS = ("inprocess", "local", "slurm")
# plan key ``slurm = dict(...)`` (the command line wins) → type; the first four exist on SLURM only
RESOURCE_TYPES: dict[str, type | tuple[type, ...]] = {
    "partition": str, "account": str, "qos": str, "constraint": str, "nodes": int, "gpus_per_node": int,
    "timeout": int, "cpus_per_task": int, "mem_gb": (int, float), "signal_delay_s": int, "max_requeues": int,
}
SLURM_ONLY = ("partition", "account", "qos", "constraint")
# timeout in minutes (SLURM --time); signal_delay_s: USR2 this long before it, time to finish a step and
# save; max_requeues: time-outs after which submitit stops requeueing (preemptions do not count)
DEFAULT_RESOURCES = {"nodes": 1, "gpus_per_node": 8, "timeout": 24 * 60, "signal_delay_s": 120, "max_requeues": 20}
CLI_OPTIONS = ("partition", "nodes", "gpus_per_node", "timeout", "account", "qos", "constraint")
CONVERT_TARGETS = {"mmseg": "mmseg", "d2": "detectron2"}  # readout framework → conversion target
SHORT_JOB_MIN = 60  # the conversion and tables jobs
# SLURM states of a job that will still run: not resubmitted, its dependants wait for it. UNKNOWN
# (sacct has no record, e.g. just submitted) counts as alive: two jobs must never share a work dir.
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
         "CONFIGURING", "COMPLETING", "PREEMPTED", "UNKNOWN"}


@dataclass(frozen=True)
class Step:
    """One job of a plan: ``key`` is its entry in status.json and the folder of its output."""

    kind: str  # pretrain | convert | readout | tables
    key: str
    method: str = ""
    seed: int = 0
    readout: str = ""  # "<name>/<dataset>"
    deps: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return self.key.replace("/", "_")


# -- the plan's steps ---------------------------------------------------------------------------------
def conversion_targets(bench: Bench) -> list[str]:
    """The formats the plan's readouts read (detectron2's only when detectron2 is installed: its
    readouts are reported as skipped otherwise, as in process)."""
    frameworks = {spec["framework"] for spec in bench.plan.readouts}
    if importlib.util.find_spec("detectron2") is None:
        frameworks.discard("d2")
    return sorted({CONVERT_TARGETS[f] for f in frameworks if f in CONVERT_TARGETS})


def plan_steps(bench: Bench) -> list[Step]:
    """The plan's jobs in stage order (pretraining, conversion, readouts, tables), each naming the
    steps it waits for."""
    checkpoints = bench.plan.get("checkpoints", {})
    pretrain, convert, readouts = [], [], []
    for seed in bench.seeds:
        for method in bench.method_names():
            before: tuple[str, ...] = ()
            if method in bench.plan.methods and method not in checkpoints:
                pretrain.append(Step("pretrain", f"pretrain/{method}/seed{seed}", method, seed))
                before = (pretrain[-1].key,)
            if conversion_targets(bench):
                convert.append(Step("convert", f"converted/{method}/seed{seed}", method, seed, deps=before))
                before = (convert[-1].key,)
            for spec in bench.plan.readouts:
                key = f"results/{method}/{spec['dataset']}/{spec['name']}/seed{seed}"
                readouts.append(Step("readout", key, method, seed, f"{spec['name']}/{spec['dataset']}", before))
    steps = pretrain + convert + readouts
    return [*steps, Step("tables", "tables", deps=tuple(s.key for s in steps))]


def readout_spec(bench: Bench, step: Step) -> dict[str, Any]:
    for spec in bench.plan.readouts:
        if f"{spec['name']}/{spec['dataset']}" == step.readout:
            return dict(spec)
    raise ConfigError(f"plan {bench.plan_path} no longer has the readout {step.readout} this job was submitted for")


def job_record_path(bench: Bench, step: Step) -> Path:
    return bench.work / "jobs" / f"{step.slug}.json"


def job_record(bench: Bench, step: Step) -> dict[str, Any]:
    path = job_record_path(bench, step)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def trained_checkpoint_of(bench: Bench, method: str, seed: int) -> Path:
    """The checkpoint a method's readouts read: the plan's own file, or what its pretraining saved last
    (one run per work dir: the trainer refuses a used one, so the newest is that run's)."""
    from pretrain.hooks import checkpoints_in

    if method in bench.plan.get("checkpoints", {}):
        return bench._path(bench.plan.checkpoints[method], "checkpoint")
    work = bench.work / "pretrain" / method / f"seed{seed}"
    found = checkpoints_in(work) if work.is_dir() else []
    if not found:
        raise FileNotFoundError(f"{work} holds no checkpoint: the pretraining of {method} (seed {seed}) has not run")
    return found[-1][1]


def finished(bench: Bench, step: Step) -> bool:
    """Whether a step's output is there (a job that died half-way leaves none: outputs are atomic)."""
    if step.kind == "pretrain":
        record = job_record(bench, step) or bench.status.get(step.key, {})
        return record.get("state") == "done" and Path(record.get("checkpoint") or "\0").is_file()
    if step.kind == "convert":
        outs = [converted_path(bench.work, step.method, step.seed, t) for t in conversion_targets(bench)]
        return all(p.is_file() and Path(f"{p}.json").is_file() for p in outs)
    if step.kind == "readout":
        return (bench.work / step.key / "results.json").is_file()
    return (bench.work / "tables.md").is_file()


# -- the job ------------------------------------------------------------------------------------------
def _job_environment() -> Any:
    """submitit's view of the running job (rank, job id), or None outside a submitit job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    from submitit import JobEnvironment

    return JobEnvironment()


class BenchJob(Checkpointable):
    """A step run as a submitit job: re-reads the plan on the node and runs the step as ``flowssl bench``
    does in process. Rank 0 keeps ``jobs/<step>.json`` (attempts, state, error). Checkpointable: at a
    time-out submitit's ``checkpoint()`` resubmits this same callable, and a pretraining, run with
    ``resume="auto"``, continues from its newest checkpoint (the trainer saves the current iteration
    on the signal first)."""

    def __init__(self, plan: str, work: str, step: Step, devices: int = 1, mmseg_launcher: str = "none") -> None:
        self.plan, self.work, self.step = plan, work, step
        self.devices, self.mmseg_launcher = devices, mmseg_launcher

    def __call__(self) -> str:
        from pretrain.trainer import TrainingInterrupted

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")  # as the CLI
        env = _job_environment()
        rank = env.global_rank if env is not None else 0
        if env is not None and env.num_tasks > 1:  # one port per job: two jobs may share a node
            os.environ.setdefault("MASTER_PORT", str(20000 + int("".join(filter(str.isdigit, env.job_id))) % 20000))
        bench = Bench(self.plan, self.work, [self.step.seed])
        bench.status_path, bench.status = None, {}  # status.json is the submitter's; this job writes jobs/<step>.json
        bench.readout_devices, bench.mmseg_launcher = self.devices, self.mmseg_launcher
        path = job_record_path(bench, self.step)
        record = job_record(bench, self.step)
        job_id = env.job_id if env is not None else ""
        attempts = record.get("attempts", 0) + 1 if record.get("job_id") == job_id else 1
        if rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            record = {"key": self.step.key, "job_id": job_id, "attempts": attempts, "state": "running",
                      "host": os.uname().nodename, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_text_atomic(json.dumps(record, indent=2), path)

        def end(state: str, **info: Any) -> None:
            if rank == 0:
                done = {**record, **bench.status.get(self.step.key, {}), **info, "state": state,
                        "ended": time.strftime("%Y-%m-%d %H:%M:%S")}
                done.pop("time", None)
                write_text_atomic(json.dumps(done, indent=2), path)

        try:
            result = self._run(bench)
        except TrainingInterrupted as exc:
            end("interrupted", error=f"{type(exc).__name__}: {exc}")
            if env is not None and exc.signum == getattr(signal, "SIG" + env.USR_SIG):
                # the trainer saved this iteration on submitit's time-out signal; hand the signal back to
                # submitit's handler (restored when training ended): it requeues this job (checkpoint())
                signal.raise_signal(exc.signum)
            raise
        except Exception as exc:
            end("failed", error=f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}")
            raise
        end("skipped" if result.startswith("skipped") else "done")
        return result

    def _run(self, bench: Bench) -> str:
        step = self.step
        if step.kind == "pretrain":
            bench.pretrain(step.method, step.seed)
            return "done"
        if step.kind == "convert":
            from d2_plugin.export import convert

            ckpt = trained_checkpoint_of(bench, step.method, step.seed)
            for target in conversion_targets(bench):
                convert(ckpt, target, converted_path(bench.work, step.method, step.seed, target), force=True)
            return "done"
        if step.kind == "readout":
            state = bench.readout(step.method, step.seed, trained_checkpoint_of(bench, step.method, step.seed),
                                  readout_spec(bench, step), bench.synthetic_root())
            if state.startswith("failed"):
                raise RuntimeError(f"readout {step.key} {state}")
            return state
        from .tables import render

        table = render(bench.work / "results", "md")
        write_text_atomic(table, bench.work / "tables.md")
        print(table)
        return "done"


# -- resources and executors ----------------------------------------------------------------------------
def submitit_module() -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise ConfigError("--launcher local/slurm runs the plan's jobs through submitit, which is not installed: "
                          "pip install submitit (tools/install.sh installs it), or drop --launcher to run the plan in "
                          "this process") from exc
    return submitit


def resources(bench: Bench, cli: dict[str, Any], launcher: str) -> dict[str, Any]:
    """The plan's ``slurm = dict(...)`` with the command line's options over it, checked: one line
    naming the key for a typo, a wrong type, or a SLURM setting given to ``--launcher local``."""
    plan = bench.plan.get("slurm") or {}
    where = f"plan {bench.plan_path}"
    if not isinstance(plan, dict):
        raise ConfigError(f"{where}: 'slurm' must be a dict of job settings ({', '.join(RESOURCE_TYPES)})")
    unknown = sorted(set(plan) - set(RESOURCE_TYPES))
    if unknown:
        raise ConfigError(f"{where}: slurm.{unknown[0]} is not a job setting; known: {', '.join(RESOURCE_TYPES)}")
    given = {k: v for k, v in cli.items() if v is not None}
    res = {**DEFAULT_RESOURCES, **plan, **given}
    for key, value in res.items():
        name = f"--{key.replace('_', '-')}" if key in given else f"{where}: slurm.{key}"
        if RESOURCE_TYPES[key] is str:
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, RESOURCE_TYPES[key]) or value <= 0:
            raise ConfigError(f"{name} must be a positive number, got {value!r}")
    if launcher == "local":
        named = [k for k in SLURM_ONLY if res.get(k)] + (["nodes"] if res["nodes"] > 1 else [])
        if named:
            key = named[0]
            name = f"--{key.replace('_', '-')} {res[key]}" if key in given else f"{where}: slurm.{key}={res[key]!r}"
            raise ConfigError(f"{name} is a SLURM setting, but --launcher local runs every job on this machine "
                              "(one node): use --launcher slurm, or drop it")
    return res


def slurm_job(bench: Bench, step: Step, res: dict[str, Any], after: list[str], how: str) -> tuple[dict, int, str]:
    """(sbatch parameters for submitit's SlurmExecutor, devices, mmengine launcher) of one step.
    Pretraining: ``nodes`` × ``gpus_per_node`` tasks, one per GPU (torch.distributed from SLURM's
    variables). An mmseg readout: its config's GPU count (``8xb2`` → 8 tasks), so it trains at the
    paper's batch. detectron2: one task per node, its launcher starts a process per GPU."""
    params: dict[str, Any] = {k: res[k] for k in (*SLURM_ONLY, "cpus_per_task") if res.get(k)}
    if res.get("mem_gb"):
        params["mem"] = f"{res['mem_gb']}GB"
    extra: dict[str, Any] = {"requeue": True}  # SLURM may requeue it (preemption, node failure)
    if after:
        params["dependency"] = f"{how}:{':'.join(after)}"
        extra["kill-on-invalid-dep"] = "yes"  # a failed dependency cancels it instead of leaving it pending
    params.update(job_name=f"flowssl-{step.slug}", time=res["timeout"], signal_delay_s=res["signal_delay_s"],
                  additional_parameters=extra, nodes=1, ntasks_per_node=1)
    gpn, devices, launcher = res["gpus_per_node"], 1, "none"
    if step.kind == "pretrain":
        params.update(nodes=res["nodes"], ntasks_per_node=gpn, gpus_per_node=gpn)
        devices = res["nodes"] * gpn
    elif step.kind == "readout":
        spec = readout_spec(bench, step)
        if spec["framework"] == "mmseg":
            gpus = paper_gpus(bench._path(spec["config"]))[0]
            per_node = min(gpus, gpn)
            if gpus % per_node:
                raise ConfigError(f"readout '{spec['name']}' ({Path(spec['config']).name}) is tuned for {gpus} GPUs, "
                                  f"which {gpn} GPUs per node cannot hold evenly; set --gpus-per-node to a divisor")
            params.update(nodes=gpus // per_node, ntasks_per_node=per_node, gpus_per_node=per_node)
            devices, launcher = gpus, "slurm" if gpus > 1 else "none"
        else:  # detectron2 (SOLVER.IMS_PER_BATCH is global) or another framework: one node
            devices = gpn if spec["framework"] == "d2" else 1
            params.update(gpus_per_node=devices)
    else:
        params["time"] = min(res["timeout"], SHORT_JOB_MIN)
    return params, devices, launcher


@functools.cache
def _dry_run_executor() -> type:
    from submitit.slurm.slurm import SlurmExecutor, SlurmJob

    class DryRunSlurmExecutor(SlurmExecutor):
        """submitit's SLURM executor without SLURM: builds each job's sbatch script (submitit's own
        text) and numbers the jobs 1, 2, … (placeholders in the dependencies) instead of calling sbatch."""

        ids = itertools.count(1)
        scripts: list[tuple[str, str]] = []

        @classmethod
        def affinity(cls) -> int:
            return 2  # no srun here: nothing is submitted

        def _internal_process_submissions(self, delayed_submissions: list) -> list:
            return [self._submit_command(self._submitit_command_str) for _ in delayed_submissions]

        def _submit_command(self, command: str) -> Any:
            job_id = str(next(self.ids))
            self.scripts.append((job_id, self._make_submission_file_text(command, job_id)))
            return SlurmJob(folder=self.folder, job_id=job_id, tasks=list(range(self._num_tasks())))

    return DryRunSlurmExecutor


def job_for(bench: Bench, step: Step, devices: int = 1, launcher: str = "none") -> Any:
    return BenchJob(str(bench.plan_path.resolve()), str(bench.work.resolve()), step, devices, launcher)


# -- submitting -----------------------------------------------------------------------------------------
def _slurm_state(entry: dict[str, Any]) -> str:
    """SLURM's state of a recorded job (sacct through submitit), e.g. PENDING, RUNNING, FAILED."""
    from submitit.slurm.slurm import SlurmJob

    job = SlurmJob(folder=entry.get("folder", "."), job_id=str(entry["job_id"]))
    return (job.state or "UNKNOWN").split()[0].upper()


def submit_slurm(bench: Bench, res: dict[str, Any], dry_run: bool) -> str:
    """Submit every step that is neither finished nor alive, chained by SLURM dependencies."""
    submitit = submitit_module()
    folder = bench.work.resolve() / "submitit" / "%j"
    executor_class = _dry_run_executor() if dry_run else submitit.SlurmExecutor
    if dry_run:
        executor_class.ids, executor_class.scripts = itertools.count(1), []
    elif executor_class.affinity() < 0:
        raise ConfigError("--launcher slurm: no 'srun' on this machine; run it on the cluster's login node, or add "
                          "--dry-run to see the jobs it would submit")
    steps = plan_steps(bench)
    if not dry_run:
        bench.synthetic_root()  # written once here, before any job reads it
    ids: dict[str, str] = {}
    lines = []
    for step in steps:
        if step.kind == "tables":
            if not ids and finished(bench, step):
                continue
        elif finished(bench, step):
            continue
        elif step.kind == "readout" and readout_spec(bench, step)["framework"] == "d2" \
                and importlib.util.find_spec("detectron2") is None:
            lines.append(f"{step.key}: skipped (detectron2 is not installed)")
            continue
        entry = bench.status.get(step.key, {})
        if not dry_run and entry.get("launcher") == "slurm" and entry.get("job_id"):
            state = _slurm_state(entry)
            if state in ALIVE:
                ids[step.key] = str(entry["job_id"])
                lines.append(f"{step.key}: job {entry['job_id']} is {state.lower()}, not resubmitted")
                continue
        after = [ids[d] for d in step.deps if d in ids]
        how = "afterany" if step.kind == "tables" else "afterok"  # the tables: whatever finished
        params, devices, launcher = slurm_job(bench, step, res, after, how)
        executor = executor_class(folder, max_num_timeout=res["max_requeues"])
        executor.update_parameters(**params)
        job = executor.submit(job_for(bench, step, devices, launcher))
        ids[step.key] = job.job_id
        gpus = f", {params['gpus_per_node']} GPU(s) each" if params.get("gpus_per_node") else ""
        lines.append(f"{step.key}: job {job.job_id}, {params['nodes']} node(s) × {params['ntasks_per_node']} task(s)"
                     f"{gpus}, {params['time']} min{', ' + params['dependency'] if after else ''}")
        if not dry_run:
            bench._record(step.key, "queued", launcher="slurm", job_id=job.job_id, folder=str(job.paths.folder),
                          log=str(job.paths.stderr), stdout=str(job.paths.stdout), after=after)
    if not dry_run:
        return "\n".join([*lines, f"{len([s for s in steps if s.key in ids])} job(s) queued or running; watch them "
                          f"with: flowssl bench {bench.plan_path} --work-dir {bench.work} --status", ""])
    out = bench.work / "slurm_dry_run"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.sh"):
        old.unlink()
    names = {job_id: key for key, job_id in ids.items()}
    for job_id, text in executor_class.scripts:
        write_text_atomic(text, out / f"{int(job_id):03d}_{names[job_id].replace('/', '_')}.sh")
    return "\n".join([*lines, f"--dry-run: nothing submitted; the {len(executor_class.scripts)} sbatch script(s) are "
                      f"in {out} (job ids 1, 2, … stand for SLURM's)", ""])


_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupted)\b")  # a traceback's last line


def run_local(bench: Bench, res: dict[str, Any]) -> str:
    """The same jobs through submitit's LocalExecutor, one at a time, stage by stage (it has no
    dependencies); a step whose dependency failed is not run. Returns the tables and what failed."""
    submitit = submitit_module()
    folder = bench.work.resolve() / "submitit" / f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}" / "%j"
    bench.check_readout_batches()  # each readout job is one process
    bench.synthetic_root()
    import torch

    gpu = 1 if torch.cuda.is_available() else 0  # one process per job: one device
    failed: dict[str, str] = {}
    ran = False
    for step in plan_steps(bench):
        if finished(bench, step) and (step.kind != "tables" or not ran):
            continue
        blocked = [d for d in step.deps if d in failed] if step.kind != "tables" else []
        if blocked:
            failed[step.key] = f"not run: {blocked[0]} failed"
            bench._record(step.key, "blocked", launcher="local", reason=failed[step.key])
            continue
        executor = submitit.LocalExecutor(folder, max_num_timeout=res["max_requeues"])
        executor.update_parameters(timeout_min=res["timeout"], tasks_per_node=1, signal_delay_s=res["signal_delay_s"],
                                   gpus_per_node=gpu if step.kind in ("pretrain", "readout") else 0)
        job = executor.submit(job_for(bench, step))
        ran = True
        log = str(job.paths.stderr)
        bench._record(step.key, "running", launcher="local", job_id=job.job_id, log=log, stdout=str(job.paths.stdout))
        print(f"[bench] {step.key}: job {job.job_id} running (log {log})", flush=True)
        error = job.exception()  # waits; None when the job succeeded
        record = {k: v for k, v in job_record(bench, step).items() if k not in ("key", "state", "job_id", "log")}
        if error is None:
            bench._record(step.key, "done", launcher="local", job_id=job.job_id, log=log, **record)
        else:
            raised = [line for line in str(error).splitlines() if _RAISED.match(line)]
            why = record.pop("error", None) or (raised[-1] if raised else str(error).splitlines()[0])
            failed[step.key] = why
            bench._record(step.key, "failed", launcher="local", job_id=job.job_id, log=log, error=why, **record)
        print(f"[bench] {step.key}: {'done' if error is None else 'failed (' + failed[step.key] + ')'}", flush=True)
    table = (bench.work / "tables.md").read_text() if (bench.work / "tables.md").is_file() else ""
    notes = [f"[bench] {key}: {why}" for key, why in failed.items()]
    if failed:
        notes.append(f"[bench] {len(failed)} step(s) did not finish; run the same command again to resubmit them")
    return table + "".join(f"{n}\n" for n in notes)


# -- watching -------------------------------------------------------------------------------------------
def step_state(bench: Bench, step: Step, entry: dict[str, Any], scheduler: str | None) -> tuple[str, str]:
    """(state, what to print): queued / running / requeued n times / done / failed with the log / …"""
    record = job_record(bench, step)
    job_id = str(entry.get("job_id", ""))
    attempts = record.get("attempts", 0) if job_id and record.get("job_id") == job_id else 0
    error = entry.get("error") or (record.get("error") if attempts else None)
    job = f"job {job_id}" if job_id else ""
    done = finished(bench, step) if step.kind != "tables" else entry.get("state") == "done" or scheduler == "COMPLETED"
    if done or scheduler == "COMPLETED":
        return "done", "done" + (f" ({job})" if job else "")
    if scheduler in ALIVE:
        requeued = attempts if scheduler == "PENDING" else max(attempts - 1, 0)
        word = {"PENDING": "queued", "RUNNING": "running", "COMPLETING": "running"}.get(scheduler, scheduler.lower())
        if scheduler == "UNKNOWN":
            word = "unknown to sacct (if the job is gone: scancel it, delete its entry in status.json, run again)"
        state = "requeued" if requeued else word.split()[0]
        return state, f"{f'requeued {requeued} time(s), ' if requeued else ''}{word} ({job})"
    if scheduler is not None or entry.get("state") in ("failed", "interrupted"):
        how = ", ".join(x for x in (job, scheduler, error) if x)
        return "failed", f"failed ({how}); log: {entry.get('log')}"
    if entry.get("state") == "blocked":
        return "blocked", f"not run ({entry.get('reason')})"
    state = entry.get("state", "not submitted")
    return state, state + (f" ({job})" if job else "")


def status_report(bench: Bench) -> str:
    """Each step's state (SLURM's, through sacct, for submitted jobs), recorded back into status.json."""
    if not bench.status:
        return f"no steps recorded in {bench.status_path} yet: nothing has run or been submitted\n"
    on_slurm = any(e.get("launcher") == "slurm" for e in bench.status.values() if isinstance(e, dict))
    if on_slurm:
        submitit_module()  # sacct through submitit
    steps = plan_steps(bench)
    width = max(len(s.key) for s in steps)
    lines = []
    for step in steps:
        entry = bench.status.get(step.key, {})
        scheduler = None
        if on_slurm and entry.get("launcher") == "slurm" and not finished(bench, step):
            scheduler = _slurm_state(entry)
        state, text = step_state(bench, step, entry, scheduler)
        lines.append(f"{step.key:<{width}}  {text}")
        if entry and (state != entry.get("state") or scheduler != entry.get("scheduler_state", scheduler)):
            kept = {k: v for k, v in entry.items() if k not in ("state", "time", "scheduler_state")}
            bench._record(step.key, state, **kept, **({"scheduler_state": scheduler} if scheduler else {}))
    return "\n".join(lines) + "\n"


# -- by hand ----------------------------------------------------------------------------------------------
def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _options(options: dict[str, Any]) -> str:
    return " ".join(_q(f"{k}={v}") for k, v in options.items())


def cluster_commands(bench: Bench, res: dict[str, Any]) -> str:
    """The commands a cluster runs for the plan, in order, with absolute paths: multi-GPU torchrun
    pretraining (``nodes`` × ``gpus_per_node``, the effective batch noted), every conversion, every
    readout at its config's GPU count, the tables."""
    from pretrain.trainer import batch_plan

    work = bench.work.resolve()
    tools = CONFIG_DIR.parent / "tools"
    nodes, gpn = res["nodes"], res["gpus_per_node"]
    synthetic = bench.synthetic_dir()
    synthetic = synthetic.resolve() if synthetic is not None else None
    lines = [f"# {bench.plan_path.name}: the commands a cluster runs, in order. `flowssl bench {bench.plan_path} "
             "--launcher slurm` submits them as SLURM jobs (dependencies, requeue on time-out); add --dry-run to see "
             "the sbatch scripts first."]
    for step in plan_steps(bench):
        m, seed = step.method, step.seed
        if step.kind == "pretrain":
            config = bench._path(bench.plan.methods[m]).resolve()
            options = {**dict(bench.plan.get("pretrain_options", {})), "seed": seed}
            cfg = load_config(config, options)
            try:
                accum, _ = batch_plan(cfg.get("global_batch"), cfg.batch_size, nodes * gpn, cfg.get("accum_steps", 1),
                                      cfg.get("global_batch_rule", "accumulate"))
                batch = (f"effective batch {cfg.batch_size * nodes * gpn * accum} = {nodes * gpn} GPUs × "
                         f"{cfg.batch_size} × {accum} accumulation step(s)")
            except ConfigError as exc:
                batch = f"NOTE: {exc}"
            rdzv = ("--standalone" if nodes == 1 else
                    f"--nnodes={nodes} --rdzv-backend=c10d --rdzv-endpoint=$MASTER_ADDR:29500")
            lines += [f"# pretraining {m}, seed {seed}: {nodes} node(s) × {gpn} GPUs"
                      f"{' (run on every node)' if nodes > 1 else ''}; {batch}",
                      f"torchrun {rdzv} --nproc-per-node={gpn} --no-python flowssl pretrain {_q(config)} "
                      f"--work-dir {_q(work / step.key)} --resume auto --cfg-options {_options(options)}"]
        elif step.kind == "convert":
            if m in bench.plan.get("checkpoints", {}):
                src = _q(bench._path(bench.plan.checkpoints[m], "checkpoint").resolve())
            else:
                src = f'"$(ls {_q(work / "pretrain" / m / f"seed{seed}")}/iter_*.pth | tail -n 1)"'
            lines.append(f"# conversion of {m}, seed {seed}")
            lines += [f"flowssl convert {src} --to {t} -o {_q(converted_path(work, m, seed, t))} --force"
                      for t in conversion_targets(bench)]
        elif step.kind == "readout":
            lines += _readout_commands(bench, step, work, tools, gpn, synthetic)
        else:
            lines += ["# the tables", f"flowssl tables {_q(work / 'results')}"]
    return "\n".join(lines) + "\n"


def _readout_commands(bench: Bench, step: Step, work: Path, tools: Path, gpn: int, synthetic: Path | None
                      ) -> list[str]:
    spec = readout_spec(bench, step)
    out = work / step.key
    config = bench._path(spec["config"]).resolve() if "config" in spec else None  # a feature readout has none
    options = dict(spec.get("options", {}))
    head = f"# readout {spec['name']} on {spec['dataset']} ({spec['framework']}) of {step.method}, seed {step.seed}"
    if spec["framework"] == "mmseg":
        gpus = paper_gpus(config)[0]
        conv = converted_path(work, step.method, step.seed, "mmseg")
        options["randomness.seed"] = step.seed
        if synthetic is not None and spec["dataset"] == "synthetic":
            options.update({f"{s}_dataloader.dataset.data_root": str(synthetic) for s in ("train", "val", "test")})
        fraction = (f" --label-fraction {spec['label_fraction']} --label-seed {step.seed}"
                    if "label_fraction" in spec else "")
        run = (f"torchrun --standalone --nproc-per-node={gpus} {_q(tools / 'mmseg_train.py')} --launcher pytorch"
               if gpus > 1 else f"python {_q(tools / 'mmseg_train.py')}")
        return [f"{head}: {gpus} GPU(s), the config's batch",
                f"{run} {_q(config)} --checkpoint {_q(conv)} --work-dir {_q(out)}{fraction} "
                f"--cfg-options {_options(options)}",
                f"python {_q(tools / 'mmseg_test.py')} {_q(config)} \"$(cat {_q(out / 'last_checkpoint')})\" "
                f"--work-dir {_q(out)} --out {_q(out / 'results.json')} --cfg-options {_options(options)}"]
    if spec["framework"] == "d2":
        conv = converted_path(work, step.method, step.seed, "detectron2")
        if "label_fraction" in spec:
            options.update({"DATASETS.LABEL_FRACTION": spec["label_fraction"], "DATASETS.LABEL_SEED": step.seed})
        opts = "".join(f" {k} {_q(v)}" for k, v in options.items())
        return [f"{head}: {gpn} GPUs, SOLVER.IMS_PER_BATCH is global",
                f"{_q(sys.executable)} -m flowssl.d2_train_net --config-file {_q(config)} --num-gpus {gpn}"
                f"{' --synthetic-root ' + _q(synthetic) if synthetic else ''} MODEL.WEIGHTS {_q(conv)} "
                f"OUTPUT_DIR {_q(out)} SEED {step.seed}{opts}"]
    return [f"{head}: no standalone command; run it with flowssl bench (in process, or --launcher slurm)"]


# -- the command ------------------------------------------------------------------------------------------
def bench_command(bench: Bench, args: Any) -> str:
    """``flowssl bench``'s launcher options: --status, --print-commands, --launcher (with --dry-run)."""
    launcher = args.launcher
    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher '{launcher}'; choose {', '.join(LAUNCHERS)}")
    cli = {k: getattr(args, k, None) for k in CLI_OPTIONS}
    if args.dry_run and launcher != "slurm":
        raise ConfigError("--dry-run shows the SLURM submissions: use it with --launcher slurm")
    if args.status:
        return status_report(bench)
    if args.print_commands:
        return cluster_commands(bench, resources(bench, cli, "slurm"))
    if launcher == "inprocess":
        named = [k for k, v in cli.items() if v is not None]
        if named:
            raise ConfigError(f"--{named[0].replace('_', '-')} sets a job's resources: use it with --launcher slurm "
                              "(or local), or with --print-commands")
        return bench.run()
    res = resources(bench, cli, launcher)
    submitit_module()  # before anything is written
    if launcher == "local":
        return run_local(bench, res)
    return submit_slurm(bench, res, args.dry_run)

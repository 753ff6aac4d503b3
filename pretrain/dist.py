"""Distributed helpers: one process group from torchrun's ``env://`` variables or from the tasks
``srun`` started (SLURM), single- or multi-node.

torchrun sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``. Tasks started by ``srun`` (by
hand, or by submitit's sbatch script) have only SLURM's variables; :func:`slurm_rendezvous` derives
the same ``env://`` variables from them, as mmengine's ``init_dist("slurm")`` and submitit's
``TorchDistributedEnvironment`` do: rank ``SLURM_PROCID``, world ``SLURM_STEP_NUM_TASKS`` (or
``SLURM_NTASKS``), local rank ``SLURM_LOCALID``, ``MASTER_ADDR`` the first host of the step's node list,
``MASTER_PORT`` from the environment or derived from the job id (submitit's rule, so both agree).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Mapping

import torch
import torch.distributed as dist

# srun sets these for the tasks of a job step; the batch script (sbatch's one process) has none of
# them although it sees SLURM_NTASKS and SLURM_PROCID=0 of the whole allocation
_STEP_VARS = ("SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NUM_TASKS")
_NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST")
MASTER_PORT_RANGE = (20000, 60000)  # submitit's TorchDistributedEnvironment draws from the same range


class LaunchError(ValueError):
    """The processes were started in a way that cannot form one run (a user error: one line)."""


def started_by_srun(env: Mapping[str, str]) -> bool:
    return any(v in env for v in _STEP_VARS)


def srun_tasks(env: Mapping[str, str]) -> int:
    """Tasks of this process's srun step (1 outside a step)."""
    if not started_by_srun(env):
        return 1
    return int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list (``gpu[003-005,9],cpu1`` → ``gpu003``): what ``scontrol show
    hostnames`` prints first when scontrol is on PATH (it expands every form SLURM writes, offline),
    else the first name with each bracket replaced by the start of its first range."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level comma ends the first group
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m[1])[0], nodelist[:end])


def _job_port(env: Mapping[str, str]) -> int:
    """submitit's port for a job: one drawn from the job id (an array task's ``JOB_TASK`` id), so
    two jobs sharing a node do not meet on one port and every task of a job agrees without talking."""
    job = env.get("SLURM_JOB_ID", "")
    if env.get("SLURM_ARRAY_JOB_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return random.Random(job).randint(*MASTER_PORT_RANGE) if job else 29500


def _uniform_tasks_per_node(spec: str | None) -> str | None:
    """``8(x4)`` or ``8`` → ``8``; None when nodes differ (``2(x3),1``) or it is not given."""
    counts = {m[1] for m in re.finditer(r"(\d+)(?:\(x\d+\))?", spec or "")}
    return counts.pop() if len(counts) == 1 else None


def slurm_rendezvous(env: Mapping[str, str]) -> dict[str, str] | None:
    """The ``env://`` variables of a task started by ``srun`` with more than one task, or None when
    the process group is not SLURM's to form (torchrun's variables are there — they win — or SLURM
    says one task). Raises :class:`LaunchError` when SLURM says several tasks and nothing says how
    they join, and when torchrun's world is smaller than srun's step (each srun task ran its own
    torchrun group: several processes would write the work dir as rank 0)."""
    step_tasks = srun_tasks(env)
    if "WORLD_SIZE" in env:
        if int(env["WORLD_SIZE"]) < step_tasks:
            raise LaunchError(
                f"torchrun's WORLD_SIZE is {env['WORLD_SIZE']} but srun started {step_tasks} tasks of this step: each "
                "task's torchrun formed a group of its own and several processes would write the work dir as rank 0; "
                "give torchrun --nnodes=<tasks> with one --rdzv-endpoint, or drop torchrun and let srun start one task "
                "per GPU")
        return None
    allocated = int(env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or "1")
    if not started_by_srun(env):
        if allocated > 1:
            raise LaunchError(
                f"SLURM allocated {allocated} tasks (SLURM_NTASKS) but this process was not started by srun (no "
                "SLURM_STEP_ID): it would run alone while its allocation waits; start one task per GPU with "
                "'srun flowssl ...', or use torchrun")
        return None
    if step_tasks <= 1:
        return None
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodelist = next((env[v] for v in _NODELIST_VARS if env.get(v)), None)
        if nodelist is None:
            raise LaunchError(f"srun started {step_tasks} tasks but neither MASTER_ADDR nor a node list "
                              "(SLURM_STEP_NODELIST) says where rank 0 is; export MASTER_ADDR (and MASTER_PORT)")
        addr = first_host(nodelist)
    if "SLURM_PROCID" not in env:
        raise LaunchError(f"srun started {step_tasks} tasks but SLURM_PROCID (this task's rank) is not set")
    out = {"MASTER_ADDR": addr, "MASTER_PORT": env.get("MASTER_PORT") or str(_job_port(env)),
           "RANK": env["SLURM_PROCID"], "WORLD_SIZE": str(step_tasks), "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}
    local_world = _uniform_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE"))
    if local_world:
        out["LOCAL_WORLD_SIZE"] = local_world
    return out


def launch_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun or srun started this process, without forming a
    process group (work split by rank needs no communication, e.g. ``flowssl flow precompute``)."""
    env = os.environ if env is None else env
    slurm = slurm_rendezvous(env)
    if slurm is not None:
        env = slurm
    return int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1"))


def init_distributed() -> tuple[int, int, int]:
    """Initialise the process group when torchrun or srun started several processes; return
    (rank, local_rank, world). The SLURM-derived variables are exported, so whatever reads
    ``env://`` later (the DataLoader's worker count, a readout framework) sees the same run."""
    slurm = slurm_rendezvous(os.environ)
    if slurm is not None:
        os.environ.update(slurm)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method="env://")
    return rank, local_rank, world


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()

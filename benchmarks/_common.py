"""Shared by the benchmarks: peak memory of a setting, measured in a fresh process each."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch


def peak_mb(device: torch.device) -> float:
    """CUDA: peak allocated; CPU: the process's peak RSS (ru_maxrss)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Mean seconds per call after one warm-up call."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def run_child(script: str, args: list[str]) -> dict[str, float]:
    """Run ``script --only ...`` in a new interpreter and parse the JSON line it prints last."""
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])

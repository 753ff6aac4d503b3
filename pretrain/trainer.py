"""Plain-PyTorch pretraining loop: DDP, SyncBN, AMP, accumulation, exact resume, safe stops."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from mmengine.config import Config
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from . import dist as fdist
from .data.augment import IMAGENET_MEAN, IMAGENET_STD
from .data.datasets import IterationBatchSampler
from .fileio import CheckpointError, load_checkpoint, save_atomic, write_text_atomic
from .optim import build_optimizer, cosine_lr_factor
from .registry import DATASETS, OBJECTIVES, build_from

log = logging.getLogger("flowssl")
CHECKPOINT_FORMAT = "flowssl-pretrain/1"
_CKPT_RE = re.compile(r"^iter_(\d+)\.pth$")


class TrainingInterrupted(RuntimeError):
    """Raised after a SIGTERM/SIGINT once the checkpoint of the current iteration is saved."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by signal {signum}; checkpoint saved to {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


def checkpoints_in(work_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in work_dir.glob("iter_*.pth") if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_work_dir(work_dir: str | Path) -> Path:
    """Create the work dir and prove it is writable before any compute is spent."""
    path = Path(work_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"work dir {path} is not writable ({exc.strerror}); "
                              "choose another with --work-dir") from exc
    return path


class Trainer:
    """Builds objective, data and optimiser from a config and runs ``max_iters`` iterations."""

    def __init__(self, cfg: Config, work_dir: str | Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.rank, self.local_rank, self.world = fdist.init_distributed()
        self.is_main = self.rank == 0
        self.work_dir = prepare_work_dir(work_dir) if self.is_main else Path(work_dir)
        fdist.barrier()
        self.max_iters: int = cfg.max_iters
        self.interval: int = cfg.checkpoint_interval
        self.batch_size: int = cfg.batch_size
        self.accum: int = cfg.get("accum_steps", 1)
        self.seed: int = cfg.get("seed", 0)

        use_cuda = torch.cuda.is_available() and cfg.get("device", "auto") != "cpu"
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        amp = cfg.get("amp", "auto")
        self.amp = use_cuda if amp == "auto" else bool(amp) and use_cuda  # bf16 on GPU only
        if cfg.get("deterministic", False):
            torch.use_deterministic_algorithms(True)
        seed_everything(self.seed)  # same init on every rank; DDP also broadcasts rank 0's

        self.objective: nn.Module = build_from(OBJECTIVES, dict(cfg.model), "objective")
        if cfg.get("sync_bn", False) and self.world > 1:
            self.objective = nn.SyncBatchNorm.convert_sync_batchnorm(self.objective)
        self.objective.to(self.device)
        self.model: nn.Module = self.objective
        if self.world > 1:
            self.model = DistributedDataParallel(
                self.objective, device_ids=[self.local_rank] if use_cuda else None)
        self.trainable = getattr(self.objective, "trainable", True)
        if not self.trainable:  # Rand Init / ImageNet: one checkpoint at iteration 0, nothing to optimise
            self.max_iters = 0
        self.optimizer = build_optimizer(self.objective, dict(cfg.optimizer))
        sched = dict(cfg.get("lr_schedule", {}))
        warmup, min_factor = sched.get("warmup_iters", 0), sched.get("min_lr_factor", 0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_lr_factor(s, self.max_iters, warmup, min_factor))
        self.scaler = torch.amp.GradScaler(enabled=False)  # bf16 needs no loss scaling
        self.dataset = build_from(DATASETS, dict(cfg.data), "dataset", seed=self.seed)
        self.iteration = 0
        self._stop_signal: int | None = None
        if resume:
            self._resume()

    # -- checkpoints ----------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            **self.objective.meta,
            "iteration": self.iteration,
            "config": self.cfg.pretty_text,
            "config_name": Path(self.cfg.filename).stem if self.cfg.filename else None,
            "pixel_mean": list(IMAGENET_MEAN), "pixel_std": list(IMAGENET_STD), "input_format": "RGB",
            "format": CHECKPOINT_FORMAT,
        }

    def save_checkpoint(self) -> Path:
        path = self.work_dir / f"iter_{self.iteration:07d}.pth"
        if self.is_main:
            state = {
                "encoder": self.objective.encoder.state_dict(),
                "model": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": _rng_state(),
                "iteration": self.iteration,
                "meta": self.meta(),
            }
            save_atomic(state, path)
            keep = self.cfg.get("keep_checkpoints", 3)
            for _, old in checkpoints_in(self.work_dir)[:-keep]:
                old.unlink(missing_ok=True)
        fdist.barrier()
        return path

    def _resume(self) -> None:
        found = checkpoints_in(self.work_dir)
        if not found:
            if self.is_main:
                log.warning("--resume: no checkpoint in %s, starting from iteration 0", self.work_dir)
            return
        path = found[-1][1]
        ckpt = load_checkpoint(path)
        for key in ("model", "optimizer", "scheduler", "iteration", "meta"):
            if key not in ckpt:
                raise CheckpointError(f"checkpoint {path} has no '{key}' entry; it is not a flowssl "
                                      "training checkpoint (delete it or use another --work-dir)")
        if ckpt["meta"].get("method") != self.objective.meta["method"]:
            raise CheckpointError(f"checkpoint {path} was trained with method "
                                  f"'{ckpt['meta'].get('method')}', the config asks for "
                                  f"'{self.objective.meta['method']}'; use another --work-dir")
        try:
            self.objective.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this config's model: "
                                  f"{str(exc).splitlines()[0]}") from exc
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt.get("scaler", {}))
        if "rng" in ckpt:
            _set_rng_state(ckpt["rng"])
        self.iteration = int(ckpt["iteration"])
        if self.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)

    # -- loop -----------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def _should_stop(self) -> int | None:
        """Agree on stopping across ranks so no rank waits in an all-reduce alone."""
        sig = self._stop_signal or 0
        if self.world > 1:
            t = torch.tensor([sig], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            sig = int(t.item())
        return sig or None

    def _loader(self) -> DataLoader:
        sampler = IterationBatchSampler(self.iteration, self.max_iters, self.batch_size, self.accum,
                                        self.rank, self.world)
        workers = self.cfg.get("num_workers", 0)
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=2 if workers else None)

    def _step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for m, batch in enumerate(batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            sync = contextlib.nullcontext()
            if isinstance(self.model, DistributedDataParallel) and m < len(batches) - 1:
                sync = self.model.no_sync()
            with sync, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.model(batch)
                loss = out["loss"] / len(batches)
            loss.backward()
            for k, v in out.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach()) / len(batches)
        if self.world > 1:  # log the global mean, not rank 0's share
            t = torch.tensor(list(logs.values()), device=self.device, dtype=torch.float64)
            dist.all_reduce(t)
            logs = dict(zip(logs, (t / self.world).tolist(), strict=True))
        if not np.isfinite(logs["loss"]):
            raise FloatingPointError(
                f"loss is {logs['loss']} at iteration {self.iteration}; lower optimizer.lr, check the "
                "input data (a NaN flow or image) or resume from the last checkpoint")
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        logs.update(self.objective.after_step(self.iteration, self.max_iters))
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs

    def train(self) -> Path:
        """Run to ``max_iters``; returns the final checkpoint. Raises TrainingInterrupted on a signal."""
        if self.is_main:
            write_text_atomic(self.cfg.pretty_text, self.work_dir / "config.py")
        if not self.trainable:
            return self.save_checkpoint()
        if self.iteration >= self.max_iters:
            return checkpoints_in(self.work_dir)[-1][1]
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        writer = None
        metrics = None
        bar = None
        try:
            if self.is_main:
                from torch.utils.tensorboard import SummaryWriter
                from tqdm import tqdm

                writer = SummaryWriter(str(self.work_dir / "tensorboard"))
                metrics = open(self.work_dir / "metrics.jsonl", "a")  # noqa: SIM115
                bar = tqdm(total=self.max_iters, initial=self.iteration, desc="pretrain",
                           dynamic_ncols=True, disable=self.cfg.get("quiet", False))
            it = iter(self._loader())
            log_every = self.cfg.get("log_interval", 10)
            t0 = time.perf_counter()
            while self.iteration < self.max_iters:
                logs = self._step([next(it) for _ in range(self.accum)])
                logs["time"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                if self.is_main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.3g}")
                    if self.iteration % log_every == 0 or self.iteration == self.max_iters:
                        metrics.write(json.dumps({"iteration": self.iteration, **logs}) + "\n")
                        metrics.flush()
                        for k, v in logs.items():
                            writer.add_scalar(f"train/{k}", v, self.iteration)
                done = self.iteration == self.max_iters
                if done or self.iteration % self.interval == 0:
                    path = self.save_checkpoint()
                if (sig := self._should_stop()) is not None:
                    if not (done or self.iteration % self.interval == 0):
                        path = self.save_checkpoint()
                    raise TrainingInterrupted(sig, path)
            return path
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
            if metrics is not None:
                metrics.close()

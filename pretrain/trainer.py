"""The pretraining trainer built from a config: DDP, SyncBN, AMP, accumulation, exact resume, safe stops.

:class:`Trainer` is the loop of :mod:`pretrain.train_loop` with one :meth:`Trainer.run_step` (one
optimisation step: every guarantee about a step lives there) and the hooks of :mod:`pretrain.hooks`
around it (checkpoints, metrics, progress, log.txt, signals, the divergence guard). Without a work
dir it writes nothing: build it in a notebook and call ``run_step()``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import warnings
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
from .config import ConfigError
from .data.augment import IMAGENET_MEAN, IMAGENET_STD
from .data.datasets import IterationBatchSampler
from .fileio import CheckpointError, load_checkpoint, remove_stale_temps, write_text_atomic
from .hooks import (
    LOG_FILE,
    METRICS_FILE,
    STOP_SIGNALS,
    CheckpointHook,
    DivergenceGuard,
    MetricsWriter,
    ProgressBar,
    SignalHook,
    TextLog,
    checkpoints_in,
    setup_log_to,
)
from .optim import build_optimizer, cosine_lr_factor
from .registry import DATASETS, OBJECTIVES, build_from
from .train_loop import DivergenceError, HookBase, TrainerBase, TrainingInterrupted

# the loop's errors and the hooks' checkpoints_in are re-exported: callers have always imported them from here
__all__ = ["DivergenceError", "HookBase", "Trainer", "TrainingInterrupted", "batch_plan", "changed_settings",
           "checkpoints_in", "data_workers", "flat_settings"]

log = logging.getLogger("flowssl")
CHECKPOINT_FORMAT = "flowssl-pretrain/1"


RESUME_MODES = ("latest", "auto")
BATCH_RULES = ("accumulate", "linear_lr", "sqrt_lr")
# Config keys a resume may change: where things are, how fast and how verbosely it runs, how long it
# runs. Everything else (model, objective, optimiser, batch, augmentation, seed) must match the
# checkpoint, or the resumed run silently trains another experiment under the old one's name.
RESUME_FREE_KEYS = frozenset({"max_iters", "checkpoint_interval", "keep_checkpoints", "num_workers", "device",
                              "amp", "deterministic", "quiet", "log_interval", "max_nonfinite_steps", "work_dir",
                              "filename_resolved"})  # (the config path as given, set by load_config)
# ... and at any depth: paths (data.root, a flow cache root, RAFT weights, a clip cache: the same samples)
# and pure memory/tolerance knobs.
RESUME_FREE_LEAVES = frozenset({"root", "checkpoint", "clip_cache", "loss_chunk_rows", "max_bad_fraction"})
_PATH_SUFFIXES = ("_root", "_dir", "_path", "_file")
# The probe batch forwarded through the encoder before every checkpoint (fixed seed, own generator).
PROBE_SHAPE = (2, 3, 64, 64)
PROBE_SEED = 20


def flat_settings(cfg: Config) -> dict[str, Any]:
    """The config as ``{dotted.key: JSON value}`` (tuples become lists): stored in every checkpoint as
    plain JSON text, so a resume can compare settings without executing the stored config."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(json.loads(json.dumps(cfg.to_dict(), default=repr)), "")
    return flat


def _free_on_resume(key: str) -> bool:
    parts = key.split(".")
    return (parts[0] in RESUME_FREE_KEYS
            or any(p in RESUME_FREE_LEAVES or p.endswith(_PATH_SUFFIXES) for p in parts))


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key (checkpoint A, config B)`` for every setting a resume must not change."""
    unset = object()

    def show(v: Any) -> str:
        return "unset" if v is unset else repr(v)

    return [f"{k} (checkpoint {show(saved.get(k, unset))}, config {show(current.get(k, unset))})"
            for k in sorted(set(saved) | set(current))
            if not _free_on_resume(k) and saved.get(k, unset) != current.get(k, unset)]


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


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a cluster's SIGTERM or SIGUSR2 (or a terminal's SIGINT) goes to
    the whole process group; workers must outlive it so the main process can save the current
    iteration and shut them down itself. (torch's own worker handler makes SIGTERM from anyone but the
    parent fatal; SIGUSR2's default action ends a process.)"""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def data_workers(setting: int | str) -> int:
    """DataLoader workers per process. ``'auto'``: every core this process may use, shared among the
    processes of this node (torchrun's LOCAL_WORLD_SIZE), less one for the training loop — at the
    paper's shapes one worker makes a few pairs per second while a GPU consumes far more
    (benchmarks/data_pipeline.py, README 'Data pipeline'), so no core should sit idle."""
    if setting != "auto":
        if not isinstance(setting, int) or setting < 0:
            raise ConfigError(f"num_workers must be a non-negative integer or 'auto', got {setting!r}")
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_process - 1)


def batch_plan(global_batch: int | None, batch_size: int, world: int, accum_steps: int = 1,
               rule: str = "accumulate") -> tuple[int, float]:
    """(gradient-accumulation steps, lr factor) that give the config's global batch at any GPU count.

    ``accumulate`` (default): accumulate ``global_batch / (world × batch_size)`` micro-batches, so the
    optimiser sees exactly the paper's batch and lr. ``linear_lr`` / ``sqrt_lr``: keep
    ``world × batch_size × accum_steps`` and scale the lr by (that / global_batch) or its square root.
    Without ``global_batch`` the batch is whatever ``world × batch_size × accum_steps`` is.
    """
    if rule not in BATCH_RULES:
        raise ConfigError(f"global_batch_rule must be one of {BATCH_RULES}, got {rule!r}")
    if global_batch is None:
        return accum_steps, 1.0
    if not isinstance(global_batch, int) or global_batch <= 0:
        raise ConfigError(f"global_batch must be a positive integer, got {global_batch!r}")
    per_step = world * batch_size
    if rule != "accumulate":
        effective = per_step * accum_steps
        ratio = effective / global_batch
        return accum_steps, ratio if rule == "linear_lr" else ratio**0.5
    if accum_steps != 1:
        raise ConfigError(f"set either global_batch ({global_batch}) or accum_steps ({accum_steps}), not both: "
                          "with global_batch the accumulation is derived from the number of processes")
    if global_batch % per_step:
        raise ConfigError(
            f"global_batch {global_batch} is not a multiple of batch_size {batch_size} × {world} process(es) "
            f"= {per_step}; change batch_size (per GPU) or the number of GPUs, or set "
            "global_batch_rule='linear_lr' to scale the lr instead")
    return global_batch // per_step, 1.0


def refuse_used_work_dir(work_dir: Path) -> None:
    """A fresh run must not share a work dir with another run: the keep-N rotation would delete the
    new run's checkpoints in favour of the old run's higher iterations, ``metrics.jsonl`` would mix
    both, and a later ``--resume`` would continue the old run."""
    found = [p.name for _, p in checkpoints_in(work_dir)]
    metrics = work_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(metrics.name)
    if not found:
        return
    shown = ", ".join(found if len(found) <= 4 else [*found[:2], "…", found[-1]])
    how = ("continue it with --resume" if found[0] != metrics.name else
           "start it over with --resume auto (it left no checkpoint)")
    raise FileExistsError(f"work dir {work_dir} already holds a run ({shown}); {how}, or use another --work-dir")


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


class Trainer(TrainerBase):
    """Builds objective, data and optimiser from a config and runs ``max_iters`` iterations.

    ``work_dir`` None (a notebook, a benchmark): nothing is written and no hook but the divergence
    guard is registered; ``run_step()`` trains one step on the run's next batches. With a work dir,
    ``train()`` runs to ``max_iters`` with checkpoints, metrics, log.txt and safe stops.
    """

    def __init__(self, cfg: Config, work_dir: str | Path | None = None, resume: bool | str = False) -> None:
        """``resume``: False (fresh), True/``'latest'`` (the newest readable checkpoint must exist) or
        ``'auto'`` (resume if there is one, else start fresh: what a requeued cluster job wants)."""
        super().__init__()
        self.cfg = cfg
        if resume is True:
            resume = "latest"
        if resume and resume not in RESUME_MODES:
            raise ConfigError(f"--resume takes {' or '.join(RESUME_MODES)}, got {resume!r}")
        if resume and work_dir is None:
            raise ConfigError("resuming needs the work dir that holds the checkpoints")
        self.rank, self.local_rank, self.world = fdist.init_distributed()
        self.is_main = self.rank == 0
        self.work_dir: Path | None = None
        self.checkpointer: CheckpointHook | None = None  # set by build_hooks when there is a work dir
        if work_dir is not None:
            self.work_dir = prepare_work_dir(work_dir) if self.is_main else Path(work_dir)
        with setup_log_to(self.work_dir / LOG_FILE if self.work_dir is not None and self.is_main else None):
            self._build(resume)
        self.register_hooks(self.build_hooks())

    def _build(self, resume: str | bool) -> None:
        """The work-dir checks, objective, optimiser, data and resume (its log lines reach log.txt only
        if it all succeeds, see ``setup_log_to``)."""
        cfg = self.cfg
        if self.is_main and self.work_dir is not None:
            stale = remove_stale_temps(self.work_dir)
            if stale:
                log.warning("removed %d temp file(s) left by interrupted writes in %s", len(stale), self.work_dir)
            if not resume:
                refuse_used_work_dir(self.work_dir)
        fdist.barrier()
        self.max_iters = cfg.max_iters
        self.batch_size: int = cfg.batch_size
        self.accum, self.lr_factor = batch_plan(cfg.get("global_batch"), self.batch_size, self.world,
                                                cfg.get("accum_steps", 1), cfg.get("global_batch_rule", "accumulate"))
        self.seed: int = cfg.get("seed", 0)
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self.skip_reason: str | None = None  # why the last step was skipped (None: it was not)
        self._stop_signal: int | None = None

        use_cuda = torch.cuda.is_available() and cfg.get("device", "auto") != "cpu"
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        amp = cfg.get("amp", "auto")
        self.amp = use_cuda if amp == "auto" else bool(amp) and use_cuda  # bf16 on GPU only
        if cfg.get("deterministic", False):
            torch.use_deterministic_algorithms(True)
        seed_everything(self.seed)  # same init on every rank; DDP also broadcasts rank 0's

        self.objective: nn.Module = build_from(OBJECTIVES, dict(cfg.model), "objective", "model")
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
        for group in self.optimizer.param_groups:
            group["lr"] *= self.lr_factor
        sched = dict(cfg.get("lr_schedule", {}))
        warmup, min_factor = sched.get("warmup_iters", 0), sched.get("min_lr_factor", 0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_lr_factor(s, self.max_iters, warmup, min_factor))
        self.scaler = torch.amp.GradScaler(enabled=False)  # bf16 needs no loss scaling
        # no data section (a benchmark): run_step takes its batches as an argument
        data = cfg.get("data")
        self.dataset = None if data is None else build_from(DATASETS, dict(data), "dataset", "data", seed=self.seed)
        self._batches: Any = None  # the iterator run_step draws from, built on first use
        self.iteration = 0
        if resume:
            self._resume(resume)
        if self.is_main and self.trainable:
            scaled = f" (scaled ×{self.lr_factor:.4g} by {cfg.get('global_batch_rule')})" if self.lr_factor != 1 else ""
            log.info("effective batch %d = %d per process × %d process(es) × %d accumulation step(s); lr %.4g%s",
                     self.effective_batch, self.batch_size, self.world, self.accum,
                     self.optimizer.param_groups[0]["lr"], scaled)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.world * self.accum

    def build_hooks(self) -> list[HookBase | None]:
        """The run's hooks, in the order they run after each step: the guard first (a stopped step
        leaves no row and no checkpoint), the signal last (it saves what the checkpoint hook did not)."""
        cfg = self.cfg
        if self.work_dir is None:
            return [DivergenceGuard(cfg.get("max_nonfinite_steps", 5))]
        every = cfg.get("log_interval", 10)
        self.checkpointer = CheckpointHook(self.work_dir, cfg.checkpoint_interval, cfg.get("keep_checkpoints", 3))
        main = self.is_main  # files and the terminal: rank 0 only
        return [
            DivergenceGuard(cfg.get("max_nonfinite_steps", 5)),
            TextLog(self.work_dir / LOG_FILE, every, self.describe()) if main else None,
            ProgressBar(disable=cfg.get("quiet", False)) if main else None,
            MetricsWriter(self.work_dir, every) if main else None,
            self.checkpointer,
            SignalHook(self.checkpointer),
        ]

    def describe(self) -> str:
        """One line on what this run trains, for the start of log.txt."""
        name = Path(self.cfg.filename).stem if self.cfg.filename else "config"
        return (f"{name}, method {self.objective.meta['method']}, effective batch {self.effective_batch} "
                f"({self.world} process(es) × {self.batch_size} × {self.accum} accumulation step(s)), "
                f"{self.device}{', bf16 autocast' if self.amp else ''}")

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

    def checkpoint_state(self) -> dict[str, Any]:
        """What ``iter_*.pth`` holds: enough to resume bit for bit, and the encoder for a readout."""
        return {
            "encoder": self.objective.encoder.state_dict(),
            "model": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _rng_state(),
            "iteration": self.iteration,
            # a requeued job must not restart its count of bad steps, or a NaN flow runs forever
            "nonfinite": {"in_row": self.nonfinite_in_row, "total": self.nonfinite_total},
            # the resolved config as JSON text: a resume compares it without executing anything
            "settings": json.dumps(flat_settings(self.cfg), sort_keys=True),
            "meta": self.meta(),
        }

    def check_finite_weights(self) -> None:
        """Never write a checkpoint every resume would fail from."""
        bad = [k for k, v in self.objective.state_dict().items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise DivergenceError(
                f"the weights hold NaN/Inf at iteration {self.iteration} ({len(bad)} tensor(s), e.g. {bad[0]}); "
                "no checkpoint was written. Train again with a lower optimizer.lr in another --work-dir")

    @torch.no_grad()
    def check_probe_features(self) -> None:
        """Finite weights are not enough: at lr 1e38 they stay finite (|w| ~1e36) while every feature
        of the encoder is NaN. Forward a fixed probe batch through the encoder as a readout would
        (eval mode, fp32) and refuse the checkpoint if anything comes out NaN/Inf. The probe uses its
        own generator and eval-mode BN, so the RNG streams and BN statistics (and an exact resume)
        are untouched."""
        encoder = self.objective.encoder
        probe = torch.randn(PROBE_SHAPE, generator=torch.Generator().manual_seed(PROBE_SEED), device="cpu")
        probe = probe.to(self.device)  # on the CPU first: the generator's device, whatever torch's default
        was_training = encoder.training
        encoder.eval()
        try:
            with torch.autocast(self.device.type, enabled=False):
                feats = encoder(probe)
        finally:
            encoder.train(was_training)
        bad = (~torch.isfinite(feats)).float().mean().item()
        if bad:
            biggest = max((v.abs().max().item() for v in encoder.state_dict().values()
                           if v.is_floating_point() and v.numel()), default=0.0)
            raise DivergenceError(
                f"the model diverged at iteration {self.iteration}: {bad:.0%} of the encoder's features on a fixed "
                f"probe batch are NaN/Inf (largest weight {biggest:.3g}); no checkpoint was written. Train again "
                "with a lower optimizer.lr in another --work-dir")

    def save_checkpoint(self) -> Path:
        """Save the current iteration now (checked, atomic, rotated): what the hooks do."""
        if self.checkpointer is None:
            raise ConfigError("this trainer has no work dir to save a checkpoint in")
        return self.checkpointer.save()

    def _newest_readable(self, mode: str) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads; unreadable newer ones (a zero-byte file after a kill,
        a truncated copy) are skipped with a warning that names them."""
        found = checkpoints_in(self.work_dir)
        unreadable = []
        for _, path in reversed(found):
            try:
                return path, load_checkpoint(path)
            except CheckpointError as exc:
                unreadable.append(path.name)
                if self.is_main:
                    log.warning("--resume: skipping unreadable checkpoint: %s", exc)
        if unreadable:
            raise CheckpointError(f"--resume: no checkpoint in {self.work_dir} can be read ({', '.join(unreadable)}); "
                                  "delete them to start fresh, or use another --work-dir")
        if mode == "latest":
            raise CheckpointError(f"--resume: {self.work_dir} holds no iter_*.pth checkpoint; drop --resume to "
                                  "start fresh, or use '--resume auto' (resume if there is one, else start)")
        if self.is_main:
            log.info("--resume auto: no checkpoint in %s yet, starting from iteration 0", self.work_dir)
            # rows of a run that died before its first checkpoint
            MetricsWriter.drop_rows_after(self.work_dir, self.iteration)
        return None

    def _resume(self, mode: str) -> None:
        newest = self._newest_readable(mode)
        if newest is None:
            return
        path, ckpt = newest
        for key in ("model", "optimizer", "scheduler", "iteration", "meta"):
            if key not in ckpt:
                raise CheckpointError(f"checkpoint {path} has no '{key}' entry; it is not a flowssl "
                                      "training checkpoint (delete it or use another --work-dir)")
        if ckpt["meta"].get("method") != self.objective.meta["method"]:
            raise CheckpointError(f"checkpoint {path} was trained with method "
                                  f"'{ckpt['meta'].get('method')}', the config asks for "
                                  f"'{self.objective.meta['method']}'; use another --work-dir")
        self._check_settings(path, ckpt)
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
        counts = ckpt.get("nonfinite", {})  # absent in checkpoints written before the counts were kept
        if not (isinstance(counts, dict) and all(isinstance(counts.get(k, 0), int) for k in ("in_row", "total"))):
            raise CheckpointError(f"checkpoint {path}: 'nonfinite' is not a dict of counts; it was not written "
                                  "by flowssl, use another --work-dir")
        self.nonfinite_in_row, self.nonfinite_total = counts.get("in_row", 0), counts.get("total", 0)
        self.iteration = int(ckpt["iteration"])
        if self.is_main:
            log.info("resumed from %s at iteration %d", path, self.iteration)
            MetricsWriter.drop_rows_after(self.work_dir, self.iteration)

    def _check_settings(self, path: Path, ckpt: dict[str, Any]) -> None:
        """Refuse to continue a run under settings other than its own (a config edited since, or a
        fresh run's options given to ``--resume``): only paths, workers, device, logging and the
        schedule length may change."""
        text = ckpt.get("settings")
        if text is None:  # written before checkpoints stored their settings
            if self.is_main:
                log.warning("checkpoint %s does not store its settings; cannot check that the config matches it", path)
            return
        try:
            saved = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"checkpoint {path}: its stored settings are not JSON ({exc}); "
                                  "it was not written by flowssl, use another --work-dir") from exc
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {path}: its stored settings are not a dict; use another --work-dir")
        diff = changed_settings(saved, flat_settings(self.cfg))
        if diff:
            raise CheckpointError(
                f"--resume: checkpoint {path} was trained with other settings: {'; '.join(diff)}. Resume with "
                "the run's own settings (only paths, workers, device, logging, max_iters and checkpoint_interval "
                "may change), or start the new settings in another --work-dir")

    # -- data -----------------------------------------------------------------------------------
    def build_loader(self) -> DataLoader:
        """The run's batches from the current iteration on: ``accum`` micro-batches per iteration,
        numbered so that a resume (or another world size) draws the same samples."""
        if self.dataset is None:
            raise ConfigError("the config has no 'data' section: pass the batches to run_step(batches)")
        sampler = IterationBatchSampler(self.iteration, self.max_iters, self.batch_size, self.accum,
                                        self.rank, self.world)
        workers = data_workers(self.cfg.get("num_workers", 0))
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=2 if workers else None,
                          worker_init_fn=_ignore_stop_signals if workers else None)

    def next_batches(self) -> list[dict[str, torch.Tensor]]:
        """The ``accum`` micro-batches of the next iteration."""
        if self._batches is None:
            self._batches = iter(self.build_loader())
        try:
            return [next(self._batches) for _ in range(self.accum)]
        except StopIteration:
            raise RuntimeError(f"no batches past max_iters ({self.max_iters}); raise max_iters to train on") from None

    # -- one step -------------------------------------------------------------------------------
    def run_step(self, batches: list[dict[str, torch.Tensor]] | None = None) -> dict[str, float]:
        """Exactly one optimisation step on ``accum`` micro-batches (the run's next ones when None),
        gradients summed over them (and all-reduced by DDP), the objective under bf16 autocast when
        ``amp``; then the lr schedule and ``iteration`` advance by one. A step whose loss, logged
        outputs or gradient is non-finite, or whose dense loss saw no valid pixel, updates nothing
        (BN statistics restored, no weight decay, no EMA) and is counted; the schedule and samples
        still advance. Returns the step's scalars (means over ranks)."""
        if batches is None:
            batches = self.next_batches()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # BN statistics move in the forward pass: keep a copy so a skipped step leaves no NaN behind
        buffers = [b for b in self.objective.buffers() if b.is_floating_point()]
        saved = [b.clone() for b in buffers]
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
        grads = [p.grad for p in self.objective.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))) if grads else 0.0
        logs["grad_norm"] = grad_norm
        # loss, every logged output and the gradient must be finite; a dense objective reports the
        # fraction of pixels with a correspondence, and 0 means a loss of 0 with nothing behind it
        bad = [k for k, v in logs.items() if not np.isfinite(v)]
        empty = logs.get("valid_fraction", 1.0) == 0
        if not bad and not empty:
            self.nonfinite_in_row = 0
            self.skip_reason = None
            self.optimizer.step()
            self.scheduler.step()
            self.iteration += 1
            logs.update(self.objective.after_step(self.iteration, self.max_iters))
        else:  # skip the update (no weight decay, no EMA), keep the schedule and samples on the count
            self.nonfinite_in_row += 1
            self.nonfinite_total += 1
            torch._foreach_copy_(buffers, saved)
            self.optimizer.zero_grad(set_to_none=True)
            self.skip_reason = (f"non-finite {', '.join(f'{k} {logs[k]}' for k in bad)}" if bad
                                else "no valid pixel (every flow correspondence occluded or outside the views)")
            if self.is_main:
                log.warning("iteration %d: %s, update skipped (%d in a row, %d in all)", self.iteration + 1,
                            self.skip_reason, self.nonfinite_in_row, self.nonfinite_total)
            with warnings.catch_warnings():  # skipping the optimiser step here is deliberate
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                self.scheduler.step()
            self.iteration += 1
        logs["skipped_steps"] = self.nonfinite_total
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs

    # -- stopping -------------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the run to save and stop after the current step (what SIGTERM/SIGUSR2/SIGINT do)."""
        self._stop_signal = signum

    def agreed_stop_signal(self) -> int | None:
        """The signal to stop on, agreed across ranks so no rank waits in an all-reduce alone."""
        sig = self._stop_signal or 0
        if self.world > 1:
            t = torch.tensor([sig], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            sig = int(t.item())
        return sig or None

    def _end_workers(self) -> None:
        """Stop the DataLoader workers now, not when the iterator is collected: they ignore SIGTERM
        (preemption reaches the whole process group), so a worker still alive at interpreter exit —
        the iterator kept by an exception's traceback after a failed run — would make
        multiprocessing's exit handler wait for it forever."""
        batches, self._batches = self._batches, None
        shutdown = getattr(batches, "_shutdown_workers", None)  # torch's own clean stop of its workers
        if shutdown is not None:
            shutdown()

    # -- the run --------------------------------------------------------------------------------
    def train(self) -> Path | None:
        """Run to ``max_iters``; returns the final checkpoint (None without a work dir). Raises
        TrainingInterrupted on a signal, DivergenceError when the guard or a checkpoint check stops it."""
        if self.is_main and self.work_dir is not None:
            write_text_atomic(self.cfg.pretty_text, self.work_dir / "config.py")
        if not self.trainable:
            return self.checkpointer.save() if self.checkpointer is not None else None
        if self.iteration >= self.max_iters:
            return checkpoints_in(self.work_dir)[-1][1] if self.work_dir is not None else None
        self._batches = iter(self.build_loader())  # its workers ignore SIGTERM (see _ignore_stop_signals)
        try:
            super().train()
        finally:
            self._end_workers()
        return self.checkpointer.last if self.checkpointer is not None else None

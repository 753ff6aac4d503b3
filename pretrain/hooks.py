"""The hooks of a pretraining run (:class:`pretrain.trainer.Trainer` builds them in ``build_hooks``).

Each owns one concern and the files of that concern in the work dir: ``iter_*.pth``
(:class:`CheckpointHook`), ``metrics.jsonl`` and ``tensorboard/`` (:class:`MetricsWriter`),
``log.txt`` (:class:`TextLog`); the terminal's progress bar (:class:`ProgressBar`); SIGTERM/SIGUSR2/SIGINT
(:class:`SignalHook`); and the stop after too many skipped steps (:class:`DivergenceGuard`). They
read the trainer through ``self.trainer``: ``iteration``, ``max_iters``, ``logs`` of the last step
and, for the checkpoint, ``checkpoint_state()`` and the checks a checkpoint must pass.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import re
import signal
import time
from collections.abc import Iterator
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import IO, Any

from . import dist as fdist
from .fileio import save_atomic, write_text_atomic
from .train_loop import RUN_LOG, DivergenceError, HookBase, TrainingInterrupted

log = logging.getLogger("flowssl")
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_CKPT_RE = re.compile(r"^iter_(\d+)\.pth$")


def checkpoint_path(work_dir: Path, iteration: int) -> Path:
    return work_dir / f"iter_{iteration:07d}.pth"


def checkpoints_in(work_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in work_dir.glob("iter_*.pth") if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


class DivergenceGuard(HookBase):
    """Stop when ``max_in_row`` steps in a row were skipped (non-finite, or no valid pixel): one bad
    batch is survivable, a run that only skips is burning compute on broken input or weights.
    Registered first, so the stopped iteration leaves no metrics row and no checkpoint."""

    def __init__(self, max_in_row: int) -> None:
        self.max_in_row = max_in_row

    def after_step(self) -> None:
        t = self.trainer
        if t.nonfinite_in_row >= self.max_in_row:
            raise DivergenceError(
                f"{t.nonfinite_in_row} iterations in a row (up to {t.iteration}) were skipped, the last "
                f"for {t.skip_reason} (max_nonfinite_steps={self.max_in_row}); stopped without saving. Check the "
                "input data (a NaN flow or image, a flow occluded everywhere) and resume from the last checkpoint, "
                "or train again with a lower optimizer.lr in another --work-dir")


class CheckpointHook(HookBase):
    """``iter_NNNNNNN.pth`` every ``interval`` iterations and at the last one. Before writing, the
    trainer's divergence checks run on every rank (finite weights, finite features of a probe
    batch): a diverged model is never left as the newest checkpoint. Rank 0 writes atomically and
    keeps the newest ``keep`` (0: all)."""

    def __init__(self, work_dir: Path, interval: int, keep: int) -> None:
        self.work_dir, self.interval, self.keep = work_dir, interval, keep
        self.last: Path | None = None
        self.saved_at: int | None = None  # the iteration of ``last``

    def save(self) -> Path:
        t = self.trainer
        path = checkpoint_path(self.work_dir, t.iteration)
        t.check_finite_weights()
        t.check_probe_features()
        if t.is_main:
            save_atomic(t.checkpoint_state(), path)
            if self.keep > 0:  # never the one just written (a stale higher iteration sorts after it)
                older = [old for it, old in checkpoints_in(self.work_dir) if it < t.iteration]
                for old in older[: max(0, len(older) - (self.keep - 1))]:
                    old.unlink(missing_ok=True)
            RUN_LOG.info("saved %s", path)
        fdist.barrier()
        self.last, self.saved_at = path, t.iteration
        return path

    def after_step(self) -> None:
        t = self.trainer
        if t.iteration == t.max_iters or t.iteration % self.interval == 0:
            self.save()


# What a scheduler sends before it ends a job: SIGTERM (preemption, ``timeout``, Kubernetes), SIGUSR2
# (submitit's time-out/preemption signal, SLURM ``--signal=USR2@90``) and SIGINT (Ctrl-C).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


def _chains(handler: Any) -> bool:
    """Whether a handler installed before the run should still get the signal once the checkpoint is
    saved: a Python function someone else set (submitit's requeue handler) — not the defaults."""
    return callable(handler) and handler is not signal.default_int_handler


class SignalHook(HookBase):
    """A stop signal (:data:`STOP_SIGNALS`) during the run: finish the step, save its checkpoint
    (unless :class:`CheckpointHook` just did) and raise :class:`TrainingInterrupted` (the CLI exits
    128 + signal: 143 for SIGTERM, 140 for SIGUSR2). All ranks agree before stopping.

    Cooperation with a launcher's own handler: the handlers found at the start are put back at the
    end, and when the run stopped on a signal whose previous handler was a Python function (in a
    submitit job, submitit's ``checkpoint_and_try_requeue`` for USR2 and its logging ``bypass`` for
    SIGTERM), that handler is called with the signal after the checkpoint is on disk and every hook
    has closed its files — so submitit requeues the job (and exits) only once there is an iteration to
    resume from. If it returns (submitit on a rank other than 0), TrainingInterrupted follows."""

    def __init__(self, checkpointer: CheckpointHook) -> None:
        self.checkpointer = checkpointer
        self._old: dict[int, Any] = {}
        self.stopped_by: int | None = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.trainer.request_stop(signum)

    def before_train(self) -> None:
        self.stopped_by = None
        self._old = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def after_step(self) -> None:
        sig = self.trainer.agreed_stop_signal()
        if sig is None:
            return
        ckpt = self.checkpointer
        path = ckpt.last if ckpt.saved_at == self.trainer.iteration else ckpt.save()
        self.stopped_by = sig
        raise TrainingInterrupted(sig, path)

    def after_train(self) -> None:
        old, self._old = self._old, {}
        for s, handler in old.items():
            signal.signal(s, handler)
        previous = old.get(self.stopped_by) if self.stopped_by is not None else None
        if _chains(previous):  # registered last: every other hook's after_train has run
            log.info("checkpoint saved; handing %s to the handler installed before the run (the launcher's)",
                     signal.Signals(self.stopped_by).name)
            previous(self.stopped_by, None)


class ProgressBar(HookBase):
    """The terminal's tqdm bar with the loss and lr (rank 0)."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: Any = None

    def before_train(self) -> None:
        from tqdm import tqdm

        t = self.trainer
        self.bar = tqdm(total=t.max_iters, initial=t.iteration, desc="pretrain", dynamic_ncols=True,
                        disable=self.disable)

    def after_step(self) -> None:
        logs = self.trainer.logs
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.3g}")

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsWriter(HookBase):
    """One JSON row per ``every`` iterations (and the last) in ``metrics.jsonl``, the same scalars
    in TensorBoard (rank 0)."""

    def __init__(self, work_dir: Path, every: int) -> None:
        self.work_dir, self.every = work_dir, every
        self.writer: Any = None
        self.file: IO[str] | None = None

    @staticmethod
    def drop_rows_after(work_dir: Path, iteration: int) -> None:
        """Drop the rows past ``iteration`` (a resume is about to recompute them)."""
        path = work_dir / METRICS_FILE
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if isinstance(row, dict) and row.get("iteration", 0) <= iteration:
                keep.append(line)
        write_text_atomic("".join(f"{line}\n" for line in keep), path)

    def before_train(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run overwrites the events past its checkpoint, not duplicates them
        self.writer = SummaryWriter(str(self.work_dir / "tensorboard"), purge_step=self.trainer.iteration + 1)
        self.file = open(self.work_dir / METRICS_FILE, "a")  # noqa: SIM115

    def after_step(self) -> None:
        t = self.trainer
        if t.iteration % self.every == 0 or t.iteration == t.max_iters:
            self.file.write(json.dumps({"iteration": t.iteration, **t.logs}) + "\n")
            self.file.flush()
            for k, v in t.logs.items():
                self.writer.add_scalar(f"train/{k}", v, t.iteration)

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.file is not None:
            self.file.close()
            self.file = None


def _file_handler(path: Path) -> logging.FileHandler:
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


@contextlib.contextmanager
def setup_log_to(path: Path | None) -> Iterator[None]:
    """While a trainer is built, keep the ``flowssl`` log records (stale temp files removed, an
    unreadable checkpoint skipped, the effective batch) and append them to ``path`` once the build
    succeeded: a run refused at setup (a used work dir, changed settings) leaves the work dir as it
    found it."""
    if path is None:
        yield
        return
    logger = logging.getLogger("flowssl")
    buffer = MemoryHandler(capacity=10**6, flushLevel=logging.CRITICAL + 1, flushOnClose=False)
    logger.addHandler(buffer)
    try:
        yield
        handler = _file_handler(path)
        buffer.setTarget(handler)
        buffer.flush()
        handler.close()
    finally:
        logger.removeHandler(buffer)
        buffer.close()


class TextLog(HookBase):
    """``log.txt`` in the work dir (rank 0): while the run trains, every ``flowssl`` log record
    (warnings of skipped steps, unreadable frames — what used to reach only the terminal), a start
    line, a line every ``every`` iterations with the ETA, each checkpoint written and how the run
    ended. Appended to across resumes."""

    def __init__(self, path: Path, every: int, describe: str = "") -> None:
        self.path, self.every, self.describe = path, every, describe
        self.handler: logging.FileHandler | None = None
        self._t0 = 0.0

    def before_train(self) -> None:
        self.handler = _file_handler(self.path)
        for logger in (logging.getLogger("flowssl"), RUN_LOG):
            logger.addHandler(self.handler)
        t = self.trainer
        self._t0 = time.perf_counter()
        RUN_LOG.info("start at iteration %d of %d%s", t.iteration, t.max_iters,
                     f": {self.describe}" if self.describe else "")

    def after_step(self) -> None:
        t = self.trainer
        if t.iteration % self.every and t.iteration != t.max_iters:
            return
        done = t.iteration - t.start_iteration
        per_iter = (time.perf_counter() - self._t0) / max(done, 1)
        eta = datetime.timedelta(seconds=round(per_iter * (t.max_iters - t.iteration)))
        scalars = ", ".join(f"{k} {v:.4g}" for k, v in t.logs.items())
        RUN_LOG.info("iteration %d/%d: %s; %.3g s/iter, eta %s", t.iteration, t.max_iters, scalars, per_iter, eta)

    def after_train(self) -> None:
        if self.handler is None:
            return
        t = self.trainer
        if t.iteration >= t.max_iters:
            RUN_LOG.info("finished at iteration %d", t.iteration)
        for logger in (logging.getLogger("flowssl"), RUN_LOG):
            logger.removeHandler(self.handler)
        self.handler.close()
        self.handler = None

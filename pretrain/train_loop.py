"""The training loop and its extension points, after detectron2's ``engine/train_loop.py``.

``TrainerBase.train`` calls ``run_step`` (exactly one optimisation step) once per iteration, with
every registered hook's ``before_step``/``after_step`` around it and ``before_train``/``after_train``
around the whole run. Everything else a run does — checkpoints, metrics, the progress bar, the text
log, signal handling, the divergence guard — is a hook (:mod:`pretrain.hooks`), so a notebook can
call ``run_step`` alone and a benchmark times the very step training runs.
"""

from __future__ import annotations

import logging
import signal
import time
import weakref
from collections.abc import Iterable
from pathlib import Path

# Lines meant for the run's log.txt only (the terminal has the progress bar and the CLI's messages):
# never propagated to the root logger, and silent where no log file is attached.
RUN_LOG = logging.getLogger("flowssl.run")
RUN_LOG.propagate = False
RUN_LOG.setLevel(logging.INFO)
RUN_LOG.addHandler(logging.NullHandler())


class DivergenceError(RuntimeError):
    """Non-finite loss, gradients or weights that skipping steps did not cure."""


class TrainingInterrupted(RuntimeError):
    """Raised after a stop signal (SIGTERM, SIGUSR2, SIGINT) once the checkpoint of the current
    iteration is saved."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} ({signum}); checkpoint saved to {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


class HookBase:
    """Something done around the steps of a run. The loop calls, in registration order::

        hook.before_train()
        while trainer.iteration < trainer.max_iters:
            hook.before_step()
            trainer.logs = trainer.run_step()      # iteration += 1 inside; the loop adds "time"
            hook.after_step()                      # trainer.iteration is the step just done
        hook.after_train()                         # also after an exception: release what you hold

    ``self.trainer`` is set on registration (a weak proxy: trainer and hooks do not own each other).
    A hook may raise to end the run (the divergence guard, a signal); ``after_train`` still runs.
    """

    trainer: TrainerBase

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class TrainerBase:
    """The loop: ``iteration`` counts optimisation steps done, ``max_iters`` ends the run, ``logs``
    holds the scalars of the last step (and ``time``, seconds since the previous step ended).
    Subclasses implement :meth:`run_step`."""

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iteration = 0
        self.max_iters = 0
        self.start_iteration = 0
        self.logs: dict[str, float] = {}

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Append ``hooks`` (None entries are skipped); they run in the order registered."""
        for hook in hooks:
            if hook is None:
                continue
            if not isinstance(hook, HookBase):
                raise TypeError(f"{hook!r} is not a HookBase")
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    @property
    def hooks(self) -> list[HookBase]:
        return list(self._hooks)

    def train(self) -> None:
        """Run steps until ``max_iters``, calling the hooks around them."""
        self.start_iteration = self.iteration
        try:
            for hook in self._hooks:
                hook.before_train()
            t0 = time.perf_counter()
            while self.iteration < self.max_iters:
                for hook in self._hooks:
                    hook.before_step()
                self.logs = self.run_step()
                now = time.perf_counter()
                self.logs["time"], t0 = now - t0, now  # the whole iteration: data, step and hooks
                for hook in self._hooks:
                    hook.after_step()
        except Exception as exc:  # into log.txt too: the terminal's message is gone with the terminal
            RUN_LOG.error("stopped at iteration %d: %s", self.iteration, exc)
            raise
        finally:
            for hook in self._hooks:
                hook.after_train()

    def run_step(self) -> dict[str, float]:
        """Exactly one optimisation step; returns the scalars to log."""
        raise NotImplementedError

"""A resumable step loop shared by every training phase.

State is checkpointed every ``checkpoint_every`` steps (and at the end) together with the
RNG states; on start, an existing checkpoint is loaded and the loop continues from its
step. With the stateless samplers of :mod:`sasan.train.sampling`, a run killed at any point
and resumed ends with exactly the weights of an uninterrupted run (CPU, fixed seed).

SIGTERM (Kubernetes evicting or preempting the pod, ``kill``) is honoured at the next step
boundary: the loop checkpoints the state it has, then raises :class:`TrainingInterrupted`
(whose ``run_status`` tells the tracker to end the run as KILLED). Outside a phase loop,
:func:`sigterm_raises` turns SIGTERM into the same exception at once."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from tqdm.auto import tqdm

from sasan.errors import CheckpointError, SasanError
from sasan.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger(__name__)

LogFn = Callable[[str, int, dict[str, float]], None]


class TrainingInterrupted(SasanError):
    """Training stopped on a signal; the last checkpoint lets a rerun continue."""

    exit_code = 128 + signal.SIGTERM
    run_status = "KILLED"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`TrainingInterrupted` (the default action
    would end the process without running any cleanup). Main thread only; restored after."""
    if not _main_thread():
        yield
        return

    def handler(signum, frame):
        raise TrainingInterrupted(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _deferred_sigterm() -> Iterator[list[int]]:
    """Within the block SIGTERM is only recorded (in the yielded list), so a step finishes
    and the loop can checkpoint a consistent state before stopping."""
    received: list[int] = []
    if not _main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Phase:
    """One training phase. ``step_fn(step) -> logs``; ``get_state()`` / ``set_state(d)``
    give and take everything besides RNG and step (weights, optimisers, schedulers)."""

    name: str
    total_steps: int
    step_fn: Callable[[int], dict[str, float]]
    get_state: Callable[[], dict[str, Any]]
    set_state: Callable[[dict[str, Any]], None]
    checkpoint: Path
    checkpoint_every: int = 200
    log_every: int = 10
    # saved alongside; a "fingerprint" entry must match the checkpoint's to resume it
    extra: Optional[dict[str, Any]] = None


def run_phase(phase: Phase, on_log: Optional[LogFn] = None, is_main: bool = True,
              progress: bool = True, on_checkpoint: Optional[Callable[[Path], None]] = None) -> dict[str, float]:
    """Run (or resume) ``phase`` to completion; return the mean of the last logged values.
    ``on_checkpoint(path)`` is called on the main process after each checkpoint save (e.g. to
    copy it to object storage)."""
    start = 0
    if phase.checkpoint.is_file():
        state = load_checkpoint(phase.checkpoint)
        expected, found = (phase.extra or {}).get("fingerprint"), state.get("fingerprint")
        if expected is not None and found is not None and found != expected:
            # the recipe moves such checkpoints aside before a phase starts (sasan.train.fingerprint)
            raise CheckpointError(f"{phase.name}: checkpoint was trained with other settings or data "
                                  "(fingerprint differs); move it aside to train from scratch", phase.checkpoint)
        phase.set_state(state["state"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        log.info("%s: resuming from step %d / %d (%s)", phase.name, start, phase.total_steps, phase.checkpoint)

    def save(step: int) -> None:
        if is_main:  # data-parallel: rank 0 writes, every rank holds the same state
            save_checkpoint(phase.checkpoint, {"step": step, "state": phase.get_state(), "rng": rng_state(),
                                               "phase": phase.name, **(phase.extra or {})})
            if on_checkpoint is not None:
                on_checkpoint(phase.checkpoint)

    last: dict[str, float] = {}
    bar = tqdm(total=phase.total_steps, initial=start, desc=phase.name, unit="it",
               disable=not (progress and is_main), dynamic_ncols=True)
    tic = time.perf_counter()
    with _deferred_sigterm() as signals:
        for step in range(start, phase.total_steps):
            logs = phase.step_fn(step)
            done = step + 1
            if done % phase.log_every == 0 or done == phase.total_steps:
                logs = dict(logs, s_per_it=(time.perf_counter() - tic) / max(done - start, 1))
                if on_log is not None:
                    on_log(phase.name, done, logs)
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(logs.items())[:4]})
            if signals or done % phase.checkpoint_every == 0 or done == phase.total_steps:
                save(done)
            last = logs
            bar.update(1)
            if signals and done < phase.total_steps:
                bar.close()
                log.warning("%s: SIGTERM at step %d / %d; checkpoint saved (%s)", phase.name, done,
                            phase.total_steps, phase.checkpoint)
                raise TrainingInterrupted(f"{phase.name} stopped by SIGTERM at step {done} / {phase.total_steps}; "
                                          "rerun to resume", phase.checkpoint)
    bar.close()
    if start >= phase.total_steps and phase.total_steps > 0:
        log.info("%s: already complete (%d steps)", phase.name, phase.total_steps)
    return last

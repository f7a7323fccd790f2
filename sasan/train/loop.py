"""A resumable step loop shared by every training phase.

State is checkpointed every ``checkpoint_every`` steps (and at the end) together with the
RNG states; on start, an existing checkpoint is loaded and the loop continues from its
step. With the stateless samplers of :mod:`sasan.train.sampling`, a run killed at any point
and resumed ends with exactly the weights of an uninterrupted run (CPU, fixed seed).

SIGTERM (Kubernetes evicting or preempting the pod, ``kill``) and SIGINT (Ctrl-C) are
honoured at the next step boundary: the loop checkpoints the state it has, then raises
:class:`TrainingInterrupted` (whose ``run_status`` tells the tracker to end the run as
KILLED; exit code 128 + the signal). A second Ctrl-C stops at once, without that checkpoint.
Outside a phase loop, :func:`stop_signals_raise` turns either signal into the same exception
at once.

Progress: a bar (tqdm) when ``progress`` is on; otherwise a few log lines per phase (start,
every ~10 % of its steps or after a minute without one, end), so ``dvc repro`` and pod logs
show where training is."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
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

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SasanError):
    """Training stopped on a signal; the last checkpoint lets a rerun continue. ``exit_code``
    is 128 + the signal's number, as a shell reports a process the signal ended (130 for
    Ctrl-C, 143 for SIGTERM)."""

    exit_code = 128 + signal.SIGTERM
    run_status = "KILLED"

    def __init__(self, reason: str, path: Optional[str | Path] = None, signum: int = signal.SIGTERM):
        super().__init__(reason, path)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

    def __reduce__(self):       # whole, with its signal, out of a side-by-side worker process
        return type(self), (self.reason, self.path, self.signum)


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _stopping() -> bool:
    """Whether this thread is handling a stop already (an ``except`` block after one: ending
    the MLflow run, waiting for worker processes); a further signal must not cut that short."""
    return isinstance(sys.exc_info()[1], (TrainingInterrupted, KeyboardInterrupt))


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise :class:`TrainingInterrupted` (SIGTERM's
    default action would end the process without running any cleanup; SIGINT's
    KeyboardInterrupt would not say the run was stopped). While such a stop is being handled,
    further signals are ignored. Main thread only; restored after."""
    if not _main_thread():
        yield
        return

    def handler(signum, frame):
        if not _stopping():
            raise TrainingInterrupted(f"stopped by {_signal_name(signum)}; rerun to resume", signum=signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _deferred_stop(label: str) -> Iterator[list[int]]:
    """Within the block SIGTERM and SIGINT are only recorded (in the yielded list), so a step
    finishes and the loop can checkpoint a consistent state before stopping. A second SIGINT
    (Ctrl-C pressed again: a step can be long) raises at once."""
    received: list[int] = []
    if not _main_thread():
        yield received
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in received and not _stopping():
            raise TrainingInterrupted(f"{label} stopped at once by a second SIGINT; rerun to resume from "
                                      "its last checkpoint", signum=signum)
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# the values a progress line shows, where a phase logs them; else its first few
HEADLINE = ("loss", "G/total", "D/total")
_NOT_LOSSES = ("lr", "s_per_it")


def _headline(values: dict[str, float]) -> str:
    keys = [k for k in HEADLINE if k in values] or [k for k in values if k not in _NOT_LOSSES][:3]
    return "".join(f", {k} {values[k]:.3g}" for k in keys)


class ProgressLog:
    """Progress as log lines, for runs without bars: one when the phase starts (unless it
    resumes: the resume line says where), one each ~``fraction`` of its steps or after
    ``max_silence_s`` without one (step / total, the main losses, s/step, ETA), one at the end
    (time taken)."""

    def __init__(self, label: str, total: int, start: int, fraction: float = 0.1, max_silence_s: float = 60.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.label, self.total, self.start = label, total, start
        self.every = max(1, math.ceil(total * fraction))
        self.max_silence_s, self.clock = max_silence_s, clock
        self.t0 = self.last = clock()
        if start == 0:
            log.info("%s: %d steps", label, total)

    def step(self, done: int, values: dict[str, float]) -> None:
        if done >= self.total:
            return                      # the end line says it
        now = self.clock()
        if done % self.every and now - self.last < self.max_silence_s:
            return
        self.last = now
        rate = (now - self.t0) / max(done - self.start, 1)
        log.info("%s: step %d / %d (%d%%)%s, %.3g s/step, ETA %s", self.label, done, self.total,
                 100 * done // self.total, _headline(values), rate, _duration(rate * (self.total - done)))

    def end(self) -> None:
        took = self.clock() - self.t0
        steps = self.total - self.start
        log.info("%s: done, %d steps in %s (%.3g s/step)", self.label, steps, _duration(took), took / max(steps, 1))


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
              progress: bool = True, on_checkpoint: Optional[Callable[[Path], None]] = None,
              label: Optional[str] = None) -> dict[str, float]:
    """Run (or resume) ``phase`` to completion; return the mean of the last logged values.
    ``on_checkpoint(path)`` is called on the main process after each checkpoint save (e.g. to
    copy it to object storage). ``label`` names the phase in bars and log lines (e.g.
    ``sasan/joint``: variants trained side by side interleave them); default its name."""
    label = label or phase.name
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
        log.info("%s: resuming from step %d / %d (%s)", label, start, phase.total_steps, phase.checkpoint)

    def save(step: int) -> None:
        if is_main:  # data-parallel: rank 0 writes, every rank holds the same state
            save_checkpoint(phase.checkpoint, {"step": step, "state": phase.get_state(), "rng": rng_state(),
                                               "phase": phase.name, **(phase.extra or {})})
            if on_checkpoint is not None:
                on_checkpoint(phase.checkpoint)

    def stopped(done: int, signum: int) -> TrainingInterrupted:
        bar.close()
        name = _signal_name(signum)
        log.warning("%s: %s at step %d / %d; checkpoint saved (%s)", label, name, done, phase.total_steps,
                    phase.checkpoint)
        return TrainingInterrupted(f"{label} stopped by {name} at step {done} / {phase.total_steps}; rerun to resume",
                                   phase.checkpoint, signum=signum)

    last: dict[str, float] = {}
    bar = tqdm(total=phase.total_steps, initial=start, desc=label, unit="it",
               disable=not (progress and is_main), dynamic_ncols=True)
    report = ProgressLog(label, phase.total_steps, start) if is_main and not progress and start < phase.total_steps \
        else None
    tic = time.perf_counter()
    with _deferred_stop(label) as signals:
        for step in range(start, phase.total_steps):
            logs = phase.step_fn(step)
            done = step + 1
            stop = signals[:1]          # one arriving from here on is seen after the next step
            if done % phase.log_every == 0 or done == phase.total_steps:
                logs = dict(logs, s_per_it=(time.perf_counter() - tic) / max(done - start, 1))
                if on_log is not None:
                    on_log(phase.name, done, logs)
                bar.set_postfix({k: f"{v:.3g}" for k, v in list(logs.items())[:4]})
            if stop or done % phase.checkpoint_every == 0 or done == phase.total_steps:
                save(done)
            last = logs
            bar.update(1)
            if stop:
                raise stopped(done, stop[0])
            if report is not None:
                report.step(done, logs)
        if signals and start < phase.total_steps:
            # during the last step's bookkeeping, after its checkpoint: the next phase must not start
            raise stopped(phase.total_steps, signals[0])
    bar.close()
    if start >= phase.total_steps and phase.total_steps > 0:
        log.info("%s: already complete (%d steps)", label, phase.total_steps)
    if report is not None:
        report.end()
    return last

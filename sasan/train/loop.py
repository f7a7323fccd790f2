"""A resumable step loop shared by every training phase.

State is checkpointed every ``checkpoint_every`` steps (and at the end) together with the
RNG states; on start, an existing checkpoint is loaded and the loop continues from its
step. With the stateless samplers of :mod:`sasan.train.sampling`, a run killed at any point
and resumed ends with exactly the weights of an uninterrupted run (CPU, fixed seed)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from tqdm.auto import tqdm

from sasan.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger(__name__)

LogFn = Callable[[str, int, dict[str, float]], None]


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
    extra: Optional[dict[str, Any]] = None   # saved alongside (e.g. the resolved config)


def run_phase(phase: Phase, on_log: Optional[LogFn] = None, is_main: bool = True,
              progress: bool = True, on_checkpoint: Optional[Callable[[Path], None]] = None) -> dict[str, float]:
    """Run (or resume) ``phase`` to completion; return the mean of the last logged values.
    ``on_checkpoint(path)`` is called on the main process after each checkpoint save (e.g. to
    copy it to object storage)."""
    start = 0
    if phase.checkpoint.is_file():
        state = load_checkpoint(phase.checkpoint)
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
    for step in range(start, phase.total_steps):
        logs = phase.step_fn(step)
        done = step + 1
        if done % phase.log_every == 0 or done == phase.total_steps:
            logs = dict(logs, s_per_it=(time.perf_counter() - tic) / max(done - start, 1))
            if on_log is not None:
                on_log(phase.name, done, logs)
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(logs.items())[:4]})
        if done % phase.checkpoint_every == 0 or done == phase.total_steps:
            save(done)
        last = logs
        bar.update(1)
    bar.close()
    if start >= phase.total_steps and phase.total_steps > 0:
        log.info("%s: already complete (%d steps)", phase.name, phase.total_steps)
    return last

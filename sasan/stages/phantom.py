"""Phantom stage: the embedded synthetic cardiac MR/CT data set (``cfg.phantom``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sasan.config import Config
from sasan.data.phantom import generate_phantom

if TYPE_CHECKING:
    from sasan.tracking.runs import Tracker

DEFAULT_SIZE = 128


@dataclass(frozen=True)
class PhantomOutputs:
    data: Path              # canonical layout, one folder per domain


def run(outputs: PhantomOutputs, cfg: Config, tracker: "Tracker", size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """Write the phantom into ``outputs.data``; returns the generator's summary."""
    p = cfg.phantom
    summary = generate_phantom(outputs.data, cases=p.cases, seed=p.seed, domains=tuple(p.domains), size=size,
                               mr_contrast=p.mr_contrast)
    tracker.set_tags({"sasan.phantom": f"cases={p.cases} seed={p.seed} size={size} mr_contrast={p.mr_contrast}"})
    return summary

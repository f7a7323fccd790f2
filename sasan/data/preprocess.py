"""Preprocessing of a raw data set into slice shards (METHOD.md section 5).

The per-volume preparation lives in :mod:`sasan.data.prepare`, the shard writing in
:mod:`sasan.data.shards` (which imports the former, never this module: no import cycle);
the stage contract is :mod:`sasan.stages.preprocess`. This module keeps the names callers
import from here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from sasan.data.config import PreprocessConfig
from sasan.data.prepare import (  # noqa: F401  (re-exported)
    Geometry, PreparedVolume, bounds_for, normalise, prepare_case, prepare_loaded, prepare_volume, stack_slices,
)
from sasan.data.shards import write_dataset_shards


def run_preprocess(raw_dir: str | Path, out_dir: str | Path, cfg: PreprocessConfig,
                   domains: Optional[list[str]] = None) -> dict[str, Any]:
    """Write ``out_dir/<domain>/<split>/`` shards and ``out_dir/stats.json``; return the stats."""
    return write_dataset_shards(Path(raw_dir), Path(out_dir), cfg, domains)

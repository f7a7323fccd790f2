"""Preprocess stage: raw volumes -> per-domain, per-split slice-stack shards, plus the raw
data set's identity (``data_identity.json``) so training knows which data it saw.

With ``experiment.mode: paired`` the source and target volumes of each subject are prepared
together, so that slice i of both domains' shards is one pair (:mod:`sasan.data.shards`);
the raw data's layout does not decide it (a paired layout in unpaired mode is cut per volume)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from sasan.config import Config
from sasan.data.shards import write_dataset_shards
from sasan.tracking.lineage import data_identity, write_identity

if TYPE_CHECKING:
    from sasan.tracking.runs import Tracker


@dataclass(frozen=True)
class PreprocessInputs:
    raw: Path
    domains: Optional[tuple[str, ...]] = None     # default: experiment.source and experiment.target


@dataclass(frozen=True)
class PreprocessOutputs:
    shards: Path


def run(inputs: PreprocessInputs, outputs: PreprocessOutputs, cfg: Config, tracker: "Tracker",
        code_dir: Optional[Path] = None) -> dict[str, Any]:
    """Write the shards and ``stats.json``; returns the stats. ``code_dir``: the checkout
    whose ``dvc.lock`` may record the raw data's DVC hash.

    Only the domains training reads are cut (by default the experiment's source and target):
    a BraTS case also carries T1ce and FLAIR, which a T2 -> T1 run never reads and which
    ``preprocess.bounds`` need not cover."""
    domains = list(inputs.domains) if inputs.domains else list(dict.fromkeys(
        (cfg.experiment.source, cfg.experiment.target)))
    pair = (cfg.experiment.source, cfg.experiment.target) if cfg.experiment.mode == "paired" else None
    identity = data_identity(inputs.raw, code_dir)     # reads the manifest first: a refusal writes nothing
    stats = write_dataset_shards(Path(inputs.raw), Path(outputs.shards), cfg.preprocess, domains,
                                 affine_atol_mm=cfg.validate_.affine_atol_mm, pair=pair)
    write_identity(outputs.shards, identity)
    tracker.log_metrics({"slices": stats["counts"]}, prefix="preprocess")
    return stats

"""Train stage: the full recipe for each requested variant (SASAN and its baselines), each
into ``out_dir/<variant>/`` (config.yaml, checkpoints, logs, samples, model.pt)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from sasan.config import Config
from sasan.errors import DataError
from sasan.train.recipe import Trainer, open_shards
from sasan.train.variants import VARIANTS

log = logging.getLogger(__name__)


def check_shards(shards: Path, cfg: Config) -> None:
    for domain in (cfg.experiment.source, cfg.experiment.target):
        images = shards / domain / "train" / "images.npy"
        if not images.is_file():
            raise DataError(f"no training shard for domain {domain!r}: run `sasan preprocess` first", images)


def run_train(shards: str | Path, out_dir: str | Path, cfg: Config, variants: Sequence[str] = ("sasan",),
              on_log: Optional[Callable[[str, str, int, dict[str, float]], None]] = None,
              rank: int = 0, world_size: int = 1, progress: bool = True,
              on_checkpoint: Optional[Callable[[Path], None]] = None) -> dict[str, Any]:
    """``on_log(variant, phase, step, values)`` receives every logged training value;
    ``on_checkpoint(path)`` is called on rank 0 after each checkpoint save."""
    shards, out_dir = Path(shards), Path(out_dir)
    check_shards(shards, cfg)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise DataError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    summaries: dict[str, Any] = {}
    for variant in variants:
        log.info("training variant %s", variant)
        hook = (lambda phase, step, values, v=variant: on_log(v, phase, step, values)) if on_log else None
        trainer = Trainer(cfg, out_dir / variant, variant, on_log=hook, rank=rank, world_size=world_size,
                          progress=progress, on_checkpoint=on_checkpoint)
        summaries[variant] = trainer.run(open_shards(shards, trainer.cfg, variant))
    return summaries

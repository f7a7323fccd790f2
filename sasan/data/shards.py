"""Slice shards: the contract between preprocess (writer) and training (reader).

``OUT/<domain>/<split>/images.npy``  (N, S, H, W) float16|float32 in [-1, 1]
``OUT/<domain>/<split>/labels.npy``  (N, H, W) uint8, label of each stack's centre slice
                                     (present when every case of the split has a label)
``OUT/<domain>/<split>/index.json``  {"cases", "case_of_slice", "slice_of_case", "shape", "dtype"}
``OUT/stats.json``                   per-domain normalisation stats, slice counts, config

Each split folder is built in a temporary sibling and renamed into place, so a killed run
leaves the previous shard or none; leftovers of a killed run are removed by the next one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm.auto import tqdm

from sasan.atomic import atomic_dir, write_json
from sasan.data.config import PreprocessConfig
from sasan.data.prepare import bounds_for, prepare_case, stack_slices
from sasan.data.raw_cases import RawCase, load_raw_dataset
from sasan.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
STATS = "stats.json"


@dataclass(frozen=True)
class Shard:
    """A split's arrays, memory-mapped read-only."""

    images: np.ndarray  # (N, S, H, W)
    labels: Optional[np.ndarray]  # (N, H, W) uint8
    index: dict[str, Any]
    path: Path


def open_shard(shard_dir: str | Path) -> Shard:
    """Memory-map ``images.npy`` (and ``labels.npy`` if present) and check them against index.json."""
    path = Path(shard_dir)
    try:
        index = json.loads((path / "index.json").read_text())
    except FileNotFoundError:
        raise DataError("not a shard folder (index.json missing); run `sasan preprocess` first", path) from None
    except json.JSONDecodeError as err:
        raise DataError(f"index.json is not valid JSON ({err})", path) from None
    images = _mmap(path / "images.npy")
    if list(images.shape) != index["shape"]:
        raise DataError(f"images.npy shape {list(images.shape)} differs from index.json {index['shape']}", path)
    labels = _mmap(path / "labels.npy") if (path / "labels.npy").exists() else None
    if labels is not None and labels.shape != (images.shape[0], *images.shape[2:]):
        raise DataError(f"labels.npy shape {labels.shape} does not match images {images.shape}", path)
    return Shard(images=images, labels=labels, index=index, path=path)


def _mmap(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise DataError("missing shard array", path) from None
    except ValueError as err:
        raise DataError(f"unreadable shard array ({err})", path) from None


def write_dataset_shards(raw_dir: Path, out_dir: Path, cfg: PreprocessConfig,
                         domains: Optional[list[str]] = None) -> dict[str, Any]:
    """Preprocess every (or the given) domain of ``raw_dir`` into ``out_dir``; return stats."""
    dataset = load_raw_dataset(raw_dir)
    names = sorted(dataset.domains) if domains is None else list(domains)
    unknown = sorted(set(names) - set(dataset.domains))
    if unknown:
        raise DataError(f"unknown domain(s) {unknown}; the data set has {sorted(dataset.domains)}", raw_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "domains": {}, "counts": {}}
    for domain in names:
        _remove_leftovers(out_dir / domain)
        modality = dataset.domains[domain].modality
        bounds = bounds_for(cfg, modality, domain)
        volumes: dict[str, Any] = {}
        for split in SPLITS:
            cases = sorted((c for c in dataset.cases if c.domain == domain and c.split == split),
                           key=lambda c: c.case_id)
            if not cases:
                continue
            per_case = write_split(cases, out_dir / domain / split, cfg, bounds, desc=f"{domain}/{split}")
            volumes.update(per_case)
            stats["counts"].setdefault(domain, {})[split] = sum(v["kept"] for v in per_case.values())
        stats["domains"][domain] = {"modality": modality, "bounds": list(bounds), "volumes": volumes,
                                    **_summary(volumes)}
    stats = _merge_previous(out_dir / STATS, stats)
    write_json(out_dir / STATS, stats)
    log.info("preprocess: %s", json.dumps(stats["counts"], sort_keys=True))
    return stats


def write_split(cases: list[RawCase], target: Path, cfg: PreprocessConfig, bounds: tuple[float, float],
                desc: str = "") -> dict[str, dict[str, Any]]:
    """Build one ``<domain>/<split>`` shard atomically; return per-case stats."""
    dtype = np.dtype(cfg.dtype)
    per_case: dict[str, dict[str, Any]] = {}
    with atomic_dir(target) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; shards are read by other users (containers, DVC)
        chunks = tmp / "chunks"
        chunks.mkdir()
        kept_per_case, labelled = [], []
        for i, case in enumerate(tqdm(cases, desc=f"preprocess {desc}", unit="vol", leave=False)):
            prepared, labels = prepare_case(case.image, case.label, cfg, bounds)
            keep = (np.flatnonzero(prepared.body >= cfg.body_fraction) if cfg.skip_empty_slices
                    else np.arange(len(prepared.slices)))
            if keep.size == 0:
                log.warning("%s: no slice has body above the intensity threshold; case skipped", case.image)
            np.save(chunks / f"{i:05d}_images.npy", stack_slices(prepared.slices, keep, cfg.slices).astype(dtype))
            if labels is not None:
                np.save(chunks / f"{i:05d}_labels.npy", labels[keep])
            kept_per_case.append(keep)
            labelled.append(labels is not None)
            per_case[case.case_id] = {"split": target.name, "slices": int(len(prepared.slices)),
                                      "kept": int(keep.size), **prepared.stats}
        if any(labelled) and not all(labelled):
            log.warning("%s: only %d of %d cases have labels; labels.npy not written",
                        target, sum(labelled), len(labelled))
        _assemble(tmp, chunks, kept_per_case, cfg, dtype, with_labels=all(labelled))
        index = {
            "cases": [c.case_id for c in cases],
            "case_of_slice": [i for i, keep in enumerate(kept_per_case) for _ in keep],
            "slice_of_case": [int(j) for keep in kept_per_case for j in keep],
            "shape": [sum(len(k) for k in kept_per_case), cfg.slices, cfg.image_size, cfg.image_size],
            "dtype": dtype.name,
        }
        write_json(tmp / "index.json", index)
        shutil.rmtree(chunks)
    return per_case


def _assemble(tmp: Path, chunks: Path, kept: list[np.ndarray], cfg: PreprocessConfig, dtype: np.dtype,
              with_labels: bool) -> None:
    """Concatenate per-case chunks into one array file each, without holding them all in memory."""
    n = sum(len(k) for k in kept)
    size = cfg.image_size
    outputs = [("images", (n, cfg.slices, size, size), dtype)]
    if with_labels:
        outputs.append(("labels", (n, size, size), np.dtype(np.uint8)))
    for name, shape, kind in outputs:
        if n == 0:
            np.save(tmp / f"{name}.npy", np.zeros(shape, kind))
            continue
        out = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=kind, shape=shape)
        start = 0
        for i, keep in enumerate(kept):
            out[start:start + len(keep)] = np.load(chunks / f"{i:05d}_{name}.npy")
            start += len(keep)
        out.flush()
        del out


def _remove_leftovers(domain_dir: Path) -> None:
    """Temporary split folders of a killed run (``.train.*``, ``.test.*``)."""
    for split in SPLITS:
        for stale in domain_dir.glob(f".{split}.*"):
            if stale.is_dir():
                log.info("removing leftover of an interrupted run: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)


def _summary(volumes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not volumes:
        return {}
    keys = ("p_low", "p_high", "mean", "std")
    return {f"mean_{k}": float(np.mean([v[k] for v in volumes.values()])) for k in keys}


def _merge_previous(path: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Keep other domains' entries of an earlier run with the same config (``--domains`` runs)."""
    try:
        old = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return stats
    if old.get("config") != stats["config"]:
        return stats
    for domain, entry in old.get("domains", {}).items():
        if domain not in stats["domains"]:
            stats["domains"][domain] = entry
            stats["counts"][domain] = old.get("counts", {}).get(domain, {})
    stats["domains"] = dict(sorted(stats["domains"].items()))
    stats["counts"] = dict(sorted(stats["counts"].items()))
    return stats

"""Slice shards: the contract between preprocess (writer) and training (reader).

``OUT/<domain>/<split>/images.npy``  (N, S, H, W) float16|float32 in [-1, 1]
``OUT/<domain>/<split>/labels.npy``  (N, H, W) uint8, label of each stack's centre slice
                                     (present when every case of the split has a label)
``OUT/<domain>/<split>/index.json``  {"cases", "case_of_slice", "slice_of_case", "shape", "dtype"}
``OUT/stats.json``                   per-domain normalisation stats, slice counts, config

The whole output is built in a temporary sibling folder (``.OUT.tmp-*``, :func:`sasan.atomic.atomic_dir`) and swapped
in at the end, so a failed or killed run leaves the previous output as it was (shards and
stats.json of one run, never a mix) or none; leftovers of a killed run are removed by the
next one. Domains not preprocessed by a run (``--domains``) are carried over from the
previous output (hard links, no copy of the data).
"""

from __future__ import annotations

import json
import logging
import os
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
                         domains: Optional[list[str]] = None, affine_atol_mm: float = 1e-3) -> dict[str, Any]:
    """Preprocess every (or the given) domain of ``raw_dir`` into ``out_dir``; return stats.

    ``affine_atol_mm``: image/label affine tolerance (the validate stage's ``validate.affine_atol_mm``).
    All or nothing: ``out_dir`` is replaced only once every domain and split is written."""
    dataset = load_raw_dataset(raw_dir)
    names = sorted(dataset.domains) if domains is None else list(domains)
    unknown = sorted(set(names) - set(dataset.domains))
    if unknown:
        raise DataError(f"unknown domain(s) {unknown}; the data set has {sorted(dataset.domains)}", raw_dir)
    with atomic_dir(out_dir) as staging:
        stats: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "domains": {}, "counts": {}}
        for domain in names:
            modality = dataset.domains[domain].modality
            bounds = bounds_for(cfg, modality, domain)
            volumes: dict[str, Any] = {}
            for split in SPLITS:
                cases = sorted((c for c in dataset.cases if c.domain == domain and c.split == split),
                               key=lambda c: c.case_id)
                if not cases:
                    continue
                per_case = write_split(cases, staging / domain / split, cfg, bounds, desc=f"{domain}/{split}",
                                       modality=modality, affine_atol_mm=affine_atol_mm)
                volumes.update(per_case)
                stats["counts"].setdefault(domain, {})[split] = sum(v["kept"] for v in per_case.values())
            stats["domains"][domain] = {"modality": modality, "bounds": list(bounds), "volumes": volumes,
                                        **_summary(volumes)}
        stats = _merge_previous(out_dir / STATS, stats)
        _carry_over(out_dir, staging, skip={*names, STATS})
        write_json(staging / STATS, stats)
    log.info("preprocess: %s", json.dumps(stats["counts"], sort_keys=True))
    return stats


def _carry_over(out_dir: Path, staging: Path, skip: set[str]) -> None:
    """Everything of the previous ``out_dir`` this run does not rewrite (other domains'
    shards, files other stages put there), hard-linked into ``staging`` (copied where the
    file system cannot link)."""
    if not out_dir.is_dir():
        return
    for entry in sorted(out_dir.iterdir()):
        if entry.name in skip or (staging / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), staging / entry.name)
        else:
            _link_or_copy(str(entry), str(staging / entry.name))


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def write_split(cases: list[RawCase], target: Path, cfg: PreprocessConfig, bounds: tuple[float, float],
                desc: str = "", modality: Optional[str] = None,
                affine_atol_mm: float = 1e-3) -> dict[str, dict[str, Any]]:
    """Build one ``<domain>/<split>`` shard atomically; return per-case stats."""
    dtype = np.dtype(cfg.dtype)
    per_case: dict[str, dict[str, Any]] = {}
    with atomic_dir(target) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; shards are read by other users (containers, DVC)
        chunks = tmp / "chunks"
        chunks.mkdir()
        kept_per_case, labelled = [], []
        for i, case in enumerate(tqdm(cases, desc=f"preprocess {desc}", unit="vol", leave=False)):
            prepared, labels = prepare_case(case.image, case.label, cfg, bounds, modality, affine_atol_mm)
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

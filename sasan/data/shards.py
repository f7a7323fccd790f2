"""Slice shards: the contract between preprocess (writer) and training (reader).

``OUT/<domain>/<split>/images.npy``  (N, S, H, W) float16|float32 in [-1, 1]
``OUT/<domain>/<split>/labels.npy``  (N, H, W) uint8, label of each stack's centre slice
                                     (present when every case of the split has a label)
``OUT/<domain>/<split>/index.json``  {"cases", "case_of_slice", "slice_of_case", "shape", "dtype"}
                                     (paired mode adds "paired_with", "boxes": see below)
``OUT/stats.json``                   per-domain normalisation stats, slice counts, config

The whole output is built in a temporary sibling folder (``.OUT.tmp-*``, :func:`sasan.atomic.atomic_dir`) and swapped
in at the end, so a failed or killed run leaves the previous output as it was (shards and
stats.json of one run, never a mix) or none; leftovers of a killed run are removed by the
next one. Domains not preprocessed by a run (``--domains``) are carried over from the
previous output (hard links, no copy of the data).

Paired mode (``pair``: the experiment's source and target domains) prepares each subject's
two volumes together (:func:`sasan.data.prepare.prepare_pair`: one crop, one set of kept
slices), so both domains' shards of a split hold the same subjects' same slices in the same
order, cut with the same box: identical index.json ``cases``, ``case_of_slice``,
``slice_of_case``, ``shape`` and ``boxes`` (per case the crop, (lo, hi) per RAS axis of the
resampled grid), and each names the other domain in ``paired_with``
(:func:`check_paired_shards`). Other domains are prepared volume by volume, and their
index.json has neither key (unchanged from unpaired mode).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from sasan.atomic import atomic_dir, read_json, write_json
from sasan.data.config import PreprocessConfig
from sasan.data.prepare import PreparedVolume, bounds_for, prepare_case, prepare_pair, stack_slices
from sasan.data.raw_cases import RawCase, RawDataset, load_raw_dataset
from sasan.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
STATS = "stats.json"
# index.json entries paired shards share ("paired_with", also written by paired mode only, names the other domain)
PAIRED_KEYS = ("cases", "case_of_slice", "slice_of_case", "shape", "boxes")


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
    index = _read_index(path)
    images = _mmap(path / "images.npy")
    if list(images.shape) != index["shape"]:
        raise DataError(f"images.npy shape {list(images.shape)} differs from index.json {index['shape']}", path)
    labels = _mmap(path / "labels.npy") if (path / "labels.npy").exists() else None
    if labels is not None and labels.shape != (images.shape[0], *images.shape[2:]):
        raise DataError(f"labels.npy shape {labels.shape} does not match images {images.shape}", path)
    return Shard(images=images, labels=labels, index=index, path=path)


def check_paired_shards(source_dir: str | Path, target_dir: str | Path) -> None:
    """Raise a DataError unless the two shards (a split of the source and of the target domain,
    ``<domain>/<split>`` folders) were written together by paired preprocessing: each names the
    other's domain in index.json ``paired_with``, and they hold the same slices of the same
    cases in the same order, cut with the same boxes (:data:`PAIRED_KEYS` equal), as paired
    training, which takes slice i of both as one pair, needs. Per-volume (unpaired-mode)
    shards have no ``paired_with``/``boxes``: refused even where their kept slices coincide."""
    source_dir, target_dir = Path(source_dir), Path(target_dir)
    source, target = _read_index(source_dir), _read_index(target_dir)
    missing = [key for key in ("paired_with", "boxes") if key not in source or key not in target]
    differ = [key for key in PAIRED_KEYS if source.get(key) != target.get(key)]
    if missing:
        why = f"lack index.json {', '.join(missing)}: shards prepared volume by volume"
    elif differ:
        why = f"differ in index.json {', '.join(differ)}"
    elif (source["paired_with"], target["paired_with"]) != (target_dir.parent.name, source_dir.parent.name):
        why = (f"were not prepared as one pair: index.json paired_with {source['paired_with']!r} and "
               f"{target['paired_with']!r}")
    else:
        return
    raise DataError(f"paired mode needs aligned shards: run `sasan preprocess` with experiment.mode: paired "
                    f"({source_dir} and {target_dir} {why})")


def _read_index(path: Path) -> dict[str, Any]:
    return read_json(path / "index.json", missing="not a shard folder (index.json missing); run `sasan preprocess` first")


def _mmap(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise DataError("missing shard array", path) from None
    except ValueError as err:
        raise DataError(f"unreadable shard array ({err})", path) from None


def write_dataset_shards(raw_dir: Path, out_dir: Path, cfg: PreprocessConfig,
                         domains: Optional[list[str]] = None, affine_atol_mm: float = 1e-3,
                         pair: Optional[tuple[str, str]] = None) -> dict[str, Any]:
    """Preprocess every (or the given) domain of ``raw_dir`` into ``out_dir``; return stats.

    ``affine_atol_mm``: image/label affine tolerance (the validate stage's ``validate.affine_atol_mm``).
    ``pair``: paired mode's (source, target) domains, prepared subject by subject together
    (:func:`write_paired_split`); both or neither must be among ``domains``.
    All or nothing: ``out_dir`` is replaced only once every domain and split is written."""
    dataset = load_raw_dataset(raw_dir)
    names = sorted(dataset.domains) if domains is None else list(domains)
    unknown = sorted(set(names) - set(dataset.domains))
    if unknown:
        raise DataError(f"unknown domain(s) {unknown}; the data set has {sorted(dataset.domains)}", raw_dir)
    paired = tuple(pair) if pair is not None and pair[0] != pair[1] and set(pair) & set(names) else ()
    if paired and not set(paired) <= set(names):
        raise ConfigError(f"paired mode preprocesses domains {paired[0]!r} and {paired[1]!r} together: "
                          f"give both or neither (got {names})")
    if not paired and (dataset.manifest or {}).get("layout") == "paired":
        log.info("%s: paired layout, but not paired mode: every volume is prepared on its own", raw_dir)
    specs = {d: (dataset.domains[d].modality, bounds_for(cfg, dataset.domains[d].modality, d)) for d in names}
    with atomic_dir(out_dir) as staging:
        stats: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "domains": {}, "counts": {}}
        written: dict[tuple[str, str], dict[str, Any]] = {}  # (domain, split) -> per-case stats
        if paired:
            for split in SPLITS:
                written.update(write_paired_split(dataset, paired, split, staging, cfg, specs, affine_atol_mm))
        for domain in names:
            modality, bounds = specs[domain]
            volumes: dict[str, Any] = {}
            for split in SPLITS:
                cases = _split_cases(dataset, domain, split)
                if not cases:
                    continue
                if (domain, split) not in written:
                    written[domain, split] = write_split(cases, staging / domain / split, cfg, bounds,
                                                         desc=f"{domain}/{split}", modality=modality,
                                                         affine_atol_mm=affine_atol_mm)
                per_case = written[domain, split]
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


def _split_cases(dataset: RawDataset, domain: str, split: str) -> list[RawCase]:
    return sorted((c for c in dataset.cases if c.domain == domain and c.split == split), key=lambda c: c.case_id)


def _kept(body: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """The slices a shard keeps, given each slice's body fraction."""
    return np.flatnonzero(body >= cfg.body_fraction) if cfg.skip_empty_slices else np.arange(len(body))


def write_split(cases: list[RawCase], target: Path, cfg: PreprocessConfig, bounds: tuple[float, float],
                desc: str = "", modality: Optional[str] = None,
                affine_atol_mm: float = 1e-3) -> dict[str, dict[str, Any]]:
    """Build one ``<domain>/<split>`` shard atomically; return per-case stats."""
    with _split_writer(target, cfg) as shard:
        for case in tqdm(cases, desc=f"preprocess {desc}", unit="vol", leave=False):
            prepared, labels = prepare_case(case.image, case.label, cfg, bounds, modality, affine_atol_mm)
            shard.add(case, prepared, labels, _kept(prepared.body, cfg))
    return shard.per_case


def write_paired_split(dataset: RawDataset, pair: tuple[str, str], split: str, out_dir: Path,
                       cfg: PreprocessConfig, specs: dict[str, tuple[str, tuple[float, float]]],
                       affine_atol_mm: float = 1e-3) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """Build the ``<domain>/<split>`` shards of both ``pair`` domains subject by subject
    (:func:`prepare_pair`), keeping the slices where both images have body; ``specs``: each
    domain's (modality, bounds). Returns per-case stats by (domain, split); DataError when a
    case id of the split is in one domain only."""
    by_id = {d: {c.case_id: c for c in _split_cases(dataset, d, split)} for d in pair}
    lonely = sorted(by_id[pair[0]].keys() ^ by_id[pair[1]].keys())
    if lonely:
        has, lacks = pair if lonely[0] in by_id[pair[0]] else pair[::-1]
        raise DataError(f"paired mode: case {lonely[0]!r} ({split}) is in domain {has!r} but not in {lacks!r}; "
                        "every subject needs an image in both", dataset.root)
    if not by_id[pair[0]]:
        return {}
    with (_split_writer(out_dir / pair[0] / split, cfg, paired_with=pair[1]) as first,
          _split_writer(out_dir / pair[1] / split, cfg, paired_with=pair[0]) as second):
        for case_id in tqdm(sorted(by_id[pair[0]]), desc=f"preprocess {'+'.join(pair)}/{split}", unit="pair",
                            leave=False):
            cases = [by_id[d][case_id] for d in pair]
            (a, a_labels), (b, b_labels) = prepare_pair(
                [c.image for c in cases], [c.label for c in cases], cfg, [specs[d][1] for d in pair],
                [specs[d][0] for d in pair], affine_atol_mm)
            keep = _kept(np.minimum(a.body, b.body), cfg)
            first.add(cases[0], a, a_labels, keep)
            second.add(cases[1], b, b_labels, keep)
    return {(pair[0], split): first.per_case, (pair[1], split): second.per_case}


class _SplitWriter:
    """One shard in the making: :meth:`add` saves a case's kept stacks (and labels) as chunk
    files in ``tmp``; :meth:`finish` joins them into the arrays and writes index.json (with
    ``paired_with``, paired mode's other domain: also that and each case's crop box)."""

    def __init__(self, tmp: Path, target: Path, cfg: PreprocessConfig, paired_with: Optional[str] = None):
        self.tmp, self.target, self.cfg, self.paired_with = tmp, target, cfg, paired_with
        self.boxes: list[list[list[int]]] = []
        self.dtype = np.dtype(cfg.dtype)
        self.chunks = tmp / "chunks"
        self.chunks.mkdir()
        self.case_ids: list[str] = []
        self.kept: list[np.ndarray] = []
        self.labelled: list[bool] = []
        self.per_case: dict[str, dict[str, Any]] = {}

    def add(self, case: RawCase, prepared: PreparedVolume, labels: Optional[np.ndarray], keep: np.ndarray) -> None:
        i = len(self.kept)
        if keep.size == 0:
            log.warning("%s: no slice has body above the intensity threshold; case skipped", case.image)
        stacks = stack_slices(prepared.slices, keep, self.cfg.slices).astype(self.dtype)
        np.save(self.chunks / f"{i:05d}_images.npy", stacks)
        if labels is not None:
            np.save(self.chunks / f"{i:05d}_labels.npy", labels[keep])
        self.case_ids.append(case.case_id)
        self.kept.append(keep)
        self.labelled.append(labels is not None)
        self.boxes.append([[int(lo), int(hi)] for lo, hi in prepared.geometry.box])
        self.per_case[case.case_id] = {"split": self.target.name, "slices": int(len(prepared.slices)),
                                       "kept": int(keep.size), **prepared.stats}

    def finish(self) -> None:
        labelled, kept, cfg = self.labelled, self.kept, self.cfg
        if any(labelled) and not all(labelled):
            log.warning("%s: only %d of %d cases have labels; labels.npy not written",
                        self.target, sum(labelled), len(labelled))
        _assemble(self.tmp, self.chunks, kept, cfg, self.dtype, with_labels=all(labelled))
        index = {
            "cases": self.case_ids,
            "case_of_slice": [i for i, keep in enumerate(kept) for _ in keep],
            "slice_of_case": [int(j) for keep in kept for j in keep],
            "shape": [sum(len(k) for k in kept), cfg.slices, cfg.image_size, cfg.image_size],
            "dtype": self.dtype.name,
        }
        if self.paired_with is not None:  # paired mode only: unpaired index.json stays as it was
            index.update(paired_with=self.paired_with, boxes=self.boxes)
        write_json(self.tmp / "index.json", index)
        shutil.rmtree(self.chunks)


@contextmanager
def _split_writer(target: Path, cfg: PreprocessConfig, paired_with: Optional[str] = None) -> Iterator[_SplitWriter]:
    """A :class:`_SplitWriter` in a temporary folder that replaces ``target`` when the block succeeds."""
    with atomic_dir(target) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; shards are read by other users (containers, DVC)
        writer = _SplitWriter(tmp, target, cfg, paired_with)
        yield writer
        writer.finish()


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

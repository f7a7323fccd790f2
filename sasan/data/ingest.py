"""The ingest stage: any supported source and layout -> canonical layout + ``manifest.json``.

Steps: fetch the source (local, archive, S3, DVC; :mod:`sasan.data.sources`), list its
cases (:mod:`sasan.data.adapters`), fix the train/test split per subject (seeded; a case the
source already holds out stays test; a subject never straddles splits), then load and check
every volume, remap label values, and write the canonical tree and manifest into a
temporary sibling of OUT that replaces OUT only when everything succeeded.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tempfile
import time
import zlib
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from sasan.atomic import atomic_dir
from sasan.data import layout as canon
from sasan.data.adapters import ADAPTERS, AdaptedDataset, DomainSpec, SourceCase
from sasan.data.manifest import MANIFEST_NAME, build_manifest, case_entry, write_manifest
from sasan.data.sources import fetch_source
from sasan.data.volume import Volume, check_pair, label_values, load_volume
from sasan.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def assign_splits(cases: list[SourceCase], test_fraction: float, seed: int) -> dict[str, str]:
    """case id -> "train" | "test". Subjects (case ids) are stratified by the set of domains
    they appear in; in each stratum round(test_fraction * n) subjects are test (at least one
    when n >= 2), counting the ones the source already holds out, which stay test."""
    domains_of: dict[str, set[str]] = defaultdict(set)
    forced: set[str] = set()
    for c in cases:
        domains_of[c.case_id].add(c.domain)
        if c.split == "test":
            forced.add(c.case_id)
    strata: dict[str, list[str]] = defaultdict(list)
    for case_id, doms in domains_of.items():
        strata["+".join(sorted(doms))].append(case_id)
    splits: dict[str, str] = {}
    for name in sorted(strata):
        subjects = sorted(strata[name])
        n = len(subjects)
        n_test = min(max(int(round(test_fraction * n)), 1 if n >= 2 else 0), n - 1) if n else 0
        free = [s for s in subjects if s not in forced]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        extra = max(0, n_test - (n - len(free)))
        chosen = {free[i] for i in rng.permutation(len(free))[:extra]}
        for s in subjects:
            splits[s] = "test" if (s in forced or s in chosen) else "train"
    return splits


def run_ingest(source: str | Path, out_dir: str | Path, layout: str = "nnunet", test_fraction: float = 0.2,
               seed: int = 0) -> dict:
    """Convert ``source`` (see :mod:`sasan.data.sources`) in layout ``layout`` into the
    canonical layout in ``out_dir`` with ``manifest.json``; returns a summary dict."""
    layout_name = layout
    if layout_name not in ADAPTERS:
        raise ConfigError(f"unknown layout {layout_name!r}; choose from {', '.join(ADAPTERS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_output(out_dir)
    with tempfile.TemporaryDirectory(prefix="sasan-ingest-") as scratch:
        root = fetch_source(str(source), scratch)
        if root.resolve() == out_dir.resolve() or out_dir.resolve().is_relative_to(root.resolve()):
            raise DataError("output folder must lie outside the source folder", out_dir)
        ds = ADAPTERS[layout_name](root)
        _check_unique(ds)
        splits = assign_splits(ds.cases, test_fraction, seed)
        with atomic_dir(out_dir) as tmp:
            entries, domains = _write_dataset(ds, splits, tmp)
            write_manifest(tmp, build_manifest(ds.name, seed, test_fraction, domains, entries,
                                               layout=layout_name, source=str(source)))
    counts = {d: {s: sum(1 for e in entries if e["domain"] == d and e["split"] == s) for s in ("train", "test")}
              for d in domains}
    log.info("ingested %d cases into %s: %s", len(entries), out_dir, counts)
    return {"out_dir": str(out_dir), "dataset": ds.name, "layout": layout_name, "cases": len(entries),
            "domains": counts, "seconds": round(time.perf_counter() - start, 2)}


def _check_unique(ds: AdaptedDataset) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for c in ds.cases:
        first = seen.setdefault((c.domain, c.case_id), c.image)
        if first != c.image:
            raise DataError(f"case id {c.case_id!r} of domain {c.domain!r} also comes from {first}", c.image)


def _check_output(out_dir: Path) -> None:
    # OUT is replaced as a whole: never do that to a folder that is not a previous ingest.
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError("output path exists and is not a folder", out_dir)
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
            raise DataError(f"output folder is not empty and holds no {MANIFEST_NAME}; refusing to replace it",
                            out_dir)


def _write_dataset(ds: AdaptedDataset, splits: dict[str, str], tmp: Path):
    entries: list[dict] = []
    found_values: dict[str, set[int]] = defaultdict(set)
    unknown: dict[str, set[int]] = defaultdict(set)
    for case in tqdm(ds.cases, desc="ingest", unit="vol", leave=False):
        spec = ds.domains[case.domain]
        split = splits[case.case_id]
        image = load_volume(case.image, kind="image")
        img_out = canon.image_path(tmp, case.domain, case.case_id, split)
        _copy_nifti(case.image, img_out)
        lbl_out = None
        if case.label is not None:
            lbl_out = canon.label_path(tmp, case.domain, case.case_id, split)
            found_values[case.domain] |= _write_label(case.label, image, spec, lbl_out, unknown[case.domain])
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        entries.append(case_entry(tmp, case.case_id, case.domain, split, img_out, lbl_out,
                                  image.array.shape, spacing, image.orientation))
    domains = {}
    for name, spec in sorted(ds.domains.items()):
        if unknown[name]:
            log.warning("%s: raw label values %s are not among the mapped structures; written as 0",
                        name, sorted(unknown[name]))
        labels = spec.labels or {"background": 0, **{f"label_{v}": v for v in sorted(found_values[name]) if v}}
        n_train = sum(1 for e in entries if e["domain"] == name and e["split"] == "train")
        canon.write_dataset_json(tmp / name, canon.DatasetInfo(name=f"{ds.name}_{name}", modality=spec.modality,
                                                                 labels=labels, num_training=n_train))
        domains[name] = {"modality": spec.modality, "labels": labels}
    return entries, domains


def _copy_nifti(src: Path, dst: Path) -> None:
    """Byte copy (.nii.gz) or gzip (.nii): the header, hence the geometry, is kept exactly."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.name.endswith(".gz"):
        shutil.copyfile(src, dst)
    else:
        with open(src, "rb") as fin, gzip.open(dst, "wb", compresslevel=6) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)


def _write_label(src: Path, image: Volume, spec: DomainSpec, dst: Path, unknown: set[int]) -> set[int]:
    """Check the label against its image, remap its values, write it; returns output values."""
    label = load_volume(src, kind="label")
    check_pair(image, label)
    values = label_values(label.array)
    if spec.label_map is None:
        if spec.labels is not None:
            bad = sorted(set(values) - set(spec.labels.values()))
            if bad:
                raise DataError(f"label values {bad} are not in dataset.json labels {spec.labels}", src)
        _copy_nifti(src, dst)
        return set(values)
    unknown |= set(values) - set(spec.label_map) - set(spec.known_values)
    lut = np.zeros(max(values, default=0) + 1, np.uint8)
    for raw, new in spec.label_map.items():
        if raw < lut.size:
            lut[raw] = new
    out = lut[label.array]
    header = label.header.copy()
    header.set_data_dtype(np.uint8)
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(out, label.affine, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, dst)
    return set(int(v) for v in np.unique(lut[np.asarray(values, dtype=np.intp)])) if values else set()

"""The ingest stage: any supported source and layout -> canonical layout + ``manifest.json``.

Steps: fetch the source (local, archive, S3, DVC; :mod:`sasan.data.sources`), list its
cases (:mod:`sasan.data.adapters`), fix the train/test split per subject (seeded; a case the
source already holds out stays test; a subject never straddles splits; only labelled subjects
fill the test quota, or in paired mode the subjects with both images of the experiment's
pair, labelled or not),
then load and check every volume, remap label values, and write the canonical tree and
manifest into a temporary sibling of OUT that replaces OUT only when everything succeeded.
A label stored in another orientation than its image (the same grid, axes flipped or
permuted) is written in the image's, so that every later stage reads the two on one grid.

Manifest case entries get two optional fields, written only when they apply: ``subject``
(the patient, where it differs from the case id: BraTS 2023+ time points) and
``unknown_label_values`` (raw label values outside the layout's table, written as 0).
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
from typing import Optional

import nibabel as nib
import numpy as np
from tqdm import tqdm

from sasan.atomic import atomic_dir
from sasan.data import layout as canon
from sasan.data.adapters import ADAPTERS, AdaptedDataset, DomainSpec, SourceCase
from sasan.data.manifest import MANIFEST_NAME, build_manifest, case_entry, write_manifest
from sasan.data.sources import fetch_source, parse_source
from sasan.data.volume import Volume, label_on_image_grid, label_values, load_volume
from sasan.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def assign_splits(cases: list[SourceCase], test_fraction: float, seed: int, paired: bool = False,
                  pair: Optional[tuple[str, str]] = None) -> dict[str, str]:
    """case id -> "train" | "test". Subjects (:attr:`SourceCase.subject_id`: the case id, or
    the patient of several case ids) are stratified by the set of domains they appear in. In
    each stratum round(test_fraction * n) of its n labelled subjects (a label in any domain)
    are test (at least one when n >= 2, at least one left for train), counting the labelled
    ones the source already holds out. Every held-out subject stays test; an unlabelled
    subject never counts toward nor is drawn for the quota: it stays test when held out, else
    train (where a target domain uses it unlabelled).

    ``paired`` (``experiment.mode: paired``, or without an experiment the paired layout; RIRE
    has no labels): the quota counts the complete pairs, which paired evaluation scores,
    labelled or not, by the same rule and draw: the subjects with an image in both domains of
    ``pair`` (the experiment's source and target), or without ``pair`` in every modality of
    the data set. A subject lacking one of them never counts nor is drawn. A fully labelled
    paired data set splits as without ``paired``."""
    domains_of: dict[str, set[str]] = defaultdict(set)
    forced: set[str] = set()
    labelled: set[str] = set()
    subject_of: dict[str, str] = {}
    for c in cases:
        subject = c.subject_id
        subject_of[c.case_id] = subject
        domains_of[subject].add(c.domain)
        if c.split == "test":
            forced.add(subject)
        if c.label is not None:
            labelled.add(subject)
    strata: dict[str, list[str]] = defaultdict(list)
    for subject, doms in domains_of.items():
        strata["+".join(sorted(doms))].append(subject)
    needed = set(pair) if pair else {c.domain for c in cases}  # what a complete pair has
    split_of: dict[str, str] = {}
    for name in sorted(strata):
        if paired:
            subjects = sorted(strata[name]) if needed <= domains_of[strata[name][0]] else []
        else:
            subjects = sorted(s for s in strata[name] if s in labelled)
        n = len(subjects)
        n_test = min(max(int(round(test_fraction * n)), 1 if n >= 2 else 0), n - 1) if n else 0
        free = [s for s in subjects if s not in forced]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        extra = max(0, n_test - (n - len(free)))
        chosen = {free[i] for i in rng.permutation(len(free))[:extra]}
        for s in strata[name]:
            split_of[s] = "test" if (s in forced or s in chosen) else "train"
    return {case_id: split_of[subject] for case_id, subject in subject_of.items()}


def run_ingest(source: str | Path, out_dir: str | Path, layout: str = "nnunet", test_fraction: float = 0.2,
               seed: int = 0, affine_atol_mm: float = 1e-3, paired: Optional[bool] = None,
               pair: Optional[tuple[str, str]] = None) -> dict:
    """Convert ``source`` (see :mod:`sasan.data.sources`) in layout ``layout`` into the
    canonical layout in ``out_dir`` with ``manifest.json``; returns a summary dict.
    ``affine_atol_mm``: how far a label's affine may differ from its image's (the
    ``validate.affine_atol_mm`` setting). ``paired``: whether the test quota counts complete
    pairs, labelled or not (:func:`assign_splits`): the experiment's mode decides
    (``experiment.mode == "paired"``); ``None`` (no experiment known) leaves it to the layout
    (``paired``: yes). ``pair``: the paired experiment's (source, target) domains, both of
    which a complete pair has (without it: every modality of the data set)."""
    layout_name = layout
    if layout_name not in ADAPTERS:
        raise ConfigError(f"unknown layout {layout_name!r}; choose from {', '.join(ADAPTERS)}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if not affine_atol_mm > 0:
        raise ConfigError(f"affine_atol_mm must be > 0, got {affine_atol_mm}")
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_source_outside(str(source), out_dir)
    _check_output(out_dir)
    with tempfile.TemporaryDirectory(prefix="sasan-ingest-") as scratch:
        root = fetch_source(str(source), scratch)
        if root.resolve() == out_dir.resolve() or out_dir.resolve().is_relative_to(root.resolve()):
            raise DataError("output folder must lie outside the source folder", out_dir)
        ds = ADAPTERS[layout_name](root)
        _check_unique(ds)
        if paired is None:
            paired = layout_name == "paired"
        if paired and pair is not None:
            _check_pair(pair, ds)
        splits = assign_splits(ds.cases, test_fraction, seed, paired=paired, pair=pair if paired else None)
        with atomic_dir(out_dir) as tmp:
            entries, domains = _write_dataset(ds, splits, tmp, affine_atol_mm)
            write_manifest(tmp, build_manifest(ds.name, seed, test_fraction, domains, entries,
                                               layout=layout_name, source=str(source)))
    counts = {d: {s: sum(1 for e in entries if e["domain"] == d and e["split"] == s) for s in ("train", "test")}
              for d in domains}
    log.info("ingested %d cases into %s: %s", len(entries), out_dir, counts)
    return {"out_dir": str(out_dir), "dataset": ds.name, "layout": layout_name, "cases": len(entries),
            "domains": counts, "seconds": round(time.perf_counter() - start, 2)}


def _check_pair(pair: tuple[str, str], ds: AdaptedDataset) -> None:
    missing = [d for d in dict.fromkeys(pair) if d not in ds.domains]
    if missing:
        raise ConfigError(f"paired mode: experiment source/target {' and '.join(repr(d) for d in missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not among the data set's domains "
                          f"({', '.join(sorted(ds.domains))}); the paired test quota counts subjects with an "
                          "image in both")


def _check_unique(ds: AdaptedDataset) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for c in ds.cases:
        first = seen.setdefault((c.domain, c.case_id), c.image)
        if first != c.image:
            raise DataError(f"case id {c.case_id!r} of domain {c.domain!r} also comes from {first}", c.image)


def _check_source_outside(source: str, out_dir: Path) -> None:
    # OUT is replaced as a whole: a local source (folder or archive) inside it would be deleted.
    src = parse_source(source)
    if src.kind != "local":
        return
    path, out = Path(src.location).resolve(), out_dir.resolve()
    if path == out or path.is_relative_to(out):
        raise DataError(f"source lies inside the output folder {out_dir}, which ingest replaces; "
                        "choose an output folder outside the source", source)


def _check_output(out_dir: Path) -> None:
    # OUT is replaced as a whole: never do that to a folder that is not a previous ingest.
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError("output path exists and is not a folder", out_dir)
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST_NAME).is_file():
            raise DataError(f"output folder is not empty and holds no {MANIFEST_NAME}; refusing to replace it",
                            out_dir)


def _write_dataset(ds: AdaptedDataset, splits: dict[str, str], tmp: Path, affine_atol_mm: float = 1e-3):
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
        case_unknown: set[int] = set()
        if case.label is not None:
            lbl_out = canon.label_path(tmp, case.domain, case.case_id, split)
            try:
                found_values[case.domain] |= _write_label(case.label, image, spec, lbl_out, case_unknown,
                                                          affine_atol_mm)
            except DataError as err:
                if not case.label_shared or "differs from" not in err.reason:
                    raise
                raise DataError(f"{err.reason}; a shared {case.label.name} must lie on the grid of every "
                                "modality of its case (else name it <modality>_label.nii.gz)", err.path) from None
            unknown[case.domain] |= case_unknown
        spacing = image.spacing        # pixdim, unless it disagrees with the affine
        entry = case_entry(tmp, case.case_id, case.domain, split, img_out, lbl_out,
                           image.array.shape, spacing, image.orientation)
        if case.subject is not None and case.subject != case.case_id:
            entry["subject"] = case.subject
        if case_unknown:
            entry["unknown_label_values"] = sorted(case_unknown)
        entries.append(entry)
    domains = {}
    for name, spec in sorted(ds.domains.items()):
        if unknown[name]:
            log.warning("%s: raw label values %s are not among the mapped structures; written as 0 (cases in "
                        "manifest.json 'unknown_label_values')", name, sorted(unknown[name]))
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


def _write_label(src: Path, image: Volume, spec: DomainSpec, dst: Path, unknown: set[int],
                 affine_atol_mm: float = 1e-3) -> set[int]:
    """Check the label against its image, remap its values, write it; returns output values
    and adds the raw values outside the layout's table to ``unknown``."""
    stored = load_volume(src, kind="label")
    # a label stored in another orientation is written in the image's, so that every later
    # stage sees the two on one grid
    label = label_on_image_grid(image, stored, affine_atol_mm)
    values = label_values(label.array)
    if spec.label_map is None:
        if spec.labels is not None:
            bad = sorted(set(values) - set(spec.labels.values()))
            if bad:
                raise DataError(f"label values {bad} are not in the data set's label table {spec.labels}", src)
        if label is stored:
            _copy_nifti(src, dst)
        else:
            _save_label(label.array, label, dst)
        return set(values)
    _check_merged_values(src, values, spec)
    unknown |= set(values) - set(spec.label_map) - set(spec.known_values)
    lut = np.zeros(max(values, default=0) + 1, np.uint8)
    for raw, new in spec.label_map.items():
        if raw < lut.size:
            lut[raw] = new
    _save_label(lut[label.array], label, dst)
    return set(int(v) for v in np.unique(lut[np.asarray(values, dtype=np.intp)])) if values else set()


def _save_label(array: np.ndarray, label: Volume, dst: Path) -> None:
    """Write ``array`` (label values, on ``label``'s grid) with ``label``'s header."""
    header = label.header.copy()
    header.set_data_dtype(array.dtype)
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(array, label.affine, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, dst)


def _check_merged_values(src: Path, values: list[int], spec: DomainSpec) -> None:
    """Raw values that the layout maps to one structure (BraTS ET: 4 up to 2021, 3 from 2023)
    are alternative codes: one file holding several of them means something else (BraTS 2024
    post-treatment: 3 ET, 4 resection cavity), which a merge would hide."""
    present = set(values)
    by_new: dict[int, list[int]] = defaultdict(list)
    for raw, new in sorted((spec.label_map or {}).items()):
        if raw in present and new != 0:
            by_new[new].append(raw)
    for new, raws in sorted(by_new.items()):
        if len(raws) > 1:
            name = next((k for k, v in (spec.labels or {}).items() if v == new), str(new))
            raise DataError(f"label values {' and '.join(map(str, raws))} both occur, but this layout reads them "
                            f"as alternative codes of {name} ({new}); a label with both (e.g. BraTS 2024 "
                            "post-treatment, 4 = resection cavity) is not supported", src)

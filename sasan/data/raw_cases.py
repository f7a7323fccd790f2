"""The cases of a canonical raw data set, as validate and preprocess read them.

Source of truth is ``<raw>/manifest.json`` (written by ingest: splits are fixed there).
A folder without a manifest (a user's own canonical tree) is enumerated from its layout
(:mod:`sasan.data.layout`): ``imagesTr`` is the train split, ``imagesTs`` the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sasan.atomic import read_json
from sasan.data import layout
from sasan.errors import DataError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RawCase:
    case_id: str
    domain: str
    split: str  # "train" | "test"
    image: Path
    label: Optional[Path]
    sha256: dict[str, Optional[str]] = field(default_factory=dict)  # from the manifest, if any


@dataclass(frozen=True)
class RawDataset:
    root: Path
    domains: dict[str, layout.DatasetInfo]
    cases: list[RawCase]
    manifest: Optional[dict[str, Any]]

    def dataset_json(self, domain: str) -> Path:
        return self.root / domain / "dataset.json"


def load_raw_dataset(raw_dir: str | Path) -> RawDataset:
    """All cases of ``raw_dir`` (manifest first, folder layout otherwise); DataError if none."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise DataError("raw data folder not found", root)
    manifest_path = root / MANIFEST
    if manifest_path.exists():
        return _from_manifest(root, manifest_path)
    return _from_layout(root)


def _from_manifest(root: Path, path: Path) -> RawDataset:
    manifest = read_json(path, missing="manifest.json not found: run `sasan ingest` first")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), list):
        raise DataError("manifest must be an object with a 'cases' list", path)
    cases: list[RawCase] = []
    for i, entry in enumerate(manifest["cases"]):
        try:
            split = entry["split"]
            if split not in layout.SPLIT_DIRS:
                raise DataError(f"case #{i}: split must be 'train' or 'test', got {split!r}", path)
            label = entry.get("label")
            sha = entry.get("sha256") or {}
            cases.append(RawCase(case_id=str(entry["case_id"]), domain=str(entry["domain"]), split=split,
                                 image=root / entry["image"], label=None if label is None else root / label,
                                 sha256={"image": sha.get("image"), "label": sha.get("label")}))
        except (KeyError, TypeError) as err:
            raise DataError(f"case #{i} lacks field {err}", path) from None
    if not cases:
        raise DataError("manifest lists no cases", path)
    names = sorted({c.domain for c in cases} | set(manifest.get("domains") or {}))
    domains = {d: layout.read_dataset_json(root / d) for d in names}
    return RawDataset(root=root, domains=domains, cases=cases, manifest=manifest)


def _from_layout(root: Path) -> RawDataset:
    names = layout.domains(root)
    if not names:
        raise DataError(f"empty data set: no {MANIFEST} and no <domain>/dataset.json", root)
    domains = {d: layout.read_dataset_json(root / d) for d in names}
    cases = [RawCase(case_id=c.case_id, domain=c.domain, split=c.split, image=c.image, label=c.label)
             for d in names for c in layout.iter_cases(root, d)]
    for d in names:
        if not any(c.domain == d for c in cases):
            raise DataError(f"empty domain folder: no images in imagesTr/ or imagesTs/", root / d)
    return RawDataset(root=root, domains=domains, cases=cases, manifest=None)

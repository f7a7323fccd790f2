"""``manifest.json``: the record ingest leaves next to a canonical data set.

    {"version": 1, "dataset", "seed", "test_fraction", "layout", "source",
     "domains": {domain: {"modality", "labels": {name: value}}},
     "cases": [{"case_id", "domain", "split", "image", "label" | null,
                "sha256": {"image", "label" | null}, "shape", "spacing", "orientation"}]}

Paths are relative to the data set folder. Splits are fixed here once; later stages read them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sasan.atomic import read_json, write_json
from sasan.errors import DataError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
CASE_FIELDS = ("case_id", "domain", "split", "image", "label", "sha256", "shape", "spacing", "orientation")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def case_entry(root: Path, case_id: str, domain: str, split: str, image: Path, label: Path | None,
               shape, spacing, orientation: str) -> dict[str, Any]:
    """One manifest case; hashes the files (paths made relative to ``root``)."""
    return {
        "case_id": case_id,
        "domain": domain,
        "split": split,
        "image": image.relative_to(root).as_posix(),
        "label": None if label is None else label.relative_to(root).as_posix(),
        "sha256": {"image": sha256_file(image), "label": None if label is None else sha256_file(label)},
        "shape": [int(s) for s in shape],
        "spacing": [round(float(s), 6) for s in spacing],
        "orientation": orientation,
    }


def build_manifest(dataset: str, seed: int, test_fraction: float, domains: dict[str, dict[str, Any]],
                   cases: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    doc = {"version": MANIFEST_VERSION, "dataset": dataset, "seed": seed, "test_fraction": test_fraction,
           **extra, "domains": domains,
           "cases": sorted(cases, key=lambda c: (c["domain"], c["split"], c["case_id"]))}
    return doc


def write_manifest(root: str | Path, doc: dict[str, Any]) -> Path:
    path = Path(root) / MANIFEST_NAME
    write_json(path, doc)
    return path


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Read and structurally check ``<root>/manifest.json``; DataError names what is wrong."""
    path = Path(root) / MANIFEST_NAME
    doc = read_json(path, missing="manifest.json is missing")
    if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION:
        raise DataError(f"not a version-{MANIFEST_VERSION} manifest", path)
    if not isinstance(doc.get("domains"), dict) or not isinstance(doc.get("cases"), list):
        raise DataError("manifest needs a 'domains' object and a 'cases' list", path)
    seen = set()
    for i, case in enumerate(doc["cases"]):
        missing = [k for k in CASE_FIELDS if not isinstance(case, dict) or k not in case]
        if missing:
            raise DataError(f"case #{i} lacks {', '.join(missing)}", path)
        if case["split"] not in ("train", "test"):
            raise DataError(f"case {case['case_id']!r}: split must be train or test", path)
        if case["domain"] not in doc["domains"]:
            raise DataError(f"case {case['case_id']!r}: unknown domain {case['domain']!r}", path)
        key = (case["domain"], case["case_id"])
        if key in seen:
            raise DataError(f"case {case['case_id']!r} listed twice in domain {case['domain']!r}", path)
        seen.add(key)
    return doc

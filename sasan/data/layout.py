"""The canonical data set layout (nnU-Net v2 style), one folder per domain:

    <dataset>/<domain>/imagesTr/<case>_0000.nii.gz   labelsTr/<case>.nii.gz
    <dataset>/<domain>/imagesTs/<case>_0000.nii.gz   labelsTs/<case>.nii.gz
    <dataset>/<domain>/dataset.json

Domain folders are lowercase modality keys (``mr``, ``ct``, ``t1``, ``t2``, ...).
``dataset.json``: ``{"name", "modality", "channel_names": {"0": modality}, "labels":
{name: value}, "numTraining", "file_ending": ".nii.gz"}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np

from sasan.atomic import atomic_path, read_json, write_json
from sasan.errors import DataError

FILE_ENDING = ".nii.gz"
CHANNEL_SUFFIX = "_0000"
SPLIT_DIRS: dict[str, tuple[str, str]] = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
DOMAIN_RE = re.compile(r"^[a-z][a-z0-9]*$")
CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REQUIRED_FIELDS = ("name", "modality", "channel_names", "labels", "numTraining", "file_ending")
PAIRED_LABEL_NAMES = "labels.json"  # paired layout: optional label table next to the case folders


@dataclass(frozen=True)
class DatasetInfo:
    """The content of one domain's ``dataset.json``. ``labels`` maps name -> integer value."""

    name: str
    modality: str
    labels: dict[str, int] = field(default_factory=lambda: {"background": 0})
    num_training: int = 0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "modality": self.modality,
            "channel_names": {"0": self.modality},
            "labels": dict(self.labels),
            "numTraining": self.num_training,
            "file_ending": FILE_ENDING,
        }


def image_path(root: str | Path, domain: str, case_id: str, split: str = "train") -> Path:
    return Path(root) / domain / SPLIT_DIRS[split][0] / f"{case_id}{CHANNEL_SUFFIX}{FILE_ENDING}"


def label_path(root: str | Path, domain: str, case_id: str, split: str = "train") -> Path:
    return Path(root) / domain / SPLIT_DIRS[split][1] / f"{case_id}{FILE_ENDING}"


def check_domain(domain: str, path: str | Path | None = None) -> str:
    if not DOMAIN_RE.match(domain):
        raise DataError(f"domain folder name {domain!r} must be a lowercase modality key (e.g. mr, ct, t1)", path)
    return domain


def check_case_id(case_id: str, path: str | Path | None = None) -> str:
    if not CASE_RE.match(case_id):
        if case_id and CASE_RE.match("x" + case_id[1:]):
            raise DataError(f"case id {case_id!r} must start with a letter or digit", path)
        raise DataError(f"case id {case_id!r} must start with a letter or digit and use only [A-Za-z0-9_.-]",
                        path)
    return case_id


def is_hidden(path: str | Path, root: str | Path | None = None) -> bool:
    """A dot-file or a file in a dot-folder below ``root`` (macOS ``._x`` AppleDouble files,
    ``.DS_Store``, ``.git``): never data, skipped when a source is listed."""
    path = Path(path)
    parts = path.relative_to(root).parts if root is not None else (path.name,)
    return any(part.startswith(".") for part in parts)


def check_labels(labels: object, path: str | Path) -> dict[str, int]:
    """Label table: name -> distinct non-negative int, with background = 0."""
    if not isinstance(labels, dict) or not labels:
        raise DataError("'labels' must be a non-empty mapping name -> integer value", path)
    out: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 255:
            raise DataError(f"label {name!r} must be an integer in 0..255, got {value!r}", path)
        out[str(name)] = value
    if len(set(out.values())) != len(out):
        raise DataError("label values must be distinct", path)
    if out.get("background") != 0:
        raise DataError("labels must contain 'background': 0", path)
    return out


def read_dataset_json(domain_dir: str | Path) -> DatasetInfo:
    """Read and check ``<domain_dir>/dataset.json``; DataError names the file and the field."""
    path = Path(domain_dir) / "dataset.json"
    data = read_json(path, missing="dataset.json is missing")
    if not isinstance(data, dict):
        raise DataError("dataset.json must be a JSON object", path)
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise DataError(f"dataset.json lacks field(s) {', '.join(missing)}", path)
    if data["file_ending"] != FILE_ENDING:
        raise DataError(f"file_ending must be {FILE_ENDING!r}, got {data['file_ending']!r}", path)
    modality = data["modality"]
    if not isinstance(modality, str) or not modality:
        raise DataError("'modality' must be a non-empty string", path)
    channels = data["channel_names"]
    if not isinstance(channels, dict) or list(channels) != ["0"]:
        raise DataError("'channel_names' must be {\"0\": <modality>} (one channel)", path)
    n = data["numTraining"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DataError(f"'numTraining' must be a non-negative integer, got {n!r}", path)
    return DatasetInfo(name=str(data["name"]), modality=modality, labels=check_labels(data["labels"], path),
                       num_training=n)


def write_dataset_json(domain_dir: str | Path, info: DatasetInfo) -> Path:
    path = Path(domain_dir) / "dataset.json"
    check_labels(info.labels, path)
    write_json(path, info.to_json())
    return path


def domains(root: str | Path) -> list[str]:
    """Domain folders of a canonical data set (those holding a dataset.json), sorted."""
    return sorted(p.parent.name for p in Path(root).glob("*/dataset.json"))


@dataclass(frozen=True)
class CaseFiles:
    domain: str
    case_id: str
    split: str
    image: Path
    label: Path | None


def iter_cases(root: str | Path, domain: str) -> Iterator[CaseFiles]:
    """Cases of one domain in both splits (sorted by split, then case id)."""
    ddir = Path(root) / domain
    for split, (img_dir, lbl_dir) in SPLIT_DIRS.items():
        for img in sorted((ddir / img_dir).glob(f"*{CHANNEL_SUFFIX}{FILE_ENDING}")):
            case_id = img.name[: -len(CHANNEL_SUFFIX + FILE_ENDING)]
            lbl = ddir / lbl_dir / f"{case_id}{FILE_ENDING}"
            yield CaseFiles(domain, case_id, split, img, lbl if lbl.exists() else None)


def save_nifti(path: str | Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a 3-D array as NIfTI-1 with ``affine`` as both qform and sform (mm), atomically."""
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path, suffix=FILE_ENDING) as tmp:
        nib.save(img, tmp)
    return Path(path)

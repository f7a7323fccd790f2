"""Adapters: public data set layouts -> a list of cases for the canonical layout.

Each adapter reads a folder and returns an :class:`AdaptedDataset` (domains with their label
tables and raw -> canonical label value maps, and the cases with their source files). They
read no voxels; :mod:`sasan.data.ingest` loads, checks, remaps and writes.

* ``nnunet``: canonical ``<domain>/dataset.json`` folders, or one nnU-Net v1/v2 data set
  folder (``dataset.json`` at the top; each input channel ``_000k`` becomes a domain).
* ``mmwhs``: MM-WHS 2017 files ``{mr,ct}_{train,test}_<n>_image.nii.gz`` and ``_label``;
  raw labels 205 MYO, 420 LA, 500 LV, 820 AA -> 1..4, every other structure -> 0.
* ``brats``: case folders ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (also the 2023
  ``-t1n/-t1c/-t2w/-t2f/-seg`` names); sub-regions 1 NCR, 2 ED, 4 (or 3) ET -> 1, 2, 3 (a seg
  holding both 3 and 4, as BraTS 2024 post-treatment's resection cavity 4, is refused). The
  2023 case ids ``BraTS-XXX-NNNNN-TTT`` are time points of subject ``BraTS-XXX-NNNNN``.
* ``paired``: ``<case>/<modality>.nii.gz`` per subject (e.g. ``ct.nii.gz``, ``mr.nii.gz``),
  optional ``<case>/<modality>_label.nii.gz`` (or ``_seg``), or one ``<case>/label.nii.gz``
  (or ``seg``) shared by every modality of the case; ``mask`` files are skipped. An optional
  ``labels.json`` at the top names the label values (``{"background": 0, "MYO": 1, ...}``);
  without it they are named by value (``label_1``, ...).

A case id shared by several domains is one subject, and so are the cases of one
:attr:`SourceCase.subject`: ingest keeps a subject in one split. Dot-files (macOS ``._x``
AppleDouble files, ``.DS_Store``) and dot-folders are never read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from sasan.atomic import read_json
from sasan.data.layout import DOMAIN_RE, PAIRED_LABEL_NAMES, check_case_id, check_domain, check_labels, is_hidden
from sasan.errors import DataError

log = logging.getLogger(__name__)

MMWHS_LABEL_MAP: dict[int, int] = {205: 1, 420: 2, 500: 3, 820: 4}
MMWHS_OTHER_VALUES: frozenset[int] = frozenset({0, 550, 600, 850})  # RA, RV, PA: background here
CARDIAC_LABELS: dict[str, int] = {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "AA": 4}
BRATS_LABELS: dict[str, int] = {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
BRATS_LABEL_MAP: dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 3}  # BraTS <= 2021 ET = 4, 2023 ET = 3

# Spellings of modality names -> canonical lowercase domain key.
DOMAIN_ALIASES: dict[str, str] = {
    "mr": "mr", "mri": "mr", "ct": "ct", "t1": "t1", "t1n": "t1", "t1w": "t1", "t2": "t2", "t2w": "t2",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "flair": "flair", "t2f": "flair", "pd": "pd",
}
MODALITY_NAMES: dict[str, str] = {"mr": "MR", "ct": "CT", "t1": "T1", "t2": "T2", "t1ce": "T1CE", "flair": "FLAIR",
                                  "pd": "PD"}


@dataclass(frozen=True)
class DomainSpec:
    """One output domain. ``labels`` None: derived from the label values found at ingest.
    ``label_map`` None: values kept; else raw value -> canonical value, others -> 0."""

    modality: str
    labels: Optional[dict[str, int]] = None
    label_map: Optional[dict[int, int]] = None
    known_values: frozenset[int] = frozenset()  # raw values mapped to 0 without a warning


@dataclass(frozen=True)
class SourceCase:
    domain: str
    case_id: str
    image: Path
    label: Optional[Path]
    split: Optional[str] = None  # "test" when the source already holds it out
    subject: Optional[str] = None  # the patient, when several case ids are one (else the case id)
    label_shared: bool = False  # ``label`` is one file for every modality of the case (paired)

    @property
    def subject_id(self) -> str:
        return self.subject or self.case_id


@dataclass
class AdaptedDataset:
    name: str
    domains: dict[str, DomainSpec] = field(default_factory=dict)
    cases: list[SourceCase] = field(default_factory=list)


def domain_key(name: str) -> str:
    """'MRI' -> 'mr', 'T1ce' -> 't1ce', 'ct' -> 'ct'; other names lowercased as they are."""
    key = name.strip().lower()
    return DOMAIN_ALIASES.get(key, key)


def modality_name(domain: str) -> str:
    return MODALITY_NAMES.get(domain, domain.upper())


def _nifti_stem(name: str) -> Optional[str]:
    for ending in (".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return None


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise DataError("source folder not found", root)


# ----------------------------------------------------------------------------- nnU-Net ---

def adapt_nnunet(root: Path) -> AdaptedDataset:
    root = Path(root)
    _require_dir(root)
    if (root / "dataset.json").is_file():
        folders = [root]
    else:
        folders = sorted(p.parent for p in root.glob("*/dataset.json") if not is_hidden(p.parent, root))
    if not folders:
        raise DataError("no dataset.json found (expected <domain>/dataset.json or a dataset.json at the top)", root)
    ds = AdaptedDataset(name=root.name)
    for folder in folders:
        meta = _read_nnunet_json(folder / "dataset.json")
        ds.name = meta["name"] if folder == root else ds.name
        channels = meta["channels"]
        before = len(ds.cases)
        for k, channel in channels:
            if len(channels) == 1 and folder != root and DOMAIN_RE.match(folder.name):
                domain = folder.name  # a canonical <domain>/ folder keeps its name
            else:
                domain = check_domain(domain_key(channel), folder / "dataset.json")
            if domain in ds.domains:
                raise DataError(f"two data set folders map to the same domain {domain!r}", folder)
            ds.domains[domain] = DomainSpec(modality=meta["modality"] or channel, labels=meta["labels"])
            ds.cases += _nnunet_cases(folder, domain, k, meta["file_ending"])
        if len(ds.cases) == before:
            raise DataError("empty data set folder: no images in imagesTr/ or imagesTs/", folder)
    return ds


def _read_nnunet_json(path: Path) -> dict:
    """Lenient reader for nnU-Net v1/v2 and canonical dataset.json files."""
    data = read_json(path, missing="dataset.json is missing")
    if not isinstance(data, dict):
        raise DataError("dataset.json must be a JSON object", path)
    channels = data.get("channel_names") or (data.get("modality") if isinstance(data.get("modality"), dict) else None)
    if channels is None and isinstance(data.get("modality"), str):
        channels = {"0": data["modality"]}
    if not isinstance(channels, dict) or not channels:
        raise DataError("dataset.json lacks 'channel_names' (or 'modality')", path)
    try:
        chans = sorted((int(k), str(v)) for k, v in channels.items())
    except ValueError:
        raise DataError("channel_names keys must be channel numbers", path) from None
    labels = data.get("labels")
    if isinstance(labels, dict) and labels and all(str(k).isdigit() for k in labels):
        labels = {str(v): int(k) for k, v in labels.items()}  # v1: {"0": "background", ...}
    if labels is None:
        raise DataError("dataset.json lacks field 'labels'", path)
    labels = check_labels(labels, path)
    ending = data.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise DataError(f"file_ending {ending!r} is not supported (NIfTI only: .nii.gz or .nii)", path)
    modality = data.get("modality") if isinstance(data.get("modality"), str) and len(chans) == 1 else None
    return {"name": str(data.get("name", path.parent.name)), "channels": chans, "labels": labels,
            "file_ending": ending, "modality": modality}


def _nnunet_cases(folder: Path, domain: str, channel: int, ending: str) -> list[SourceCase]:
    out = []
    suffix = f"_{channel:04d}{ending}"
    for split, img_dir, lbl_dir in (("train", "imagesTr", "labelsTr"), ("test", "imagesTs", "labelsTs")):
        for img in sorted((folder / img_dir).glob(f"*{suffix}")):
            if is_hidden(img, folder):
                continue
            case_id = check_case_id(img.name[: -len(suffix)], img)
            lbl = folder / lbl_dir / f"{case_id}{ending}"
            if split == "train" and not lbl.is_file():
                raise DataError(f"training image has no label {lbl_dir}/{lbl.name}", img)
            out.append(SourceCase(domain, case_id, img, lbl if lbl.is_file() else None,
                                  "test" if split == "test" else None))
    return out


# ------------------------------------------------------------------------------ MM-WHS ---

_MMWHS_RE = re.compile(r"^(mr|ct)_(train|test)_(\d+)_image\.nii(\.gz)?$", re.IGNORECASE)


def adapt_mmwhs(root: Path) -> AdaptedDataset:
    root = Path(root)
    _require_dir(root)
    ds = AdaptedDataset(name="mmwhs")
    for img in sorted(root.rglob("*_image.nii*")):
        m = _MMWHS_RE.match(img.name)
        if not m or is_hidden(img, root):
            continue
        mod, split, num = m.group(1).lower(), m.group(2).lower(), m.group(3)
        ending = ".nii.gz" if img.name.endswith(".gz") else ".nii"
        lbl = img.with_name(img.name.replace("_image", "_label"))
        if not lbl.is_file():
            other = img.with_name(img.name.replace("_image", "_label").removesuffix(ending) +
                                  (".nii" if ending == ".nii.gz" else ".nii.gz"))
            lbl = other if other.is_file() else None
        if split == "train" and lbl is None:
            raise DataError(f"training image has no label file {img.name.replace('_image', '_label')}", img)
        ds.domains.setdefault(mod, DomainSpec(modality=modality_name(mod), labels=dict(CARDIAC_LABELS),
                                              label_map=dict(MMWHS_LABEL_MAP), known_values=MMWHS_OTHER_VALUES))
        ds.cases.append(SourceCase(mod, f"{mod}_{num}", img, lbl, "test" if split == "test" else None))
    if not ds.cases:
        raise DataError("no MM-WHS images ({mr,ct}_{train,test}_<n>_image.nii.gz) found", root)
    return ds


# ------------------------------------------------------------------------------- BraTS ---

_BRATS_RE = re.compile(r"^(?P<case>.+?)[_-](?P<mod>t1|t1n|t1ce|t1c|t1gd|t2|t2w|flair|t2f|seg)\.nii(\.gz)?$",
                       re.IGNORECASE)
_BRATS_SUBJECT_RE = re.compile(r"^(?P<subject>BraTS-[A-Za-z]+-\d+)-\d+$", re.IGNORECASE)  # BraTS 2023+


def brats_subject(case_id: str) -> Optional[str]:
    """``BraTS-GLI-00000-001`` -> ``BraTS-GLI-00000`` (the patient of a time point); None for
    older names (``BraTS20_Training_001``: one case per patient)."""
    m = _BRATS_SUBJECT_RE.match(case_id)
    return m.group("subject") if m else None


def adapt_brats(root: Path) -> AdaptedDataset:
    root = Path(root)
    _require_dir(root)
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*.nii*")):
        m = _BRATS_RE.match(path.name)
        if not m or is_hidden(path, root):
            continue
        case = check_case_id(m.group("case"), path)
        mod = m.group("mod").lower()
        key = "seg" if mod == "seg" else domain_key(mod)
        files = found.setdefault(case, {})
        if key in files:
            raise DataError(f"case {case!r} has two {key} files ({files[key].name})", path)
        files[key] = path
    ds = AdaptedDataset(name="brats")
    for case, files in sorted(found.items()):
        for domain, img in sorted(files.items()):
            if domain == "seg":
                continue
            ds.domains.setdefault(domain, DomainSpec(modality=modality_name(domain), labels=dict(BRATS_LABELS),
                                                     label_map=dict(BRATS_LABEL_MAP)))
            ds.cases.append(SourceCase(domain, case, img, files.get("seg"), subject=brats_subject(case)))
    if not ds.cases:
        raise DataError("no BraTS case files (<case>_t1.nii.gz, _t2, _seg, ...) found", root)
    return ds


# ------------------------------------------------------------------------------ paired ---

PAIRED_SHARED_LABELS = ("label", "seg")   # <case>/label.nii.gz: one label for every modality of the case
PAIRED_SKIPPED = ("mask",)                 # <case>/mask.nii.gz, <case>/<mod>_mask.nii.gz: not read


def adapt_paired(root: Path) -> AdaptedDataset:
    root = Path(root)
    _require_dir(root)
    ds = AdaptedDataset(name=root.name)
    per_case: dict[str, dict[str, tuple[Path, Optional[Path]]]] = {}
    shared_of: dict[str, Path] = {}
    known = set(DOMAIN_ALIASES) | set(MODALITY_NAMES)
    for case_dir in sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p, root)):
        images, labels, shared = {}, {}, None
        for f in sorted(case_dir.iterdir()):
            stem = _nifti_stem(f.name)
            if stem is None or is_hidden(f, root):
                continue
            low = stem.lower()
            if low in PAIRED_SHARED_LABELS:
                if shared is not None:
                    raise DataError(f"case has two shared label files ({shared.name})", f)
                shared = f
            elif any(low == s or low.endswith("_" + s) for s in PAIRED_SKIPPED):
                log.info("%s: a mask, not an image or a label; skipped", f)
            elif low.endswith(("_label", "_seg")):
                labels[domain_key(low.rsplit("_", 1)[0])] = f
            else:
                if low not in known:
                    log.warning("%s: %r is not a known modality name (%s); read as image domain %r", f, stem,
                                ", ".join(sorted(MODALITY_NAMES)), domain_key(low))
                images[check_domain(domain_key(low), f)] = f
        for d, lbl in sorted(labels.items()):
            if d not in images:
                log.warning("%s: no %s image in this case; label ignored", lbl, d)
        if images:
            case_id = check_case_id(case_dir.name, case_dir)
            per_case[case_id] = {d: (img, labels.get(d, shared)) for d, img in images.items()}
            if shared is not None:
                shared_of[case_id] = shared
    if not per_case:
        raise DataError("no case folders with <modality>.nii.gz images found", root)
    domains = sorted({d for files in per_case.values() for d in files})
    if len(domains) < 2:
        raise DataError(f"paired layout needs at least two modalities per case, found only {domains}", root)
    for case_id, files in per_case.items():
        missing = [d for d in domains if d not in files]
        if missing:
            raise DataError(f"case lacks {', '.join(m + '.nii.gz' for m in missing)} (pairs must be complete)",
                            root / case_id)
        for domain, (img, lbl) in sorted(files.items()):
            ds.cases.append(SourceCase(domain, case_id, img, lbl,
                                       label_shared=lbl is not None and lbl == shared_of.get(case_id)))
    names = _read_paired_labels(root / PAIRED_LABEL_NAMES)
    for d in domains:
        ds.domains[d] = DomainSpec(modality=modality_name(d), labels=names)
    return ds


def _read_paired_labels(path: Path) -> Optional[dict[str, int]]:
    """The paired layout's optional label table (name -> value, background 0), or None."""
    if not path.is_file():
        return None
    return check_labels(read_json(path, missing="label table not found", invalid="cannot read the label table"), path)


ADAPTERS: dict[str, Callable[[Path], AdaptedDataset]] = {
    "nnunet": adapt_nnunet,
    "mmwhs": adapt_mmwhs,
    "brats": adapt_brats,
    "paired": adapt_paired,
}

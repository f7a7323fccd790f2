"""The validate stage: a per-volume table checked by a Great Expectations suite, plus
data-set checks (cases per domain and split, leakage across splits, dataset.json labels and,
given the experiment, labels of its source's train and its target's test split).

Paired mode (``experiment.mode: paired``; only without an experiment does a manifest of
layout ``paired`` mean it, an unpaired experiment on paired-layout data being checked as any
unpaired one; RIRE has no labels) requires no label anywhere (a label present is checked as
ever: grid, values) but complete paired subjects: at least ``min_cases_test`` with a test
image in both the experiment's target and source (without an experiment: in every domain),
the pairs paired evaluation scores, and at least ``min_cases_train`` such subjects in train;
and, with an experiment, no subject with an image in one domain of the pair and not in the
other within a split (paired preprocessing cuts each subject's two images together).

Writes ``validation.json`` (machine-readable) and ``validation.html`` (for people) and
raises :class:`ValidationFailed` naming the first offending file when any error-level
check fails.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sasan.atomic import write_json, write_text
from sasan.data.config import ValidateConfig
from sasan.data.gx_suite import run_suite
from sasan.data.manifest import sha256_file
from sasan.data.raw_cases import RawCase, RawDataset, load_raw_dataset
from sasan.data.report import render_html
from sasan.data.volume import Volume, affines_match, label_values, load_volume, nonfinite_reason
from sasan.errors import DataError, ValidationFailed

if TYPE_CHECKING:
    from sasan.config import ExperimentConfig

log = logging.getLogger(__name__)

_PERCENTILE_SAMPLE = 2_000_000  # voxels; a strided subsample keeps percentiles cheap and exact-enough


def run_validate(raw_dir: str | Path, report_dir: str | Path, cfg: ValidateConfig,
                 experiment: "Optional[ExperimentConfig]" = None, num_classes: Optional[int] = None) -> dict[str, Any]:
    """Validate ``raw_dir``; write ``report_dir/validation.{json,html}``; return the report.
    ``experiment`` (source, target, mode) adds the checks of the run that will use the data,
    ``num_classes`` (``model.num_classes``) that its networks have an output for every label.

    Raises ``DataError`` when the data set cannot be enumerated at all (empty folder, bad
    manifest or dataset.json) and ``ValidationFailed`` after writing the reports when an
    error-level check fails."""
    raw_dir, report_dir = Path(raw_dir), Path(report_dir)
    dataset = load_raw_dataset(raw_dir)
    table = build_table(dataset, cfg)
    checks = [_gx_check(c, table, raw_dir) for c in run_suite(table, cfg)]
    checks += dataset_checks(dataset, table, cfg, experiment, num_classes)
    errors = [(c["check"], f) for c in checks if c["severity"] == "error" and not c["success"] for f in c["failures"]]
    report = {
        "success": not errors,
        "raw_dir": str(raw_dir),
        "n_cases": int(len(table)),
        "counts": _counts(table),
        "labelled_counts": _counts(table[table["has_label"]], every=_counts(table)),
        "n_errors": sum(1 for c in checks if c["severity"] == "error" and not c["success"]),
        "n_warnings": sum(1 for c in checks if c["severity"] == "warning" and not c["success"]),
        "checks": checks,
        "table": _records(table),
    }
    write_json(report_dir / "validation.json", report)
    write_text(report_dir / "validation.html", render_html(report))
    log.info("validation %s: %d cases, %d error check(s), %d warning check(s); report in %s",
             "passed" if report["success"] else "FAILED", report["n_cases"], report["n_errors"],
             report["n_warnings"], report_dir)
    if errors:
        check, first = errors[0]
        raise ValidationFailed(
            f"{first['reason']} [{check}] ({len(errors)} error-level failure(s); "
            f"see {report_dir / 'validation.html'})", first["file"] or raw_dir)
    return report


# ----------------------------------------------------------------------------- table
def build_table(dataset: RawDataset, cfg: ValidateConfig) -> pd.DataFrame:
    """One row per case: geometry, intensity summary, label values, agreement, hashes."""
    rows = [_case_row(i, case, dataset, cfg)
            for i, case in enumerate(tqdm(dataset.cases, desc="validate", unit="vol", leave=False))]
    return pd.DataFrame(rows)


def _case_row(row_id: int, case: RawCase, dataset: RawDataset, cfg: ValidateConfig) -> dict[str, Any]:
    root = dataset.root
    allowed = sorted(dataset.domains[case.domain].labels.values()) if case.domain in dataset.domains else []
    row: dict[str, Any] = {
        "row_id": row_id, "case_id": case.case_id, "domain": case.domain, "split": case.split,
        "image": _rel(case.image, root), "label": None if case.label is None else _rel(case.label, root),
        "has_label": case.label is not None, "error": None, "error_file": None,
        "shape": None, "size_x": None, "size_y": None, "size_z": None,
        "spacing": None, "spacing_x": None, "spacing_y": None, "spacing_z": None,
        "orientation": None, "dtype": None, "finite": None, "finite_detail": None,
        "min": None, "p01": None, "p50": None, "p99": None, "max": None,
        "label_shape": None, "label_values": None, "allowed_labels": str(allowed), "unknown_labels": None,
        "labels_ok": None, "label_has_foreground": None, "shape_match": None, "affine_match": None,
        "affine_diff_mm": None, "image_sha256": None, "label_sha256": None, "sha256_ok": None, "hash_file": None,
    }
    if case.domain not in dataset.domains:
        row.update(error=f"domain '{case.domain}' has no dataset.json", error_file=row["image"])
        return row
    try:
        image = load_volume(case.image, check_finite=False)
    except DataError as err:
        row.update(error=err.reason, error_file=row["image"])
        return row
    row.update(_image_summary(image))
    if case.label is not None:
        try:
            label = load_volume(case.label, kind="label")
        except DataError as err:
            row.update(error=err.reason, error_file=row["label"])
            return row
        values = label_values(label.array)
        unknown = sorted(set(values) - set(allowed))
        shape_ok = label.array.shape == image.array.shape
        row.update(
            label_shape=str(label.array.shape), label_values=str(values), unknown_labels=str(unknown),
            labels_ok=not unknown, label_has_foreground=any(v != 0 for v in values), shape_match=shape_ok,
            affine_match=affines_match(image.affine, label.affine, cfg.affine_atol_mm),
            affine_diff_mm=float(np.abs(image.affine - label.affine).max()),
        )
    if cfg.check_hashes:
        row.update(_hash_row(case, row))
    return row


def _image_summary(image: Volume) -> dict[str, Any]:
    arr = image.array
    flat = arr.reshape(-1)
    sample = flat[:: max(1, flat.size // _PERCENTILE_SAMPLE)]
    reason = nonfinite_reason(arr)
    finite_sample = sample[np.isfinite(sample)] if reason else sample
    p01, p50, p99 = (np.percentile(finite_sample, [1, 50, 99]).tolist() if finite_sample.size
                     else [None, None, None])
    finite_all = arr[np.isfinite(arr)] if reason else arr
    sx, sy, sz = image.spacing
    return {
        "shape": str(arr.shape), "size_x": arr.shape[0], "size_y": arr.shape[1], "size_z": arr.shape[2],
        "spacing": f"({sx:.4g}, {sy:.4g}, {sz:.4g})", "spacing_x": sx, "spacing_y": sy, "spacing_z": sz,
        "orientation": image.orientation, "dtype": str(arr.dtype), "finite": reason is None,
        "finite_detail": reason,
        "min": float(finite_all.min()) if finite_all.size else None,
        "max": float(finite_all.max()) if finite_all.size else None,
        "p01": p01, "p50": p50, "p99": p99,
    }


def _hash_row(case: RawCase, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"image_sha256": sha256_file(case.image)}
    ok = case.sha256.get("image") in (None, out["image_sha256"])
    hash_file = None if ok else row["image"]
    if case.label is not None:
        out["label_sha256"] = sha256_file(case.label)
        label_ok = case.sha256.get("label") in (None, out["label_sha256"])
        if ok and not label_ok:
            hash_file = row["label"]
        ok = ok and label_ok
    if case.sha256.get("image") is not None:  # no manifest hash: nothing to compare with
        out["sha256_ok"] = ok
        out["hash_file"] = hash_file
    return out


# ----------------------------------------------------------------------------- checks
def _gx_check(check: dict[str, Any], table: pd.DataFrame, root: Path) -> dict[str, Any]:
    rows = table.set_index("row_id")
    failures = []
    for row_id in check.pop("failed_rows"):
        row = rows.loc[row_id].to_dict()
        blame = check["blame"]
        failures.append({
            "file": str(root / row[blame]) if blame and row.get(blame) else None, "case_id": row["case_id"],
            "domain": row["domain"], "split": row["split"], "reason": _format(check["reason"], row),
        })
    if not check["success"] and not failures:
        reason = check["exception"] or f"{check['check']} failed (observed {check['observed']})"
        failures.append({"file": None, "case_id": None, "domain": None, "split": None, "reason": reason})
    reason = check.pop("reason")
    check.pop("blame")
    return {**check, "source": "great_expectations", "rule": reason, "failures": failures}


def _format(template: str, row: dict[str, Any]) -> str:
    try:
        return template.format(**row)
    except (KeyError, ValueError, TypeError):
        return template


def dataset_checks(dataset: RawDataset, table: pd.DataFrame, cfg: ValidateConfig,
                   experiment: "Optional[ExperimentConfig]" = None,
                   num_classes: Optional[int] = None) -> list[dict[str, Any]]:
    """Checks across cases: counts per domain and split, leakage, dataset.json consistency,
    and (with ``experiment``) the labels its source and target need."""
    counts = Counter(zip(table["domain"], table["split"]))
    paired_layout = (dataset.manifest or {}).get("layout") == "paired"
    # What the run needs: the experiment's mode decides (an unpaired experiment segments, paired
    # layout or not); the layout only without an experiment.
    paired = experiment.mode == "paired" if experiment is not None else paired_layout
    translate_only = paired
    checks = [
        _check("minimum cases per domain and split", "error", _too_few_cases(dataset, counts, cfg)),
        _check("no case in two splits (leakage)", "error", _case_in_two_splits(dataset)),
        _check("no identical image across splits (leakage)", "error", _identical_images(dataset, table, True)),
        _check("no duplicate image within a split", "warning", _identical_images(dataset, table, False)),
        _check("dataset.json agrees with the cases and manifest", "warning", _dataset_json_drift(dataset, counts)),
        _check("labels present per domain", "warning", [] if translate_only else _unlabelled_domains(dataset, table)),
        _check("no subject in two splits (leakage)", "error", _subject_leakage(dataset, across_domains=False)),
        # a paired layout's modalities image one anatomy: leakage whatever the run does
        _check("no subject in train in one domain and test in another (leakage)",
               "error" if paired or paired_layout else "warning", _subject_leakage(dataset, across_domains=True)),
        _check("evaluation target has labelled test cases", "error", _target_test_unlabelled(dataset, experiment)),
        _check("source training cases are labelled", "error", _source_train_unlabelled(dataset, experiment)),
        _check("no unknown raw label values (written as background)", "warning", _unknown_raw_labels(dataset)),
    ]
    if num_classes is not None and not translate_only:
        checks.append(_check("every label value has a network output (model.num_classes)", "error",
                             _labels_beyond(dataset, num_classes)))
    if paired and experiment is not None:
        checks.append(_check("every subject has both images of the pair", "error",
                             _incomplete_pairs(dataset, experiment)))
    if paired:
        checks.append(_check("minimum paired subjects per split", "error", _too_few_pairs(dataset, cfg, experiment)))
    return checks


def _too_few_cases(dataset: RawDataset, counts: Counter, cfg: ValidateConfig) -> list[dict[str, Any]]:
    minimum = {"train": cfg.min_cases_train, "test": cfg.min_cases_test}
    return [_failure(dataset.root / domain, f"domain '{domain}' has {counts.get((domain, split), 0)} {split} "
                     f"case(s), at least {need} required", domain=domain, split=split)
            for domain in dataset.domains for split, need in minimum.items()
            if counts.get((domain, split), 0) < need]


def _case_in_two_splits(dataset: RawDataset) -> list[dict[str, Any]]:
    by_case: dict[tuple[str, str], list[RawCase]] = defaultdict(list)
    for case in dataset.cases:
        by_case[(case.domain, case.case_id)].append(case)
    fails = []
    for (domain, case_id), group in sorted(by_case.items()):
        if len({c.split for c in group}) > 1:
            test_image = next(c.image for c in group if c.split == "test")
            fails.append(_failure(test_image, f"case '{case_id}' of domain '{domain}' is in both train and test",
                                  domain=domain, case_id=case_id))
    return fails


def _subject_of(dataset: RawDataset) -> dict[tuple[str, str], str]:
    """(domain, case id) -> subject: the manifest's ``subject`` (BraTS 2023+ time points), else
    the case id (a case id shared by several domains is one subject)."""
    out = {}
    for entry in (dataset.manifest or {}).get("cases", []):
        if isinstance(entry, dict) and entry.get("subject"):
            out[(str(entry.get("domain")), str(entry.get("case_id")))] = str(entry["subject"])
    return {(c.domain, c.case_id): out.get((c.domain, c.case_id), c.case_id) for c in dataset.cases}


def _subject_leakage(dataset: RawDataset, across_domains: bool) -> list[dict[str, Any]]:
    """A subject in train and test: between two case ids of one domain, or between domains."""
    subject_of = _subject_of(dataset)
    by_subject: dict[str, list[RawCase]] = defaultdict(list)
    for case in dataset.cases:
        by_subject[subject_of[(case.domain, case.case_id)]].append(case)
    fails = []
    for subject, group in sorted(by_subject.items()):
        if across_domains:
            train = sorted({c.domain for c in group if c.split == "train"})
            test = sorted({c.domain for c in group if c.split == "test"})
            pair = next(((a, b) for a in train for b in test if a != b), None)
            if pair is None:
                continue
            case = next(c for c in group if c.split == "test" and c.domain == pair[1])
            fails.append(_failure(case.image, f"subject '{subject}' is in train in domain '{pair[0]}' and in test "
                                  f"in domain '{pair[1]}'", domain=pair[1], case_id=case.case_id, split="test"))
            continue
        for domain in sorted({c.domain for c in group}):
            cases = [c for c in group if c.domain == domain]
            if len({c.split for c in cases}) > 1 and len({c.case_id for c in cases}) > 1:
                case = next(c for c in cases if c.split == "test")
                fails.append(_failure(case.image, f"subject '{subject}' of domain '{domain}' is in both train and "
                                      f"test ({', '.join(sorted({c.case_id for c in cases}))})", domain=domain,
                                      case_id=case.case_id, split="test"))
    return fails


def _target_test_unlabelled(dataset: RawDataset, experiment: "Optional[ExperimentConfig]") -> list[dict[str, Any]]:
    # Paired evaluation scores translations against the subject's source image, not labels
    # (its test pairs: "minimum paired subjects per split").
    if experiment is None or experiment.mode == "paired" or experiment.target not in dataset.domains:
        return []
    target = experiment.target
    test = [c for c in dataset.cases if c.domain == target and c.split == "test"]
    if any(c.label is not None for c in test):
        return []
    return [_failure(dataset.root / target, f"domain '{target}' is the evaluation target (experiment.target) but "
                     f"its test split has no labelled case ({len(test)} unlabelled); evaluate scores only labelled "
                     "test cases", domain=target, split="test")]


def _source_train_unlabelled(dataset: RawDataset, experiment: "Optional[ExperimentConfig]") -> list[dict[str, Any]]:
    # Unpaired training learns from every source train slice's label; preprocess writes no
    # labels for a split in which any case lacks one.
    if experiment is None or experiment.mode == "paired" or experiment.source not in dataset.domains:
        return []
    source = experiment.source
    train = [c for c in dataset.cases if c.domain == source and c.split == "train"]
    missing = [c for c in train if c.label is None]
    if not missing:
        return []
    return [_failure(missing[0].image, f"domain '{source}' is the labelled source (experiment.source) but "
                     f"{len(missing)} of its {len(train)} train case(s) have no label (first: "
                     f"'{missing[0].case_id}'); remove them or make '{source}' the target", domain=source,
                     split="train", case_id=missing[0].case_id)]


def _incomplete_pairs(dataset: RawDataset, experiment: "ExperimentConfig") -> list[dict[str, Any]]:
    """Subjects (case ids, as paired preprocessing matches them) with an image of a split in
    one domain of the experiment's pair and none of that split in the other: paired
    preprocessing cuts each subject's two images together and would stop on them. Nothing
    when a domain of the pair is missing altogether ("minimum paired subjects per split")."""
    pair = list(dict.fromkeys((experiment.source, experiment.target)))
    if len(pair) < 2 or not set(pair) <= set(dataset.domains):
        return []
    roles = {experiment.source: "source", experiment.target: "target"}
    subject_of = _subject_of(dataset)
    by_id: dict[tuple[str, str], dict[str, RawCase]] = defaultdict(dict)     # (split, case id) -> domain -> case
    for case in dataset.cases:
        if case.domain in roles:
            by_id[(case.split, case.case_id)][case.domain] = case
    fails = []
    for (split, case_id), cases in sorted(by_id.items()):
        if len(cases) == len(pair):
            continue
        (has, case), = cases.items()
        lacks = next(d for d in pair if d != has)
        subject = subject_of[(has, case_id)]
        who = f"subject '{case_id}'" if subject == case_id else f"case '{case_id}' (subject '{subject}')"
        fails.append(_failure(case.image, f"paired mode: {who} has a {split} image in domain '{has}' ({roles[has]}) "
                              f"but none in '{lacks}' ({roles[lacks]}); paired preprocessing cuts each subject's "
                              "two images together: add the missing image or remove the subject", domain=lacks,
                              case_id=case_id, split=split))
    return fails


def _too_few_pairs(dataset: RawDataset, cfg: ValidateConfig,
                   experiment: "Optional[ExperimentConfig]") -> list[dict[str, Any]]:
    """Paired subjects per split: a subject is a pair in a split when it has an image of that
    split in each domain of the pair (the experiment's target and source; without an
    experiment every domain). Paired evaluation scores each target test image against the
    source test image of its subject: a paired experiment needs at least one such subject."""
    if experiment is not None:
        pair = [experiment.target, experiment.source]
        roles = {experiment.target: "target", experiment.source: "source"}
    else:
        pair, roles = sorted(dataset.domains), {}
    subject_of = _subject_of(dataset)
    have: dict[tuple[str, str], set[str]] = defaultdict(set)      # (domain, split) -> subjects
    for case in dataset.cases:
        have[(case.domain, case.split)].add(subject_of[(case.domain, case.case_id)])
    need = {"train": cfg.min_cases_train, "test": cfg.min_cases_test}
    if experiment is not None and experiment.mode == "paired":
        need["test"] = max(need["test"], 1)
    missing = [d for d in pair if d not in dataset.domains]
    where = (f" (domain{'s' if len(missing) > 1 else ''} {', '.join(repr(d) for d in missing)} "
             "not in the data set)") if missing else ""
    names = " and ".join(f"'{d}'" + (f" ({roles[d]})" if d in roles else "") for d in pair)
    fails = []
    for split in ("test", "train"):
        subjects = set.intersection(*(have[(d, split)] for d in pair)) if pair else set()
        if len(subjects) >= need[split]:
            continue
        why = (": paired evaluation scores each target test image against the source test image of the same "
               "subject" if split == "test" else ": paired training learns from each subject's aligned images")
        fails.append(_failure(dataset.root / pair[0] if pair and not missing else dataset.root,
                              f"paired mode: {len(subjects)} subject(s) have a {split} image in each of {names}"
                              f"{where}, at least {need[split]} required{why}", domain=pair[0] if pair else None,
                              split=split))
    return fails


def _labels_beyond(dataset: RawDataset, num_classes: int) -> list[dict[str, Any]]:
    fails = []
    for name, info in dataset.domains.items():
        beyond = {label: value for label, value in info.labels.items() if value >= num_classes}
        if beyond:
            fails.append(_failure(dataset.dataset_json(name),
                                  f"labels {beyond} of domain '{name}' have no network output: model.num_classes is "
                                  f"{num_classes} (values 0..{num_classes - 1})", domain=name))
    return fails


def _unknown_raw_labels(dataset: RawDataset) -> list[dict[str, Any]]:
    fails = []
    for entry in (dataset.manifest or {}).get("cases", []):
        values = entry.get("unknown_label_values") if isinstance(entry, dict) else None
        if values:
            path = dataset.root / entry["label"] if entry.get("label") else None
            fails.append(_failure(path, f"raw label values {values} of case '{entry.get('case_id')}' are not "
                                  "among the layout's structures; ingest wrote them as background (0)",
                                  domain=entry.get("domain"), case_id=entry.get("case_id"),
                                  split=entry.get("split")))
    return fails


def _identical_images(dataset: RawDataset, table: pd.DataFrame, across_splits: bool) -> list[dict[str, Any]]:
    """Groups of byte-identical images, either spanning several splits or within one split."""
    hashed = table[table["image_sha256"].notna()] if "image_sha256" in table else table.iloc[:0]
    fails = []
    for _, group in hashed.groupby("image_sha256", sort=True):
        if len(group) < 2 or (group["split"].nunique() > 1) != across_splits:
            continue
        last = group.iloc[-1]
        fails.append(_failure(dataset.root / last["image"], f"identical image file in {len(group)} cases "
                              f"({', '.join(group['image'])})", domain=last["domain"], case_id=last["case_id"]))
    return fails


def _dataset_json_drift(dataset: RawDataset, counts: Counter) -> list[dict[str, Any]]:
    fails = []
    declared_domains = (dataset.manifest or {}).get("domains") or {}
    for domain, info in dataset.domains.items():
        path = dataset.dataset_json(domain)
        n_train = counts.get((domain, "train"), 0)
        if info.num_training != n_train:
            fails.append(_failure(path, f"numTraining is {info.num_training} but {n_train} training case(s) "
                                  "were found", domain=domain))
        declared = declared_domains.get(domain, {}).get("labels")
        if declared is not None and declared != info.labels:
            fails.append(_failure(path, f"labels {info.labels} differ from manifest.json {declared}", domain=domain))
    return fails


def _unlabelled_domains(dataset: RawDataset, table: pd.DataFrame) -> list[dict[str, Any]]:
    return [_failure(dataset.root / d, f"domain '{d}' has no labelled case (it can only be a target)", domain=d)
            for d in dataset.domains if not table.loc[table["domain"] == d, "has_label"].any()]


def _failure(path: Optional[Path | str], reason: str, **where: Any) -> dict[str, Any]:
    return {"file": None if path is None else str(path), "case_id": where.get("case_id"),
            "domain": where.get("domain"), "split": where.get("split"), "reason": reason}


def _check(name: str, severity: str, failures: list[dict[str, Any]]) -> dict[str, Any]:
    return {"check": name, "severity": severity, "source": "dataset", "expectation": None, "column": [],
            "success": not failures, "failures": failures, "observed": None, "exception": None,
            "rule": name}


def _counts(table: pd.DataFrame, every: Optional[dict[str, dict[str, int]]] = None) -> dict[str, dict[str, int]]:
    """domain -> split -> cases; with ``every``, the same keys as ``every`` (zeros kept)."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for domain, splits in (every or {}).items():
        out[domain] = {split: 0 for split in splits}
    for (domain, split), n in Counter(zip(table["domain"], table["split"])).items():
        out[domain][split] = n
    return {d: dict(sorted(v.items())) for d, v in sorted(out.items())}


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    clean = table.astype(object).where(table.notna(), None)
    return clean.to_dict(orient="records")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)

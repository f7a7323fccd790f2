"""Paired evaluation (METHOD.md sections 1 and 6): translation scored by image metrics.

A paired-mode model (``experiment.mode: paired``, RIRE-style supervised translation)
translates only. For every target test case that has a source test image (the source test
case of the same case id, as paired preprocessing pairs them; without one, that of the same
manifest ``subject`` where the subject has one test case per domain: :func:`paired_test_cases`),
the bundle translates the target volume into the source modality (on the target's grid,
intensities in [-1, 1]), and the translation is scored against the real source image with
:func:`sasan.metrics.translation_scores`: MAE, RMSE, PSNR, SSIM and Pearson correlation.
SSIM is taken slice by slice in the plane the model translates (``preprocess.axis``, whichever
array axis the file stores it along), so no SSIM window straddles two separately translated
slices and the score does not depend on the file's axis order.

Both images are compared as the model sees them: the pair is prepared as paired
preprocessing prepares the training pairs (:func:`sasan.data.prepare.prepare_pair` with the
bundle's own preprocessing: one crop box for both, the union of their body boxes; each image
clipped at its percentiles, z-scored and mapped to [-1, 1] with its modality's bounds); the
target's slices are translated and both are mapped back onto the grid
(``PreparedVolume.restore_intensity``); the voxels scored (``evaluate.translation_mask``)
are the real image's body mask (:func:`sasan.metrics.body_mask`; METHOD.md) or, with
``field_of_view``, every voxel inside the crop the model saw (for a field of view that lies
inside the body, as a heart-centred thorax scan: an intensity threshold there splits tissues,
not body from air); the data range is 2. The two images of a pair must share
one voxel grid (shape, and affine within ``validate.affine_atol_mm``).

Writes ``metrics_path`` (``{METHOD: {"mode": "paired", "mask", "n_subjects", "mean": {mae, rmse,
psnr, ssim, pearson}, "sd": {...}, "per_subject": [{"case_id", "subject", mae, ...}]}}``; sd
is the population standard deviation over subjects, ddof 0, as the segmentation file's
``*_std``), ``report_dir/per_subject.json`` (``{METHOD: {case_id: {mae, ...}}}``),
``report_dir/translations/<method>/<case>.nii.gz`` and ``report_dir/translations.png``.
Subjects without a source test image are skipped with one warning naming them. The
evaluation identity (:func:`sasan.stages.evaluate.evaluation_identity`) records, per method,
:func:`preprocess_digest` of the bundle's preprocessing: the reference image depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm.auto import tqdm

from sasan.atomic import write_json
from sasan.bundle import predict_stacks
from sasan.config import Config
from sasan.data.config import PreprocessConfig
from sasan.data.prepare import PreparedVolume, bounds_for, check_same_grid, prepare_pair
from sasan.data.volume import load_volume
from sasan.errors import ConfigError, DataError
from sasan.inference import save_nifti
from sasan.metrics import body_mask, translation_scores
from sasan.stages.evaluation_bundles import BundleInfo, inspect_bundles, read_manifest_file
from sasan.stages.evaluation_pictures import translation_montage
from sasan.stages.evaluation_tables import text_table
from sasan.train.device import resolve_runtime

log = logging.getLogger(__name__)

MODE = "paired"
SCORES = ("mae", "rmse", "psnr", "ssim", "pearson")
DATA_RANGE = 2.0                    # both images in [-1, 1]
PICTURE = "translations.png"


@dataclass(frozen=True)
class PairedCase:
    case_id: str                    # the target test case
    subject: str                    # shared by the target and the source case
    target_image: Path
    source_image: Path


def subject_of(case: dict[str, Any]) -> str:
    """A manifest case's subject: its ``subject`` field where ingest wrote one, else its id."""
    return str(case.get("subject") or case["case_id"])


def paired_test_cases(raw_dir: Path, source: str, target: str) -> tuple[list[PairedCase], str, str]:
    """(pairs, target modality, source modality): the target domain's test cases (labelled
    or not) that have a source test image, in manifest order. The source image is the
    source test case of the same case id (as paired preprocessing pairs them); without one,
    that of the same subject, but only where the subject has exactly one test case in each
    domain: a subject with several (time points: BraTS 2023's case ids under one patient)
    and no case-id match is a one-line :class:`DataError` naming the case. Cases without a
    source image are skipped with one warning naming them; none left is a :class:`DataError`."""
    manifest_path = raw_dir / "manifest.json"
    manifest = read_manifest_file(raw_dir)
    domains = manifest.get("domains", {})
    for domain, role in ((target, "target"), (source, "source")):
        if domain not in domains:
            raise DataError(f"{role} domain {domain!r} not in manifest (has {sorted(domains)}): paired "
                            "evaluation needs both modalities of each subject", manifest_path)
    cases = manifest.get("cases", [])
    tests = [c for c in cases if c["domain"] == target and c["split"] == "test"]
    if not tests:
        raise DataError(f"no test cases for target domain {target!r}", manifest_path)
    sources = [c for c in cases if c["domain"] == source and c["split"] == "test"]
    by_id = {c["case_id"]: c for c in sources}
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for c in sources:
        by_subject.setdefault(subject_of(c), []).append(c)
    targets_of = Counter(subject_of(c) for c in tests)
    pairs, lacking = [], []
    for case in tests:
        subject = subject_of(case)
        partner = by_id.get(case["case_id"])
        if partner is None:
            candidates = by_subject.get(subject, [])
            if not candidates:
                lacking.append(case["case_id"])
                continue
            if len(candidates) > 1 or targets_of[subject] > 1:
                raise DataError(f"{target!r} test case {case['case_id']!r} has no {source!r} test case of the same "
                                f"id, and its subject {subject!r} has {targets_of[subject]} {target!r} and "
                                f"{len(candidates)} {source!r} test case(s): which one is its pair is ambiguous "
                                "(give the images of one time point one case id in both domains)", manifest_path)
            partner = candidates[0]
        pairs.append(PairedCase(case["case_id"], subject, raw_dir / case["image"], raw_dir / partner["image"]))
    if not pairs:
        raise DataError(f"none of the {len(tests)} {target!r} test case(s) has a {source!r} test image of the same "
                        "subject: nothing to score the translations against", manifest_path)
    if lacking:
        log.warning("%s: %d %s test case(s) without a %s test image of the same subject, not scored: %s",
                    manifest_path, len(lacking), target, source, ", ".join(lacking))
    return pairs, domains[target].get("modality", target), domains[source].get("modality", source)


def check_paired_bundles(bundles: dict[str, BundleInfo], target: tuple[str, str], source: tuple[str, str]) -> None:
    """Every bundle has intensity bounds for the target it translates and for the source it
    is scored in ((modality, domain) each, resolved as ``sasan preprocess`` does)."""
    for method, info in bundles.items():
        for modality, domain in (target, source):
            try:
                bounds_for(info.cfg.preprocess, modality, domain)
            except ConfigError as err:
                raise ConfigError(f"{err.reason} in the bundle's config ({method})", info.path) from None


def check_paired_volumes(pairs: list[PairedCase], atol_mm: float) -> None:
    """Both images of each pair load and share one voxel grid (:func:`check_same_grid`, as
    paired preprocessing checks them), before any inference: the scores compare them voxel
    by voxel."""
    for pair in pairs:
        check_same_grid([load_volume(pair.target_image), load_volume(pair.source_image)], atol_mm)


# preprocess fields that do not shape the real (reference) image or the voxels scored: the
# stack depth and what only the shards keep (the source's bounds stand for the bounds table)
_NOT_REFERENCE = {"slices", "skip_empty_slices", "dtype", "bounds"}


def preprocess_digest(prep: PreprocessConfig, source: tuple[str, str]) -> str:
    """A digest (16 hex) of the preprocessing settings that make the real source image a
    paired evaluation scores against (crop, field of view, image size, axis, spacing, clip
    percentiles, the source's bounds: ``source`` is its (modality, domain)); two bundles
    with one digest are scored against the same reference image."""
    fields = prep.model_dump(mode="json", exclude=_NOT_REFERENCE)
    fields["source_bounds"] = list(bounds_for(prep, *source))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def preprocess_digests(raw_dir: Path, source: str, bundles: dict[str, BundleInfo],
                       methods: list[str]) -> dict[str, str]:
    """:func:`preprocess_digest` of each method's bundle (the evaluation identity's
    ``preprocess_digest``), the source modality read from the manifest as evaluation reads it."""
    modality = read_manifest_file(raw_dir).get("domains", {}).get(source, {}).get("modality", source)
    return {m: preprocess_digest(bundles[m].cfg.preprocess, (modality, source)) for m in methods}


PreparedPair = tuple[PreparedVolume, PreparedVolume, np.ndarray, np.ndarray]


def prepare_paired_case(pair: PairedCase, prep: Any, target: tuple[str, str], source: tuple[str, str],
                        atol_mm: float, mask_kind: str = "body") -> PreparedPair:
    """(the prepared target and source volumes, the real source image on its grid, the voxels
    to score) of one subject,
    as the model sees them: both cut as paired preprocessing cuts the training pairs
    (:func:`sasan.data.prepare.prepare_pair`: one box for both), each normalised with its own
    bounds; the source mapped back onto its grid as a translation is. float32 in [-1, 1].
    ``mask_kind`` (``evaluate.translation_mask``): ``body``, the body mask of the real image;
    ``field_of_view``, every voxel inside the crop the model saw."""
    (tgt, _), (src, _) = prepare_pair([pair.target_image, pair.source_image], [None, None], prep,
                                      [bounds_for(prep, *target), bounds_for(prep, *source)],
                                      [target[0], source[0]], atol_mm)
    real = np.asarray(src.restore_intensity(src.slices).dataobj, dtype=np.float32)
    if mask_kind == "field_of_view":
        mask = np.asarray(src.restore(np.ones(src.slices.shape, np.uint8)).dataobj) > 0
    else:
        mask = body_mask(real)
    if not mask.any():
        raise DataError(f"the {mask_kind} mask of the normalised image is empty: nothing to score", pair.source_image)
    return tgt, src, real, mask


def aggregate_paired(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and population sd (ddof 0) over subjects of each score, the count and the rows."""
    if not rows:
        raise ValueError("no subject scores to aggregate")
    values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in SCORES}
    return {"mode": MODE, "n_subjects": len(rows),
            "mean": {k: float(v.mean()) for k, v in values.items()},
            "sd": {k: float(v.std()) for k, v in values.items()},
            "per_subject": rows}


def run_paired_evaluate(models: dict[str, Path], raw_dir: str | Path, metrics_path: str | Path,
                        report_dir: str | Path, cfg: Config, save_predictions: bool = True,
                        progress: bool = True, bundles: Optional[dict[str, BundleInfo]] = None) -> dict[str, Any]:
    """Score every (translate-only) model on the paired test subjects; see the module docstring."""
    raw_dir, report_dir = Path(raw_dir), Path(report_dir)
    source, target = cfg.experiment.source, cfg.experiment.target
    pairs, target_modality, source_modality = paired_test_cases(raw_dir, source, target)
    bundles = bundles if bundles is not None else inspect_bundles(models)
    check_paired_bundles(bundles, (target_modality, target), (source_modality, source))
    check_paired_volumes(pairs, cfg.validate_.affine_atol_mm)
    runtime = resolve_runtime(cfg.train.device, cfg.train.bf16, cfg.train.channels_last)
    loaded = {m: bundles[m].networks(runtime.device) for m in models}
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    montage: dict[str, tuple[np.ndarray, dict[str, float]]] = {}     # the first subject, in the model's plane
    shown: Optional[tuple[np.ndarray, np.ndarray]] = None              # its input and real source slices
    for pair in tqdm(pairs, desc="evaluate (paired)", disable=not progress):
        prepared: dict[str, PreparedPair] = {}     # per preprocessing config
        for method, bundle in loaded.items():
            # the bundle's own preprocessing config: a model is applied as it was trained
            prep = bundle.cfg.preprocess
            key = prep.model_dump_json()
            if key not in prepared:
                prepared[key] = prepare_paired_case(pair, prep, (target_modality, target), (source_modality, source),
                                                    cfg.validate_.affine_atol_mm, cfg.evaluate.translation_mask)
            target_vol, source_vol, real, mask = prepared[key]
            _, translated = predict_stacks(bundle, target_vol.stacks, runtime, cfg.evaluate.batch_size)
            translated_img = target_vol.restore_intensity(translated)
            fake = np.asarray(translated_img.dataobj, dtype=np.float32)
            # SSIM in the plane the model translates: its windows never straddle two translated slices
            scores = translation_scores(fake, real, mask, data_range=DATA_RANGE, axis=source_vol.geometry.array_axis)
            rows[method].append({"case_id": pair.case_id, "subject": pair.subject, **scores})
            if save_predictions:
                save_nifti(translated_img, report_dir / "translations" / method / f"{pair.case_id}.nii.gz")
            if pair is pairs[0]:
                j = len(target_vol.slices) // 2                         # the middle slice of the model's plane
                montage[method] = (translated[j], scores)
                shown = shown or (target_vol.slices[j], source_vol.slices[j])
    results: dict[str, Any] = {}
    for method in models:
        results[method] = {**aggregate_paired(rows[method]), "mask": cfg.evaluate.translation_mask}
        mean = results[method]["mean"]
        log.info("%s: mean MAE %.4f, PSNR %.2f dB, SSIM %.3f over %d subjects", method, mean["mae"], mean["psnr"],
                 mean["ssim"], results[method]["n_subjects"])
    write_json(metrics_path, results)
    write_json(report_dir / "per_subject.json",
               {m: {r["case_id"]: {k: r[k] for k in SCORES} for r in rs} for m, rs in rows.items()})
    translation_montage(shown[0], montage, shown[1], report_dir / PICTURE,
                        f"{target} test case {pairs[0].case_id} -> {source} (middle slice, the model's plane)")
    return results


def paired_summary_table(results: dict[str, Any], order: Optional[list[str]] = None) -> str:
    """Plain text: mean +- sd of MAE, PSNR and SSIM over subjects per method, in aligned
    columns under their headers."""

    methods = [m for m in (order or list(results)) if m in results]
    rows = []
    for m in methods:
        mean, sd = results[m]["mean"], results[m]["sd"]
        rows.append([m, *(f"{mean[k]:.4f} +- {sd[k]:.4f}" if k != "psnr" else f"{mean[k]:.2f} +- {sd[k]:.2f}"
                          for k in ("mae", "psnr", "ssim"))])
    lines = text_table(["method", "MAE", "PSNR (dB)", "SSIM"], rows)
    n = results[methods[0]]["n_subjects"] if methods else 0
    mask = results[methods[0]].get("mask", "body") if methods else "body"
    lines.append(f"paired translation, target -> source; mean +- sd over {n} test subject(s); {mask} mask, "
                 f"intensities in [-1, 1] (data range {DATA_RANGE:g})")
    return "\n".join(lines)


def paired_markdown_rows(results: dict[str, Any], order: list[str]) -> list[str]:
    """The Markdown table of a paired evaluation: every score, mean (sd), per method."""
    lines = ["| method | " + " | ".join(k.upper() if k != "pearson" else "Pearson" for k in SCORES) + " |",
             "|---" * (len(SCORES) + 1) + "|"]
    for method in [m for m in order if m in results]:
        r = results[method]
        lines.append(f"| {method} | " + " | ".join(f"{r['mean'][k]:.4f} ({r['sd'][k]:.4f})" for k in SCORES) + " |")
    return lines

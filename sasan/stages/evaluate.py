"""Evaluate stage: segmentation transfer on whole target test volumes (METHOD.md section 6);
for paired mode, translation quality by image metrics (:mod:`sasan.stages.evaluate_paired`).

For every method (a model bundle) and every target test case of the manifest: infer the
label volume in the original geometry and score 3-D Dice and ASSD (voxels and mm) per
structure; aggregate mean +- std over subjects. Target labels are read here and only here.

Writes ``metrics_path`` (``{METHOD: {"per_structure": {NAME: {"dice", "assd_vox", "assd_mm",
...std}}, "mean": {...}, "n_subjects"}}``), ``report_dir/per_structure.json`` (rows for
``dvc plots``), ``report_dir/*.png`` and ``report_dir/predictions/<method>/<case>.nii.gz``.

Before any inference every input is checked (one-line errors naming the file): each test
label loads as a label on its image's grid, the source and target label maps agree, no
label value reaches a bundle's ``model.num_classes``, structure names stay distinct (and
are not ``mean``) as metric names, and each bundle's preprocessing has intensity bounds for
the target (by modality, else by domain name, as ``sasan preprocess`` resolves them).
``report_dir/identity.json`` records what the scores were measured on, the sha256 and
variant of each evaluated bundle and the sha256 of ``metrics_path``, so that ``sasan
register`` gates only the bundle that was evaluated, with these metrics.

The evaluation is paired (:func:`evaluation_mode`) when ``experiment.mode`` is paired or
every bundle translates only (a paired-mode model, no U-Net); a mix of segmenting and
translate-only bundles is refused. A paired evaluation's identity adds ``"mode": "paired"``,
``translation_mask`` and, per method, ``preprocess_digest`` (:func:`evaluation_identity`).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np
from tqdm.auto import tqdm

from sasan.atomic import atomic_dir, write_bytes, write_json
from sasan.config import Config
from sasan.data.manifest import sha256_file as file_sha256
from sasan.data.prepare import bounds_for
from sasan.data.volume import check_pair, load_volume
from sasan.errors import ConfigError, DataError
from sasan.inference import check_creatable, infer_volume, save_nifti
from sasan.metrics import aggregate_subjects, gap_closed, segmentation_scores
from sasan.stages.evaluation_bundles import BundleInfo, inspect_bundles, read_manifest_file  # noqa: F401
from sasan.stages.evaluation_pictures import dice_bars, segmentation_montage
from sasan.stages.evaluation_tables import text_table
from sasan.tracking.lineage import data_identity, split_digest
from sasan.tracking.names import metric_name
from sasan.train.device import resolve_runtime

if TYPE_CHECKING:
    from sasan.tracking.runs import Tracker

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"     # in the report folder: what the scores were measured on
RUN_REF = "mlflow_run.json"         # a variant's child run reference, next to its model bundle
# identity.json keys that are not run tags (lists, per-method maps, digests of files)
UNTAGGED = ("test_cases", "image_size", "preprocess_digest", "bundles", "metrics_sha256")


@dataclass(frozen=True)
class EvaluateInputs:
    raw: Path
    models: dict[str, Path]         # method (variant) -> model bundle, in report order


@dataclass(frozen=True)
class EvaluateOutputs:
    metrics: Path                   # {method: {per_structure, mean, n_subjects}} (DVC metrics); paired:
                                    # {method: {mode, mask, n_subjects, mean, sd, per_subject}}
    report: Path                    # per_structure.json, per_subject.json, PNGs, identity.json, predictions/
                                    # (paired: per_subject.json, translations.png, identity.json, translations/)


def run(inputs: EvaluateInputs, outputs: EvaluateOutputs, cfg: Config, tracker: "Tracker",
        save_predictions: bool = True, progress: bool = True) -> dict[str, Any]:
    """Score every model, write metrics and report, record what was evaluated
    (``identity.json``: the gate compares only like with like), and log the numbers and
    pictures to the parent run (``<method>/mean/dice``) and to each variant's child run
    (``eval/mean/dice``) when its reference lies next to the bundle.

    All or nothing: the report is written into a temporary sibling folder (the metrics
    too, until the end) and put in place, replacing the old report as a whole, once
    everything is written; a killed run leaves only that folder, which the next one removes."""
    outputs = EvaluateOutputs(Path(outputs.metrics).absolute(), Path(outputs.report).resolve())
    check_outputs(outputs)
    bundles = inspect_bundles(inputs.models)
    with _new_folders_removed_on_failure(outputs.metrics, outputs.report), atomic_dir(outputs.report) as report:
        staged = report / f".{outputs.metrics.name}"
        results = run_evaluate(inputs.models, inputs.raw, staged, report, cfg,
                               save_predictions=save_predictions, progress=progress, bundles=bundles)
        identity = evaluation_identity(inputs.raw, cfg, inputs.models, bundles)
        identity["metrics_sha256"] = file_sha256(staged)     # links identity.json to these metrics
        write_json(report / IDENTITY_FILE, identity)
        write_bytes(outputs.metrics, staged.read_bytes())
        staged.unlink()
    tracker.set_tags({f"sasan.eval.{k}": v for k, v in identity.items() if k not in UNTAGGED})
    for method, r in results.items():
        tracker.log_metrics(loggable_scores(r), prefix=f"{method}/")
    for png in sorted(Path(outputs.report).glob("*.png")):
        tracker.log_image(png, artifact_path="images/evaluation")
    tracker.log_artifact(outputs.metrics, artifact_path="metrics")
    if tracker.enabled:
        _log_to_children(tracker, inputs.models, results)
    return results


def check_outputs(outputs: EvaluateOutputs) -> None:
    """Before any work: the metrics file and the report folder can be created, the metrics
    file lies outside the report folder, and that folder, which is replaced as a whole, is
    new, empty or an earlier report (never a folder of models, data or other reports)."""
    metrics, report = Path(outputs.metrics), Path(outputs.report)
    check_creatable(metrics)
    check_creatable(report, "directory")
    if metrics.resolve().is_relative_to(report.resolve()):
        raise ConfigError(f"lies in the report folder {report}, which is replaced as a whole: "
                          "write the metrics elsewhere", metrics)
    if report.is_dir() and any(report.iterdir()) and not any(
            (report / name).is_file() for name in (IDENTITY_FILE, "per_structure.json")):
        raise ConfigError("report folder holds files that evaluate did not write, and would be replaced "
                          "as a whole: give a new or empty folder", report)


@contextlib.contextmanager
def _new_folders_removed_on_failure(*paths: str | Path) -> Iterator[None]:
    """On failure, remove the (empty) parent folders of ``paths`` that did not exist before."""
    new = {d for p in paths for d in Path(p).absolute().parents if not d.exists()}
    try:
        yield
    except BaseException:
        for folder in sorted(new, key=lambda d: len(d.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def evaluation_identity(raw_dir: Path, cfg: Config, models: dict[str, Path],
                        bundles: Optional[dict[str, BundleInfo]] = None) -> dict[str, Any]:
    """Data set digest, target test split (sorted ids and their digest), image size per
    method (from each bundle's own config), profile (experiment name) and, per method, the
    sha256 and variant of the bundle evaluated. A paired evaluation's adds ``"mode":
    "paired"``, ``translation_mask`` (``evaluate.translation_mask``: the voxels scored) and,
    per method, ``preprocess_digest`` (:func:`sasan.stages.evaluate_paired.preprocess_digest`
    of the bundle's preprocessing config, which makes the real image it is scored against);
    a segmentation evaluation's identity has none of these: it is what it always was."""
    data = data_identity(raw_dir)
    target = cfg.experiment.target
    cases = sorted(data.test_cases.get(target, []))
    bundles = bundles if bundles is not None else inspect_bundles(models)
    sizes = {method: int(bundles[method].cfg.preprocess.image_size) for method in models}
    evaluated = {method: {"sha256": bundles[method].sha256, "variant": bundles[method].variant} for method in models}
    identity = {"dataset": data.name, "data_digest": data.digest, "source": cfg.experiment.source, "target": target,
                "test_split": split_digest(cases), "test_cases": cases, "image_size": sizes,
                "profile": cfg.experiment.name, "bundles": evaluated}
    if evaluation_mode(cfg, bundles) == "paired":
        from sasan.stages.evaluate_paired import preprocess_digests

        identity["mode"] = "paired"
        identity["translation_mask"] = cfg.evaluate.translation_mask
        identity["preprocess_digest"] = preprocess_digests(raw_dir, cfg.experiment.source, bundles, list(models))
    else:
        identity["assd_cap_vox"] = cfg.evaluate.assd_cap_vox     # what a capped ASSD in the tables is
    return identity


def evaluation_mode(cfg: Config, bundles: dict[str, BundleInfo]) -> str:
    """``paired`` (translations scored by image metrics against the real source image) when
    ``experiment.mode`` is paired or every bundle translates only; else ``segmentation``.
    Refused (one line naming a bundle): segmenting and translate-only bundles together, and
    a paired evaluation of a bundle that does not translate."""
    translate_only = [m for m, b in bundles.items() if not b.segments]
    segmenting = [m for m, b in bundles.items() if b.segments]
    if translate_only and segmenting:
        raise ConfigError(f"the {', '.join(translate_only)} bundle(s) translate only (paired mode) but "
                          f"{', '.join(segmenting)} segment: one evaluation scores either translations or "
                          "segmentations; evaluate them separately (evaluate.methods)",
                          bundles[translate_only[0]].path)
    paired = cfg.experiment.mode == "paired" or bool(translate_only)
    if paired:
        for method, info in bundles.items():
            if not info.translates:
                raise ConfigError(f"paired evaluation scores translations, but the {method} bundle does not "
                                  "translate: leave it out of evaluate.methods", info.path)
    return "paired" if paired else "segmentation"


def loggable_scores(result: dict[str, Any]) -> dict[str, Any]:
    """The mean and per-structure scores of one method, without spreads and counts (a
    paired evaluation's: its finite mean scores)."""
    if result.get("mode") == "paired":
        return {"mean": {k: v for k, v in result["mean"].items() if math.isfinite(v)}}
    per = {n: {k: v for k, v in s.items() if not k.endswith("_std") and k != "n_missing"}
           for n, s in result["per_structure"].items()}
    return {"mean": result["mean"], **per}


def _log_to_children(tracker: "Tracker", models: dict[str, Path], results: dict[str, Any]) -> None:
    from sasan.tracking.run_ref import read_run_ref

    for method, bundle in models.items():
        ref_path = Path(bundle).parent / RUN_REF
        if method in results and ref_path.is_file():
            tracker.attach(read_run_ref(ref_path)).log_metrics(loggable_scores(results[method]), prefix="eval/")


def markdown_report(results: dict[str, Any], order: list[str], title: str, report_dir: Path,
                    embed_images: bool = True) -> str:
    """The results table (Dice and ASSD in mm per structure; a paired evaluation's image
    metrics, mean (sd)) and the report's pictures (embedded as data URIs, for viewers without
    the files: the Kubeflow UI)."""
    if is_paired_results(results):
        from sasan.stages.evaluate_paired import paired_markdown_rows

        lines = [f"# {title}", "", *paired_markdown_rows(results, order)]
    else:
        structures = list(next(iter(results.values()))["per_structure"])
        lines = [f"# {title}", "", "| method | " + " | ".join(structures) + " | mean |",
                 "|---" * (len(structures) + 2) + "|"]

        def cell(scores: dict[str, Any], capped: bool) -> str:
            # "\\*": a literal asterisk, never the start of emphasis
            return f"{scores['dice']:.3f} ({scores['assd_mm']:.2f}" + ("\\*)" if capped else ")")

        marked = False
        for method in [m for m in order if m in results]:
            per = results[method]["per_structure"]
            mean_capped = any(is_capped(c) for c in per.values())
            marked = marked or mean_capped
            cells = [cell(per[n], is_capped(per[n])) for n in structures]
            lines.append(f"| {method} | " + " | ".join([*cells, cell(results[method]["mean"], mean_capped)]) + " |")
        lines += ["", "Dice (ASSD in mm); mean over structures and subjects."]
        if marked:
            lines[-1] += (" \\* Some subject lacks the structure in its prediction or truth: its ASSD counts as "
                          "the cap (evaluate.assd_cap_vox voxels, in mm by the voxel spacing; 0 when both lack "
                          "it), not a measured distance.")
    for png in sorted(Path(report_dir).glob("*.png")):
        src = f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode('ascii')}" if embed_images else png.name
        lines += ["", f"## {png.stem.replace('_', ' ')}", "", f"![{png.stem}]({src})"]
    return "\n".join(lines) + "\n"


def _label_map(info: dict[str, Any]) -> dict[str, int]:
    return dict(sorted(((k, int(v)) for k, v in info["labels"].items()), key=lambda kv: kv[1]))


def target_test_cases(raw_dir: Path, domain: str) -> tuple[list[dict[str, Any]], dict[str, int], str]:
    """(cases, label names -> values, modality) of the target domain's test split."""
    manifest_path = raw_dir / "manifest.json"
    manifest = read_manifest_file(raw_dir)
    if domain not in manifest.get("domains", {}):
        raise DataError(f"domain {domain!r} not in manifest (has {sorted(manifest.get('domains', {}))})", manifest_path)
    info = manifest["domains"][domain]
    cases = [c for c in manifest["cases"] if c["domain"] == domain and c["split"] == "test" and c.get("label")]
    if not cases:
        raise DataError(f"no labelled test cases for target domain {domain!r}", manifest_path)
    return cases, _label_map(info), info.get("modality", domain)


def check_label_maps(raw_dir: Path, source: str, target: str) -> None:
    """The target's structures are the source's: same names with the same values (the
    segmenter learnt the source's label map). A source domain absent from the manifest
    cannot be compared (a target-only test set): nothing to check."""
    manifest_path = raw_dir / "manifest.json"
    domains = read_manifest_file(raw_dir).get("domains", {})
    if source not in domains or source == target:
        return
    src, tgt = _label_map(domains[source]), _label_map(domains[target])
    if src != tgt:
        differ = [f"{n}: {src.get(n, '-')} vs {tgt.get(n, '-')}" for n in sorted(set(src) | set(tgt))
                  if src.get(n) != tgt.get(n)]
        raise DataError(f"label maps of source {source!r} and target {target!r} differ (name: source vs target "
                        f"value; {', '.join(differ)}): the scores would compare unlike structures", manifest_path)


def check_structure_names(labels: dict[str, int], manifest_path: Path) -> None:
    """Scored structure names must stay distinct as MLflow metric names (``<method>/<name>/dice``)
    and none may be ``mean`` (the aggregate's key)."""
    seen: dict[str, str] = {}
    for name, value in labels.items():
        if value == 0:                              # background: not scored
            continue
        key = metric_name(name)
        if key == "mean":
            raise DataError(f"structure name {name!r} is reserved for the mean over structures: "
                            "rename that label in the manifest", manifest_path)
        if key in seen:
            raise DataError(f"structure names {seen[key]!r} and {name!r} both become the metric name {key!r}: "
                            "rename one of the labels in the manifest", manifest_path)
        seen[key] = name


def check_bundles(bundles: dict[str, BundleInfo], labels: dict[str, int], modality: str, domain: str,
                  manifest_path: Path) -> None:
    """Every bundle resolves intensity bounds for the target and has a class for every label value."""
    for method, info in bundles.items():
        try:
            bounds_for(info.cfg.preprocess, modality, domain)
        except ConfigError as err:
            raise ConfigError(f"{err.reason} in the bundle's config ({method})", info.path) from None
        n = int(info.cfg.model.num_classes)
        too_big = {name: v for name, v in labels.items() if v >= n}
        if too_big:
            raise DataError(f"label values {too_big} of target {domain!r} do not fit the {method} bundle's "
                            f"model.num_classes {n} ({info.path})", manifest_path)


def check_test_volumes(raw_dir: Path, cases: list[dict[str, Any]], bundles: dict[str, BundleInfo],
                       atol_mm: float) -> None:
    """Each test label loads as a label volume on its image's grid, and holds no value that
    a bundle cannot predict (``>= model.num_classes``)."""
    classes = min((int(b.cfg.model.num_classes), m) for m, b in bundles.items()) if bundles else None
    for case in cases:
        image = load_volume(raw_dir / case["image"])
        label = load_volume(raw_dir / case["label"], kind="label")
        check_pair(image, label, atol_mm)
        top = int(label.array.max()) if label.array.size else 0
        if classes is not None and top >= classes[0]:
            raise DataError(f"ground-truth label value {top} does not fit the {classes[1]} bundle's "
                            f"model.num_classes {classes[0]} (values 0..{classes[0] - 1})", label.path)


def run_evaluate(models: dict[str, Path], raw_dir: str | Path, metrics_path: str | Path,
                 report_dir: str | Path, cfg: Config, save_predictions: bool = True,
                 progress: bool = True, bundles: Optional[dict[str, BundleInfo]] = None) -> dict[str, Any]:
    bundles = bundles if bundles is not None else inspect_bundles(models)
    if evaluation_mode(cfg, bundles) == "paired":
        from sasan.stages.evaluate_paired import run_paired_evaluate

        return run_paired_evaluate(models, raw_dir, metrics_path, report_dir, cfg, save_predictions, progress,
                                   bundles)
    raw_dir, report_dir = Path(raw_dir), Path(report_dir)
    target = cfg.experiment.target
    cases, labels, modality = target_test_cases(raw_dir, target)
    manifest_path = raw_dir / "manifest.json"
    check_structure_names(labels, manifest_path)
    check_label_maps(raw_dir, cfg.experiment.source, target)
    check_bundles(bundles, labels, modality, target, manifest_path)
    check_test_volumes(raw_dir, cases, bundles, cfg.validate_.affine_atol_mm)
    runtime = resolve_runtime(cfg.train.device, cfg.train.bf16, cfg.train.channels_last)
    results: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    montage: dict[str, Any] = {}
    per_subject: dict[str, Any] = {}
    for method in models:
        bundle = bundles[method].networks(runtime.device)
        # the bundle's own preprocessing config: a model is applied as it was trained
        prep = bundle.cfg.preprocess
        subject_scores = []
        for case in tqdm(cases, desc=f"evaluate {method}", disable=not progress):
            # bounds by modality, else by domain name: as preprocessing chose them for the shards
            result = infer_volume(bundle, raw_dir / case["image"], prep, modality, runtime, cfg.evaluate.batch_size,
                                  domain=target)
            gt_vol = load_volume(raw_dir / case["label"], kind="label")
            gt = gt_vol.array.astype(np.int64)
            pred = np.asarray(result.labels.dataobj).astype(np.int64)
            spacing = gt_vol.spacing     # pixdim, unless it disagrees with the affine (data/volume.py)
            scores = segmentation_scores(pred, gt, labels, spacing, cfg.evaluate.assd_cap_vox)
            scores["case_id"] = case["case_id"]
            subject_scores.append(scores)
            if save_predictions:
                save_nifti(result.labels, report_dir / "predictions" / method / f"{case['case_id']}.nii.gz")
                if result.translated is not None:
                    save_nifti(result.translated, report_dir / "translations" / method / f"{case['case_id']}.nii.gz")
            if case is cases[0]:
                montage[method] = (result.prepared, pred, result.translated)
        agg = aggregate_subjects(subject_scores)
        per_subject[method] = {s["case_id"]: s["mean"] for s in subject_scores}
        results[method] = agg
        for name, s in agg["per_structure"].items():
            rows.append({"label": f"{method} {name}", "method": method, "structure": name,
                         "dice": s["dice"], "assd_vox": s["assd_vox"],
                         "assd_mm": s["assd_mm"]})
        log.info("%s: mean Dice %.3f, ASSD %.2f vox over %d subjects", method, agg["mean"]["dice"],
                 agg["mean"]["assd_vox"], agg["n_subjects"])
    write_json(metrics_path, results)
    write_json(report_dir / "per_structure.json", rows)
    write_json(report_dir / "per_subject.json", per_subject)
    dice_bars(results, report_dir / "dice_per_structure.png")
    first = cases[0]
    gt_first = load_volume(raw_dir / first["label"], kind="label").array.astype(np.int64)
    img_first = load_volume(raw_dir / first["image"]).array.astype(np.float32, copy=False)
    segmentation_montage(img_first, gt_first, {m: v[1] for m, v in montage.items()},
                         report_dir / "segmentations.png", f"{target} test case {first['case_id']}", labels)
    return results


def is_paired_results(results: dict[str, Any]) -> bool:
    """Whether ``results`` (the metrics JSON) is a paired evaluation's."""
    return any(isinstance(r, dict) and r.get("mode") == "paired" for r in results.values())


def check_metrics(results: Any, path: str | Path) -> None:
    """``results`` is a metrics file as :func:`run` writes it (what :func:`summary_table`
    reads): one line naming ``path`` and what is wrong, else nothing."""
    def fail(reason: str):
        raise DataError(f"not an evaluate metrics file: {reason}", path)

    def scores(where: str, obj: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(obj, dict):
            fail(f"{where} is not an object")
        for k in keys:
            if not isinstance(obj.get(k), (int, float)) or isinstance(obj.get(k), bool):
                fail(f"{where} has no number {k!r}")

    if not isinstance(results, dict) or not results:
        fail("expected an object of methods, got " + ("an empty one" if isinstance(results, dict)
                                                      else type(results).__name__))
    paired = is_paired_results(results)
    structures = None
    for method, r in results.items():
        if not isinstance(r, dict):
            fail(f"{method!r} is not an object of scores")
        if paired:
            if r.get("mode") != "paired":
                fail(f"{method!r} is not a paired evaluation's, unlike the others")
            if not isinstance(r.get("n_subjects"), int):
                fail(f"{method!r} has no 'n_subjects'")
            for part in ("mean", "sd"):
                scores(f"{method!r} {part!r}", r.get(part), ("mae", "psnr", "ssim"))
            continue
        per = r.get("per_structure")
        if not isinstance(per, dict):
            fail(f"{method!r} has no 'per_structure' object")
        for name, cell in per.items():
            scores(f"{method!r} structure {name!r}", cell, ("dice", "assd_vox"))
        scores(f"{method!r} 'mean'", r.get("mean"), ("dice", "assd_vox"))
        if structures is not None and set(per) != structures:
            fail(f"{method!r} scores structures {sorted(per)}, the others {sorted(structures)}")
        structures = set(per)


CAPPED = "*"     # marks an ASSD that counts a structure missing from a prediction or a truth


def is_capped(cell: dict[str, Any]) -> bool:
    """Whether an aggregated ASSD (one structure of one method) counts at least one subject
    whose structure is missing from the prediction or the truth (``n_missing``): its ASSD is
    then the cap (0 when missing from both), a convention, not a measured distance."""
    return int(cell.get("n_missing") or 0) > 0


def summary_table(results: dict[str, Any], order: Optional[list[str]] = None,
                  structures: Optional[list[str]] = None, assd_cap_vox: Optional[float] = None) -> str:
    """A plain-text table: per-structure Dice and ASSD (voxels) for each method; columns in
    ``structures`` order (e.g. label order) where given, else as stored. An ASSD that counts
    a structure missing from some subject's prediction or truth is marked ``*`` (the mean
    too, when any of its structures is), and the footer says what the mark means and the
    cap (``assd_cap_vox``: ``evaluate.assd_cap_vox``; named without a value when not given).
    A paired evaluation's: MAE, PSNR and SSIM (mean +- sd) per method."""
    if is_paired_results(results):
        from sasan.stages.evaluate_paired import paired_summary_table

        return paired_summary_table(results, order)
    methods = [m for m in (order or list(results)) if m in results]
    stored = list(next(iter(results.values()))["per_structure"])
    names = [n for n in structures or [] if n in stored] + [n for n in stored if n not in (structures or [])]

    def cell(dice: float, assd: float, capped: bool) -> str:
        # unmarked cells keep a blank where the mark goes: the numbers stay aligned
        return f"{dice:.3f}/{assd:.1f}" + (CAPPED if capped else " ")

    rows = []
    for m in methods:
        per, mean = results[m]["per_structure"], results[m]["mean"]
        rows.append([m, *(cell(per[n]["dice"], per[n]["assd_vox"], is_capped(per[n])) for n in names),
                     cell(mean["dice"], mean["assd_vox"], any(is_capped(c) for c in per.values()))])
    marked = any(c.endswith(CAPPED) for row in rows for c in row[1:])
    if not marked:
        rows = [[c.rstrip() for c in row] for row in rows]
    lines = text_table(["method", *names, "mean"], rows)
    lines.append("cells: Dice / ASSD (voxels); mean over structures and subjects")
    if marked:
        cap = "the cap" if assd_cap_vox is None else f"the cap, {assd_cap_vox:g} voxels"
        lines += [f"{CAPPED} capped: some subject lacks the structure in its prediction or truth; its ASSD counts as",
                  f"  {cap} (evaluate.assd_cap_vox; 0 where both lack it), not a measured distance"]
    gaps = gap_closed({m: r["mean"]["dice"] for m, r in results.items()})
    shown = [m for m in methods if m in gaps]
    if shown:
        n = results["upper_bound"].get("n_subjects")
        lines.append("gap closed (no adaptation -> upper bound, mean Dice): "
                     + ", ".join(f"{m} {100 * gaps[m]:.0f}%" for m in shown)
                     + (f"; one run on {n} test subject(s)" if n else ""))
    return "\n".join(lines)

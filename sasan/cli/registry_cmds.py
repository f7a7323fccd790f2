"""``sasan register``: log the trained bundle as an MLflow model on the pipeline's run,
register it and move the ``champion`` alias only past the gate."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sasan.cli.params import add_params_args, load_params


DESCRIPTION = """\
Log the model bundle as an MLflow pyfunc model (target-modality slice stacks in, label maps
out; a paired-mode model returns its translation) on the pipeline's MLflow run, register it
as a new version of register.model_name, and move the alias register.alias ("champion") to
it only when the target mean Dice of METHOD in the evaluation metrics is >= register.min_dice
(a paired evaluation: the mean SSIM of its translations >= register.min_ssim) AND beats the
current champion's, compared only when both were scored by the same metric on the same
identity (data set digest, test split, image size, profile; a paired evaluation adds its
mode, evaluate.translation_mask and a digest of the bundle's preprocessing config, which
makes the real image the translations are scored against: EVALUATION_REPORT/identity.json;
a version without one is never promoted).
The inputs must belong together, or nothing is registered: the bundle must be a METHOD
model, and identity.json must have been written by the `sasan evaluate` run that wrote
METRICS (sha256 of the metrics file) and evaluated this very bundle as METHOD (sha256 of
model.pt). upper_bound (the U-Net trained on target labels, a reference of the results
table) is never registered. Concurrent registrations are serialised by a lock. With register.enabled false (as in
params.yaml and the profiles; the built-in default, used with no params file, is true)
nothing is registered and the report says "skipped". The decision and its numbers are
written to REPORT/register.json and REPORT/register.md.

Tracking store: $MLFLOW_TRACKING_URI when set, else the one recorded in the run reference,
else ./mlflow.db (what `mlflow ui` opens from this directory). Credentials for a server or S3
artifacts come only from the environment (MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN,
AWS_* variables), never from files."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("register", help="register the model in MLflow; move 'champion' only if the gate passes",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="model bundle written by `sasan train`")
    p.add_argument("--metrics", type=Path, required=True, help="evaluation metrics JSON (metrics/evaluation.json)")
    p.add_argument("--run-ref", type=Path, required=True,
                   help="run reference JSON {run_id, experiment_id, tracking_uri} of the pipeline's MLflow run")
    add_params_args(p)
    p.add_argument("--report", type=Path, default=Path("reports/register"), help="report folder")
    p.add_argument("--method", default="sasan",
                   help="method whose mean Dice (paired evaluation: mean SSIM) is gated; the bundle must be of "
                        "this variant (default: sasan; no_adaptation, cyclegan and the ablations too; upper_bound, "
                        "trained on target labels, is refused)")
    p.add_argument("--evaluation-report", type=Path, default=Path("reports/evaluation"),
                   help="the report folder of the evaluate run that wrote --metrics; its identity.json is "
                        "checked against --metrics and --bundle and compared by the gate "
                        "(default: reports/evaluation)")
    p.set_defaults(func=_register)


def _register(args: argparse.Namespace) -> int:
    from sasan.stages import register
    from sasan.tracking.client import TrackingError, default_tracking_uri
    from sasan.tracking.runs import Tracker, read_run_ref

    cfg = load_params(args)
    if not cfg.register_.enabled:
        return _skipped(args, cfg)
    inputs = register.RegisterInputs(args.bundle, args.metrics, args.evaluation_report / register.IDENTITY_FILE)
    register.check_inputs(inputs, args.method)
    ref = read_run_ref(args.run_ref)
    if not ref["run_id"]:
        raise TrackingError("the run reference names no MLflow run (the pipeline ran without tracking); "
                            "registering needs one", args.run_ref)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or ref["tracking_uri"] or default_tracking_uri(Path.cwd())
    with Tracker.reopen(ref, tracking_uri) as tracker:        # FAILED on any error below
        report = register.run(inputs, register.RegisterOutputs(args.report), cfg, tracker, method=args.method)
    outcome = (f"promoted to @{report['alias']}" if report["promoted"] else
               f"not promoted (@{report['alias']}: "
               f"{'v' + report['champion_version'] if report['champion_version'] else 'unset'})")
    from sasan.tracking.registry import METRIC_NAMES, SCORE_TAGS, report_metric

    metric = report_metric(report)
    print(f"{report['model_name']} v{report['version']}: target mean {METRIC_NAMES[metric]} "
          f"{report[SCORE_TAGS[metric]]:.4f}, {outcome}; report: {args.report / 'register.md'}")
    return 0


def _skipped(args: argparse.Namespace, cfg) -> int:
    """register.enabled is false: a report that says so, nothing registered."""
    from sasan.atomic import write_json, write_text

    reason = "register.enabled is false in the params (set it true to register; see docs/dvc.md)"
    write_json(args.report / "register.json", {"skipped": True, "promoted": False, "reason": reason,
                                               "model_name": cfg.register_.model_name, "version": None})
    write_text(args.report / "register.md", f"# Registration skipped\n\n{reason}\n")
    print(f"{cfg.register_.model_name}: registration skipped ({reason})")
    return 0

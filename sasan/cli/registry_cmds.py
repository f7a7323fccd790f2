"""``sasan register``: log the trained bundle as an MLflow model on the pipeline's run,
register it and move the ``champion`` alias only past the gate."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sasan.cli.params import add_params_args, load_params
from sasan.errors import CheckpointError, SasanError


DESCRIPTION = """\
Log the model bundle as an MLflow pyfunc model (target-modality slice stacks in, label maps
out) on the pipeline's MLflow run, register it as a new version of register.model_name, and
move the alias register.alias ("champion") to it only when the target mean Dice of METHOD in
the evaluation metrics is >= register.min_dice AND beats the current champion's. The
decision and its numbers are written to REPORT/register.json and REPORT/register.md.

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
    p.add_argument("--method", default="sasan", help="method whose mean Dice is gated (default: sasan)")
    p.set_defaults(func=_register)


def _register(args: argparse.Namespace) -> int:
    from sasan.tracking.pyfunc_model import log_bundle_model
    from sasan.tracking.registry import load_evaluation, register_and_gate, target_mean_dice
    from sasan.tracking.runs import Tracker, default_tracking_uri, read_run_ref

    cfg = load_params(args)
    metrics = load_evaluation(args.metrics)
    target_mean_dice(metrics, args.method, args.metrics)        # a bad file fails before MLflow is touched
    if not args.bundle.is_file():
        raise CheckpointError("model bundle not found (written by `sasan train`)", args.bundle)
    ref = read_run_ref(args.run_ref)
    if not ref["run_id"]:
        raise SasanError("the run reference names no MLflow run (the pipeline ran without tracking); "
                         "registering needs one", args.run_ref)
    tracking_uri = (os.environ.get("MLFLOW_TRACKING_URI") or ref["tracking_uri"]
                    or default_tracking_uri(Path.cwd()))

    with Tracker.reopen(ref, tracking_uri) as tracker:        # FAILED on any error below
        model_uri = log_bundle_model(tracker, args.bundle)
        report = register_and_gate(tracking_uri, model_uri, metrics, cfg.register_, tracker.run_id,
                                   args.report, method=args.method, metrics_origin=args.metrics)
        tracker.log_artifact(args.report, "register")

    outcome = (f"promoted to @{report['alias']}" if report["promoted"] else
               f"not promoted (@{report['alias']}: "
               f"{'v' + report['champion_version'] if report['champion_version'] else 'unset'})")
    print(f"{report['model_name']} v{report['version']}: target mean Dice {report['target_mean_dice']:.4f}, "
          f"{outcome}; report: {args.report / 'register.md'}")
    return 0




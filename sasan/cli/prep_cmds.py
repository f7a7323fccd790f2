"""``sasan validate`` and ``sasan preprocess``: thin adapters over the stage functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from sasan.cli.params import add_params_args, load_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a raw data set (Great Expectations); non-zero exit on errors",
                       description="Validate a canonical raw data set; write validation.json and "
                                   "validation.html; exit non-zero on any error-level failure.")
    p.add_argument("raw", type=Path, help="canonical raw data set (folder with manifest.json or <domain>/)")
    p.add_argument("--report", type=Path, default=Path("reports/validation"),
                   help="report folder (default reports/validation)")
    p.add_argument("--run-ref", type=Path, default=None, help="log to this MLflow parent run (default: none)")
    add_params_args(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser("preprocess", help="raw volumes -> per-domain, per-split slice-stack shards",
                       description="Reorient, resample, crop, normalise and cut slice stacks into "
                                   "OUT/<domain>/<split>/{images.npy,labels.npy,index.json}.")
    p.add_argument("raw", type=Path, help="canonical raw data set")
    p.add_argument("out", type=Path, help="shard folder")
    p.add_argument("--domains", nargs="+", default=None, help="these domains (default: experiment.source and experiment.target)")
    p.add_argument("--run-ref", type=Path, default=None, help="log to this MLflow parent run (default: none)")
    add_params_args(p)
    p.set_defaults(func=_preprocess)


def _validate(args: argparse.Namespace) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # the edge: no usage statistics leave the machine
    if not args.verbose:  # GX logs its plugin registration at INFO; our own log says what matters
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from sasan.stages import validate

    with _tracker(args) as tracker:
        report = validate.run(validate.ValidateInputs(args.raw), validate.ValidateOutputs(args.report),
                              load_params(args), tracker)
    for line in validate.warning_lines(report):
        print(line)
    print(f"validation passed: {report['n_cases']} case(s), {report['n_warnings']} warning check(s) failed; "
          f"report: {args.report / 'validation.html'}")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from sasan.stages import preprocess

    inputs = preprocess.PreprocessInputs(args.raw, tuple(args.domains) if args.domains else None)
    with _tracker(args) as tracker:
        summary = preprocess.run(inputs, preprocess.PreprocessOutputs(args.out), load_params(args), tracker,
                                 code_dir=Path.cwd())
    print(json.dumps(summary["counts"], sort_keys=True))
    return 0


def _tracker(args: argparse.Namespace):
    """The parent run ``--run-ref`` names (re-opened), else none: under DVC the parent run
    starts with training, so data stages log nothing."""
    from sasan.tracking.runs import Tracker, read_run_ref

    if getattr(args, "run_ref", None) is None:
        return Tracker.disabled()
    return Tracker.reopen(read_run_ref(args.run_ref), os.environ.get("MLFLOW_TRACKING_URI"))

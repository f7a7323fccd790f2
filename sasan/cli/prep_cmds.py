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
    p.add_argument("--report", type=Path, default=Path("reports/validation"), help="report folder")
    add_params_args(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser("preprocess", help="raw volumes -> per-domain, per-split slice-stack shards",
                       description="Reorient, resample, crop, normalise and cut slice stacks into "
                                   "OUT/<domain>/<split>/{images.npy,labels.npy,index.json}.")
    p.add_argument("raw", type=Path, help="canonical raw data set")
    p.add_argument("out", type=Path, help="shard folder")
    p.add_argument("--domains", nargs="+", default=None, help="only these domains (default: all)")
    add_params_args(p)
    p.set_defaults(func=_preprocess)


def _validate(args: argparse.Namespace) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # the edge: no usage statistics leave the machine
    if not args.verbose:  # GX logs its plugin registration at INFO; our own log says what matters
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    from sasan.data.validate import run_validate

    report = run_validate(args.raw, args.report, load_params(args).validate_)
    print(f"validation passed: {report['n_cases']} case(s), {report['n_warnings']} warning check(s) failed; "
          f"report: {args.report / 'validation.html'}")
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from sasan.data.preprocess import run_preprocess

    summary = run_preprocess(args.raw, args.out, load_params(args).preprocess, domains=args.domains)
    print(json.dumps(summary["counts"], sort_keys=True))
    return 0

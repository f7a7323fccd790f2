"""What the CLI reads from its surroundings, in one place: the tracking store and the run
context (orchestrator, code checkout, image) that lineage records."""

from __future__ import annotations

import os
from pathlib import Path

from sasan.tracking.client import TRACKING_URI_ENV, default_tracking_uri
from sasan.tracking.lineage import RunContext

DVC_ENV = ("DVC_STAGE", "DVC_ROOT")     # set by `dvc repro` / `dvc exp run` for stage commands
ORCHESTRATOR_ENV = "SASAN_ORCHESTRATOR"   # set by a Kubeflow component that starts `sasan train` under torchrun
KFP_RUN_ENV = "SASAN_KFP_RUN_ID"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ./mlflow.db (what `mlflow ui` opens from here)."""
    return os.environ.get(TRACKING_URI_ENV) or default_tracking_uri(Path.cwd())


def run_context() -> RunContext:
    orchestrator = os.environ.get(ORCHESTRATOR_ENV) or ("dvc" if any(os.environ.get(k) for k in DVC_ENV) else "cli")
    return RunContext.from_environ(os.environ, orchestrator, code_dir=Path.cwd(),
                                   kfp_run_id=os.environ.get(KFP_RUN_ENV))

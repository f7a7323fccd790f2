"""The MLflow parent run of one pipeline execution (DVC or Kubeflow): named
``<source>-><target>``, carrying the resolved config and the run's lineage; every variant
trained in the execution is a child run named by the variant."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from mlflow import MlflowClient

from sasan.config import Config
from sasan.tracking.client import get_run
from sasan.tracking.lineage import DataIdentity, RunContext, log_lineage
from sasan.tracking.run_ref import read_run_ref, write_run_ref
from sasan.tracking.runs import Tracker

log = logging.getLogger(__name__)


def parent_run_name(cfg: Config) -> str:
    return f"{cfg.experiment.source}->{cfg.experiment.target}"


def start_pipeline_run(tracking_uri: Optional[str], cfg: Config, context: RunContext,
                       ref_path: Optional[Path] = None, data: Optional[DataIdentity] = None) -> Tracker:
    """The parent run: the unfinished run ``ref_path`` names (an interrupted execution
    continued, e.g. ``dvc repro`` after a kill), else a new one; ``ref_path`` is (re)written.
    Logs the config and the lineage (and the data set as input when ``data`` is known)."""
    tracker = None
    if ref_path is not None and Path(ref_path).is_file():
        ref = read_run_ref(ref_path)
        if ref["run_id"] and not ref.get("parent_run_id"):
            client = MlflowClient(tracking_uri=tracking_uri or ref.get("tracking_uri"))
            run = get_run(client, ref["run_id"])
            if run.info.status != "FINISHED" and run.info.experiment_id == _experiment_id(client, cfg):
                log.info("continuing MLflow parent run %s (was %s)", ref["run_id"], run.info.status)
                tracker = Tracker.reopen(ref, tracking_uri)
    if tracker is None:
        tracker = Tracker.start(tracking_uri, cfg.experiment.name, parent_run_name(cfg),
                                tags={"sasan.run_kind": "pipeline"})
    tracker.log_config(cfg)
    log_lineage(tracker, context, data)
    if ref_path is not None:
        write_run_ref(ref_path, tracker)
    return tracker


def _experiment_id(client, cfg: Config) -> Optional[str]:
    exp = client.get_experiment_by_name(cfg.experiment.name)
    return exp.experiment_id if exp is not None else None

"""MLflow experiments: created as classic ML experiments with a saved runs-table view, and
artifacts next to a local SQLite store."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sasan.tracking.client import TrackingError, first_line, mlflow_call, redact_uri

# The MLflow 3 UI has a GenAI and a classic ("Model training") view. This experiment tag
# declares the experiment a classic ML one (the UI's ExperimentKind enum); the 3.17 UI
# however picks the view from a per-browser switch (default GenAI) that the URL parameter
# workflowType=machine_learning overrides: runs_table_url() links there (docs/mlflow.md).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"
# A saved runs-table view (columns, sort) stored as an experiment tag, which the UI applies
# for ?viewStateShareKey=<key>: without it the 3.17 runs table shows no metric columns.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
RUNS_VIEW_KEY = "sasan-compare"
VIEW_METRICS = ("sasan/mean/dice", "cyclegan/mean/dice", "no_adaptation/mean/dice", "upper_bound/mean/dice",
                "sasan/mean/assd_mm")
VIEW_PARAMS = ("train.joint.lr", "model.k", "model.attention", "train.segmenter.fake_source")


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (as a classic ML experiment, artifacts next
    to a local SQLite store) when missing."""
    uri = client.tracking_uri
    if not name:
        raise TrackingError("an experiment name is required to start a run")
    exp = mlflow_call(client.get_experiment_by_name, uri, name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=local_artifact_location(uri, name),
                                            tags={EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND,
                                                  SHARED_VIEW_TAG + RUNS_VIEW_KEY: runs_view_state()})
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":   # lost a creation race: use theirs
                raise TrackingError(f"cannot create experiment {name!r}: {first_line(err)}", redact_uri(uri)) from None
            exp = mlflow_call(client.get_experiment_by_name, uri, name)
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} is deleted; restore it (mlflow experiments restore "
                            f"--experiment-id {exp.experiment_id}) or choose another name", redact_uri(uri))
    if EXPERIMENT_KIND_TAG not in exp.tags:
        mlflow_call(client.set_experiment_tag, uri, exp.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML_KIND)
    if SHARED_VIEW_TAG + RUNS_VIEW_KEY not in exp.tags:
        set_runs_view(client, exp.experiment_id)
    return exp.experiment_id


def set_runs_view(client: MlflowClient, experiment_id: str, metrics: tuple[str, ...] = VIEW_METRICS,
                  params: tuple[str, ...] = VIEW_PARAMS, order_by: Optional[str] = None,
                  key: str = RUNS_VIEW_KEY) -> None:
    """Save the runs-table view :func:`runs_table_url` opens: these metrics and params as
    columns, sorted by ``order_by`` (default: the first metric), best first."""
    mlflow_call(client.set_experiment_tag, client.tracking_uri, experiment_id, SHARED_VIEW_TAG + key,
                runs_view_state(metrics, params, order_by))


def runs_view_state(metrics: tuple[str, ...] = VIEW_METRICS, params: tuple[str, ...] = VIEW_PARAMS,
                    order_by: Optional[str] = None) -> str:
    # the UI's own column keys ("metrics.`name`") and search-facet names
    columns = [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params]
    return json.dumps({"selectedColumns": columns, "orderByKey": f"metrics.`{order_by or metrics[0]}`",
                       "orderByAsc": False})


def runs_table_url(experiment_id: str, ui: str = "http://127.0.0.1:5000", key: str = RUNS_VIEW_KEY) -> str:
    """The address that opens the experiment's runs table in the classic view, comparable
    metrics as columns (what to print after ``make run``)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={key}"


def local_artifact_location(tracking_uri: str, experiment: str) -> Optional[str]:
    """For a local ``sqlite:///`` store: ``<store folder>/mlruns/<experiment>`` (MLflow would
    otherwise resolve ``./mlruns`` against whatever directory the stage ran in). Servers
    choose their own artifact store: None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = tracking_uri[len("sqlite:///"):].split("?", 1)[0]
    if not db or db == ":memory:":
        return None
    folder = re.sub(r"[^\w.\-]+", "_", experiment).strip("._") or "experiment"
    return (Path(db).resolve().parent / "mlruns" / folder).as_uri()

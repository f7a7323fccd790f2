"""MLflow runs: one parent run per pipeline execution, re-opened by id by every stage.

:class:`Tracker` wraps an :class:`mlflow.MlflowClient` bound to an explicit tracking URI
and never uses MLflow's active-run stack. MLflow's process-wide tracking URI is set only
inside :func:`process_tracking_uri`, around the two MLflow calls that read nothing else,
and restored after. The run id travels between stages in a small JSON file
(:func:`write_run_ref` / :func:`read_run_ref`), never through the environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service import utils as tracking_utils

from sasan.atomic import write_json
from sasan.config import Config
from sasan.errors import SasanError

log = logging.getLogger(__name__)

# MLflow 3 stores param values up to 6000 characters, older servers 500 (and some hosted
# ones still do): 500 keeps a run loggable anywhere; the full resolved YAML is an artifact.
MAX_PARAM_VALUE = 500
MAX_TAG_VALUE = 5000
MAX_KEY = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

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
CONFIG_ARTIFACT = "config/params.resolved.yaml"


class TrackingError(SasanError):
    """The tracking store refused an operation, or a run reference is unusable."""


def default_tracking_uri(repo_root: str | Path) -> str:
    """The store ``mlflow ui`` opens by default when started in ``repo_root``.

    MLflow 3 (``mlflow.store.tracking.DEFAULT_TRACKING_URI``) defaults to
    ``sqlite:///mlflow.db`` relative to the working directory, and only falls back to
    ``./mlruns`` when that folder already holds a file store. This is the same database,
    spelt absolutely so a stage run from another directory still writes there."""
    return "sqlite:///" + (Path(repo_root).resolve() / "mlflow.db").as_posix()


def redact_uri(uri: Optional[str]) -> Optional[str]:
    """``uri`` without a ``user:password@`` part, for files and reports."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class Tracker:
    """One MLflow run. Build with :meth:`start` (new, nested child, or re-opened run) or
    :meth:`disabled` (every method a no-op, for tests and ``--no-tracking``)."""

    enabled = True

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, tracking_uri: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri

    # ----------------------------------------------------------------- construction
    @classmethod
    def start(cls, tracking_uri: Optional[str], experiment: str, run_name: str,
              parent_run_id: Optional[str] = None, run_id: Optional[str] = None,
              tags: Optional[dict[str, Any]] = None) -> "Tracker":
        """Start a run in ``experiment`` (created if missing), or a child of
        ``parent_run_id`` (in the parent's experiment), or re-open ``run_id``.

        ``tracking_uri=None`` lets MLflow resolve its own default."""
        client = MlflowClient(tracking_uri=tracking_uri)
        uri = client.tracking_uri
        if run_id is not None:
            run = _get_run(client, run_id, uri)
            if run.info.status != "RUNNING":
                _call(client.update_run, uri, run_id, status="RUNNING")
            tracker = cls(client, run_id, run.info.experiment_id, uri)
            if tags:
                tracker.set_tags(tags)
            log.info("re-opened MLflow run %s (%s)", run_id, redact_uri(uri))
            return tracker
        if parent_run_id is not None:
            experiment_id = _get_run(client, parent_run_id, uri).info.experiment_id
        else:
            experiment_id = ensure_experiment(client, experiment)
        run_tags = {"mlflow.source.name": "sasan", **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_run_id is not None:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = _call(client.create_run, uri, experiment_id, tags=run_tags, run_name=run_name)
        log.info("MLflow run %s (%s) in experiment %s at %s", run.info.run_id, run_name,
                 experiment_id, redact_uri(uri))
        return cls(client, run.info.run_id, experiment_id, uri)

    @classmethod
    def disabled(cls) -> "Tracker":
        return DisabledTracker()

    @classmethod
    def reopen(cls, ref: Mapping[str, Any], tracking_uri: Optional[str] = None) -> "Tracker":
        """Re-open the run a :func:`read_run_ref` dict names (disabled when it names none).
        ``tracking_uri`` overrides the one recorded in the reference."""
        if not ref.get("run_id"):
            return cls.disabled()
        return cls.start(tracking_uri or ref.get("tracking_uri"), "", "", run_id=str(ref["run_id"]))

    # ----------------------------------------------------------------- logging
    def log_config(self, cfg: Config, artifact_file: str = CONFIG_ARTIFACT) -> dict[str, tuple[str, str]]:
        """Every leaf of ``cfg`` as a param (``train.joint.lr``) and the resolved YAML as an
        artifact. MLflow params are immutable: a key already on the run with another value
        is kept and reported (returned as ``{key: (logged, new)}``), never overwritten."""
        params = flatten_params(cfg.to_dict())
        existing = _get_run(self.client, self.run_id, self.tracking_uri).data.params
        changed = {k: (existing[k], v) for k, v in params.items() if k in existing and existing[k] != v}
        if changed:
            log.warning("run %s already has %d param(s) with other values, kept as logged: %s",
                        self.run_id, len(changed), ", ".join(sorted(changed)[:5]))
        todo = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(todo), PARAMS_PER_BATCH):
            _call(self.client.log_batch, self.tracking_uri, self.run_id, params=todo[i:i + PARAMS_PER_BATCH])
        _call(self.client.log_text, self.tracking_uri, self.run_id,
              yaml.safe_dump(cfg.to_dict(), sort_keys=False), artifact_file)
        return changed

    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None, prefix: str = "") -> dict[str, float]:
        """Log numbers; nested mappings flatten with ``/`` (``sasan/mean/dice``), names are
        sanitised to what MLflow accepts. Returns what was logged."""
        flat = {metric_name(f"{prefix}/{k}" if prefix else k): v for k, v in flatten_metrics(metrics).items()}
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, step or 0) for k, v in flat.items()]
        for i in range(0, len(entries), METRICS_PER_BATCH):
            _call(self.client.log_batch, self.tracking_uri, self.run_id, metrics=entries[i:i + METRICS_PER_BATCH])
        return flat

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        """A file, or a folder's contents, under ``artifact_path``."""
        path = Path(path)
        if path.is_dir():
            _call(self.client.log_artifacts, self.tracking_uri, self.run_id, str(path), artifact_path)
        elif path.is_file():
            _call(self.client.log_artifact, self.tracking_uri, self.run_id, str(path), artifact_path)
        else:
            raise TrackingError("artifact to log does not exist", path)

    def log_image(self, png_path: str | Path, artifact_path: str = "images") -> None:
        """A PNG/JPEG file; the run page previews it under Artifacts."""
        png_path = Path(png_path)
        if png_path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise TrackingError("images are logged as .png or .jpg files", png_path)
        self.log_artifact(png_path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        _call(self.client.log_text, self.tracking_uri, self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [RunTag(_key(k), _clip(str(v), MAX_TAG_VALUE)) for k, v in tags.items()]
        for i in range(0, len(entries), PARAMS_PER_BATCH):
            _call(self.client.log_batch, self.tracking_uri, self.run_id, tags=entries[i:i + PARAMS_PER_BATCH])

    def end(self, status: str = "FINISHED") -> None:
        if status not in _STATUS_NAMES:
            raise TrackingError(f"unknown run status {status!r}; one of {sorted(_STATUS_NAMES)}")
        _call(self.client.set_terminated, self.tracking_uri, self.run_id, status=status)

    def ref(self) -> dict[str, Optional[str]]:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": redact_uri(self.tracking_uri)}

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FAILED" if exc_type is not None else "FINISHED")


class DisabledTracker(Tracker):
    """Same surface, records nothing."""

    enabled = False

    def __init__(self) -> None:
        self.client = None
        self.run_id = None
        self.experiment_id = None
        self.tracking_uri = None

    def log_config(self, cfg: Config, artifact_file: str = CONFIG_ARTIFACT) -> dict[str, tuple[str, str]]:
        return {}

    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None, prefix: str = "") -> dict[str, float]:
        return {}

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        pass

    def log_image(self, png_path: str | Path, artifact_path: str = "images") -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


_STATUS_NAMES = {"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"}


@contextlib.contextmanager
def process_tracking_uri(uri: Optional[str]) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` for the duration of a call that
    only reads the global one (``log_model``; the registry resolving a ``models:/`` source,
    see the TODO in mlflow's SqlAlchemyStore.create_model_version), then restore both the
    global and the ``MLFLOW_TRACKING_URI`` variable ``mlflow.set_tracking_uri`` writes."""
    saved_uri = tracking_utils._tracking_uri
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


# --------------------------------------------------------------------- run reference file
def write_run_ref(path: str | Path, tracker: Tracker) -> dict[str, Optional[str]]:
    """``{"run_id", "experiment_id", "tracking_uri"}`` for the next stages (nulls when
    tracking is disabled; credentials never written)."""
    ref = tracker.ref()
    write_json(path, ref)
    return ref


def read_run_ref(path: str | Path) -> dict[str, Optional[str]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrackingError("run reference not found (written by the stage that starts the run)", path) from None
    except (OSError, json.JSONDecodeError) as err:
        raise TrackingError(f"run reference is not valid JSON: {err}", path) from None
    if not isinstance(data, dict) or not {"run_id", "experiment_id", "tracking_uri"} <= set(data):
        raise TrackingError("run reference must be an object with run_id, experiment_id, tracking_uri", path)
    for key in ("run_id", "experiment_id", "tracking_uri"):
        if data[key] is not None and not isinstance(data[key], str):
            raise TrackingError(f"run reference field {key} must be a string or null", path)
    return {k: data[k] for k in ("run_id", "experiment_id", "tracking_uri")}


# --------------------------------------------------------------------- experiments
def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (as a classic ML experiment, artifacts next
    to a local SQLite store) when missing."""
    uri = client.tracking_uri
    if not name:
        raise TrackingError("an experiment name is required to start a run")
    exp = _call(client.get_experiment_by_name, uri, name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=local_artifact_location(uri, name),
                                            tags={EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND,
                                                  SHARED_VIEW_TAG + RUNS_VIEW_KEY: runs_view_state()})
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":   # lost a creation race: use theirs
                raise TrackingError(f"cannot create experiment {name!r}: {_first_line(err)}", redact_uri(uri)) from None
            exp = _call(client.get_experiment_by_name, uri, name)
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment {name!r} is deleted; restore it (mlflow experiments restore "
                            f"--experiment-id {exp.experiment_id}) or choose another name", redact_uri(uri))
    if EXPERIMENT_KIND_TAG not in exp.tags:
        _call(client.set_experiment_tag, uri, exp.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML_KIND)
    if SHARED_VIEW_TAG + RUNS_VIEW_KEY not in exp.tags:
        set_runs_view(client, exp.experiment_id)
    return exp.experiment_id


def set_runs_view(client: MlflowClient, experiment_id: str, metrics: tuple[str, ...] = VIEW_METRICS,
                  params: tuple[str, ...] = VIEW_PARAMS, order_by: Optional[str] = None,
                  key: str = RUNS_VIEW_KEY) -> None:
    """Save the runs-table view :func:`runs_table_url` opens: these metrics and params as
    columns, sorted by ``order_by`` (default: the first metric), best first."""
    _call(client.set_experiment_tag, client.tracking_uri, experiment_id, SHARED_VIEW_TAG + key,
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


# --------------------------------------------------------------------- names and values
def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"joint": {"lr": 1e-4}}}`` -> ``{"train.joint.lr": "0.0001"}``; lists as
    JSON, values clipped to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else (
                json.dumps(value) if isinstance(value, (list, tuple, Mapping)) else str(value))
            out[_key(name)] = _clip(text, MAX_PARAM_VALUE)
    return out


def flatten_metrics(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) or hasattr(value, "item"):
            out[name] = float(value)
        else:
            raise TrackingError(f"metric {name!r} is not a number: {value!r}")
    return out


def metric_name(name: str) -> str:
    """What MLflow accepts: letters, digits, ``_ - . /`` and spaces; no empty, ``.`` or
    ``..`` path parts (names become file paths in some stores)."""
    parts = [re.sub(r"[^\w.\- ]", "_", p) for p in name.split("/")]
    parts = ["_" * len(p) if p in (".", "..") else p for p in parts if p]
    return _key("/".join(parts) or "_")


def _key(name: str) -> str:
    return name[:MAX_KEY]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _first_line(err: Exception) -> str:
    return (str(getattr(err, "message", err)).strip().splitlines() or [""])[0]


def _call(fn, uri: Optional[str], *args, **kwargs):
    """Run an MLflow client call; its failures become one-line TrackingErrors."""
    try:
        return fn(*args, **kwargs)
    except MlflowException as err:
        raise TrackingError(f"MLflow {fn.__name__} failed: {_first_line(err)}", redact_uri(uri)) from None


def _get_run(client: MlflowClient, run_id: str, uri: Optional[str]):
    run = _call(client.get_run, uri, run_id)
    if run.info.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow run {run_id} is deleted", redact_uri(uri))
    return run

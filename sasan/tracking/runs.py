"""MLflow runs: one parent run per pipeline execution, one child run per variant.

:class:`Tracker` wraps an :class:`mlflow.MlflowClient` bound to an explicit tracking URI
and never uses MLflow's active-run stack. Stages receive a tracker (the parent run, or a
disabled one) and open child runs from it; the run ids travel in small JSON files
(:mod:`sasan.tracking.run_ref`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from sasan.config import Config
from sasan.tracking.client import (
    RUN_STATUSES, TrackingError, default_tracking_uri, get_run, mlflow_call, redact_uri,
)
from sasan.tracking.experiments import ensure_experiment, runs_table_url
from sasan.tracking.names import (
    MAX_PARAM_VALUE, MAX_TAG_VALUE, clip, clip_key, flatten_metrics, flatten_params, metric_name,
)
from sasan.tracking.run_ref import read_run_ref, write_run_ref

__all__ = ["Tracker", "DisabledTracker", "TrackingError", "default_tracking_uri", "redact_uri",
           "read_run_ref", "write_run_ref", "flatten_params", "flatten_metrics", "metric_name",
           "runs_table_url", "MAX_PARAM_VALUE", "CONFIG_ARTIFACT"]

log = logging.getLogger(__name__)

PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
CONFIG_ARTIFACT = "config/params.resolved.yaml"
PARENT_TAG = "mlflow.parentRunId"
DATASET_CONTEXT_TAG = "mlflow.data.context"     # the UI's "context" of a dataset input


class Tracker:
    """One MLflow run. Build with :meth:`start` (new, nested child, or re-opened run) or
    :meth:`disabled` (every method a no-op, for tests and ``--no-tracking``)."""

    enabled = True

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, tracking_uri: str,
                 parent_run_id: Optional[str] = None, run_name: Optional[str] = None):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.run_name = run_name

    # ----------------------------------------------------------------- construction
    @classmethod
    def start(cls, tracking_uri: Optional[str], experiment: str, run_name: str,
              parent_run_id: Optional[str] = None, run_id: Optional[str] = None,
              tags: Optional[Mapping[str, Any]] = None) -> "Tracker":
        """Start a run in ``experiment`` (created if missing), or a child of
        ``parent_run_id`` (in the parent's experiment), or re-open ``run_id`` (status set
        back to RUNNING).

        ``tracking_uri=None`` lets MLflow resolve its own default."""
        client = MlflowClient(tracking_uri=tracking_uri)
        uri = client.tracking_uri
        if run_id is not None:
            run = get_run(client, run_id, uri)
            if run.info.status != "RUNNING":
                mlflow_call(client.update_run, uri, run_id, status="RUNNING")
            tracker = cls(client, run_id, run.info.experiment_id, uri, run.data.tags.get(PARENT_TAG),
                          run.info.run_name)
            if tags:
                tracker.set_tags(tags)
            log.info("re-opened MLflow run %s (%s)", run_id, redact_uri(uri))
            return tracker
        if parent_run_id is not None:
            experiment_id = get_run(client, parent_run_id, uri).info.experiment_id
        else:
            experiment_id = ensure_experiment(client, experiment)
        run_tags = {"mlflow.source.name": "sasan", **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_run_id is not None:
            run_tags[PARENT_TAG] = parent_run_id
        run = mlflow_call(client.create_run, uri, experiment_id, tags=run_tags, run_name=run_name)
        log.info("MLflow run %s (%s) in experiment %s at %s", run.info.run_id, run_name,
                 experiment_id, redact_uri(uri))
        return cls(client, run.info.run_id, experiment_id, uri, parent_run_id, run_name)

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

    def attach(self, ref: Mapping[str, Any]) -> "Tracker":
        """The existing run ``ref`` names, in this tracker's store, status untouched (to log
        into a finished child run); disabled when ``ref`` names none."""
        if not ref.get("run_id"):
            return Tracker.disabled()
        run = get_run(self.client, str(ref["run_id"]), self.tracking_uri)
        return Tracker(self.client, run.info.run_id, run.info.experiment_id, self.tracking_uri,
                       run.data.tags.get(PARENT_TAG), run.info.run_name)

    def child(self, run_name: str, tags: Optional[Mapping[str, Any]] = None) -> "Tracker":
        """A new run nested under this one, named ``run_name`` (a variant)."""
        return Tracker.start(self.tracking_uri, "", run_name, parent_run_id=self.run_id, tags=tags)

    def resume_child(self, ref_path: str | Path, run_name: str,
                     tags: Optional[Mapping[str, Any]] = None) -> "Tracker":
        """The child run named by ``ref_path`` when it is an unfinished child of this run
        (a retried or resumed step continues its own run), else a new child; the file is
        (re)written either way."""
        ref_path = Path(ref_path)
        if ref_path.is_file():
            ref = read_run_ref(ref_path)
            if ref["run_id"] and ref.get("parent_run_id") == self.run_id:
                run = get_run(self.client, ref["run_id"], self.tracking_uri)
                if run.info.status != "FINISHED":
                    log.info("resuming MLflow child run %s (%s, was %s)", ref["run_id"], run_name, run.info.status)
                    tracker = Tracker.start(self.tracking_uri, "", "", run_id=ref["run_id"], tags=tags)
                    write_run_ref(ref_path, tracker)
                    return tracker
        tracker = self.child(run_name, tags)
        write_run_ref(ref_path, tracker)
        return tracker

    # ----------------------------------------------------------------- logging
    def log_config(self, cfg: Config, artifact_file: str = CONFIG_ARTIFACT) -> dict[str, tuple[str, str]]:
        """Every leaf of ``cfg`` as a param (``train.joint.lr``) and the resolved YAML as an
        artifact. MLflow params are immutable: a key already on the run with another value
        is kept and reported (returned as ``{key: (logged, new)}``), never overwritten."""
        params = flatten_params(cfg.to_dict())
        existing = get_run(self.client, self.run_id, self.tracking_uri).data.params
        changed = {k: (existing[k], v) for k, v in params.items() if k in existing and existing[k] != v}
        if changed:
            log.warning("run %s already has %d param(s) with other values, kept as logged: %s",
                        self.run_id, len(changed), ", ".join(sorted(changed)[:5]))
        todo = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(todo), PARAMS_PER_BATCH):
            mlflow_call(self.client.log_batch, self.tracking_uri, self.run_id, params=todo[i:i + PARAMS_PER_BATCH])
        mlflow_call(self.client.log_text, self.tracking_uri, self.run_id,
                    yaml.safe_dump(cfg.to_dict(), sort_keys=False), artifact_file)
        return changed

    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None, prefix: str = "") -> dict[str, float]:
        """Log numbers; nested mappings flatten with ``/`` (``sasan/mean/dice``), names are
        sanitised to what MLflow accepts. Returns what was logged."""
        flat = {metric_name(f"{prefix}/{k}" if prefix else k): v for k, v in flatten_metrics(metrics).items()}
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, step or 0) for k, v in flat.items()]
        for i in range(0, len(entries), METRICS_PER_BATCH):
            mlflow_call(self.client.log_batch, self.tracking_uri, self.run_id, metrics=entries[i:i + METRICS_PER_BATCH])
        return flat

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        """A file, or a folder's contents, under ``artifact_path``."""
        path = Path(path)
        if path.is_dir():
            mlflow_call(self.client.log_artifacts, self.tracking_uri, self.run_id, str(path), artifact_path)
        elif path.is_file():
            mlflow_call(self.client.log_artifact, self.tracking_uri, self.run_id, str(path), artifact_path)
        else:
            raise TrackingError("artifact to log does not exist", path)

    def log_image(self, png_path: str | Path, artifact_path: str = "images") -> None:
        """A PNG/JPEG file; the run page previews it under Artifacts."""
        png_path = Path(png_path)
        if png_path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise TrackingError("images are logged as .png or .jpg files", png_path)
        self.log_artifact(png_path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        mlflow_call(self.client.log_text, self.tracking_uri, self.run_id, text, artifact_file)

    def log_dataset(self, name: str, digest: str, source_type: str, source_uri: str,
                    context: str = "training", profile: Optional[Mapping[str, Any]] = None) -> None:
        """Record a data set as an input of this run (the run page's "Datasets used"):
        ``digest`` identifies its content, ``source_uri`` where it was read from."""
        dataset = Dataset(name=name, digest=digest, source_type=source_type,
                          source=json.dumps({"uri": source_uri}),
                          profile=json.dumps(dict(profile), sort_keys=True) if profile else None)
        mlflow_call(self.client.log_inputs, self.tracking_uri, self.run_id,
                    datasets=[DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, context)])])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [RunTag(clip_key(k), clip(str(v), MAX_TAG_VALUE)) for k, v in tags.items()]
        for i in range(0, len(entries), PARAMS_PER_BATCH):
            mlflow_call(self.client.log_batch, self.tracking_uri, self.run_id, tags=entries[i:i + PARAMS_PER_BATCH])

    def status(self) -> Optional[str]:
        return get_run(self.client, self.run_id, self.tracking_uri).info.status

    def end(self, status: str = "FINISHED") -> None:
        if status not in RUN_STATUSES:
            raise TrackingError(f"unknown run status {status!r}; one of {sorted(RUN_STATUSES)}")
        mlflow_call(self.client.set_terminated, self.tracking_uri, self.run_id, status=status)

    def ref(self) -> dict[str, Optional[str]]:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id,
                "tracking_uri": redact_uri(self.tracking_uri), "parent_run_id": self.parent_run_id,
                "run_name": self.run_name}

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end(exit_status(exc_type))


def exit_status(exc_type: Optional[type]) -> str:
    """The run status for a stage that ended with ``exc_type``: FINISHED, KILLED (Ctrl-C,
    or an exception whose class says ``run_status = "KILLED"``, e.g. a training stopped by
    SIGTERM) or FAILED."""
    if exc_type is None:
        return "FINISHED"
    if issubclass(exc_type, KeyboardInterrupt):
        return "KILLED"
    status = getattr(exc_type, "run_status", "FAILED")
    return status if status in RUN_STATUSES else "FAILED"


class DisabledTracker(Tracker):
    """Same surface, records nothing; its children are disabled too."""

    enabled = False

    def __init__(self) -> None:
        super().__init__(None, None, None, None)

    def attach(self, ref: Mapping[str, Any]) -> "Tracker":
        return self

    def child(self, run_name: str, tags: Optional[Mapping[str, Any]] = None) -> "Tracker":
        return self

    def resume_child(self, ref_path: str | Path, run_name: str,
                     tags: Optional[Mapping[str, Any]] = None) -> "Tracker":
        return self

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

    def log_dataset(self, name: str, digest: str, source_type: str, source_uri: str,
                    context: str = "training", profile: Optional[Mapping[str, Any]] = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def status(self) -> Optional[str]:
        return None

    def end(self, status: str = "FINISHED") -> None:
        pass

"""The MLflow client edge: one-line errors, redacted URIs, the default local store, and
the one place MLflow's process-wide tracking URI is touched (public API only)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sasan.errors import SasanError

RUN_STATUSES = frozenset({"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"})
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


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


def first_line(err: Exception) -> str:
    return (str(getattr(err, "message", err)).strip().splitlines() or [""])[0]


def mlflow_call(fn, uri: Optional[str], *args, **kwargs):
    """Run an MLflow client call; its failures become one-line TrackingErrors."""
    try:
        return fn(*args, **kwargs)
    except MlflowException as err:
        raise TrackingError(f"MLflow {fn.__name__} failed: {first_line(err)}", redact_uri(uri)) from None


def get_run(client: MlflowClient, run_id: str, uri: Optional[str] = None):
    """The run, refused when deleted."""
    run = mlflow_call(client.get_run, uri or client.tracking_uri, run_id)
    if run.info.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow run {run_id} is deleted", redact_uri(uri or client.tracking_uri))
    return run


@contextlib.contextmanager
def process_tracking_uri(uri: Optional[str]) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` for the duration of a call that
    only reads the global one (``log_model``; the registry resolving a ``models:/`` source,
    see the TODO in mlflow's SqlAlchemyStore.create_model_version), then restore what the
    process had. ``mlflow.set_tracking_uri`` mirrors its value into ``MLFLOW_TRACKING_URI``,
    so that variable is the saved state: after the call the global is unset again (None) and
    the variable restored, which resolves to the same URI as before."""
    saved_env = os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)           # unsets the global and the variable
        if saved_env is not None:
            os.environ[TRACKING_URI_ENV] = saved_env

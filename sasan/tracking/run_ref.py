"""The run reference file: how a run id travels between stages and between attempts of one
stage (``{"run_id", "experiment_id", "tracking_uri", "parent_run_id"}``), never through the
environment. Credentials are never written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from sasan.atomic import read_json, write_json
from sasan.tracking.client import TrackingError

REQUIRED = ("run_id", "experiment_id", "tracking_uri")
OPTIONAL = ("parent_run_id", "run_name")


def write_run_ref(path: str | Path, tracker: Any) -> dict[str, Optional[str]]:
    """Write ``tracker.ref()`` (nulls when tracking is disabled) atomically; return it."""
    ref = tracker.ref()
    write_json(path, ref)
    return ref


def read_run_ref(path: str | Path) -> dict[str, Optional[str]]:
    """The reference at ``path``; optional fields default to None."""
    path = Path(path)
    data = read_json(path, missing="run reference not found (written by the stage that starts the run)",
                     invalid="run reference is not valid JSON", error=TrackingError)
    if not isinstance(data, dict) or not set(REQUIRED) <= set(data):
        raise TrackingError("run reference must be an object with run_id, experiment_id, tracking_uri", path)
    for key in REQUIRED + OPTIONAL:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise TrackingError(f"run reference field {key} must be a string or null", path)
    return {k: data.get(k) for k in REQUIRED + OPTIONAL}

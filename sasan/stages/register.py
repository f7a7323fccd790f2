"""Register stage: log the trained bundle as an MLflow pyfunc model on its variant's child
run, register it as a new version and move the ``champion`` alias only past the gate
(:mod:`sasan.tracking.registry`), which compares like with like (the evaluation identity)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from sasan.config import Config
from sasan.errors import CheckpointError, DataError
from sasan.tracking.client import TrackingError
from sasan.tracking.pyfunc_model import log_bundle_model
from sasan.tracking.registry import DEFAULT_METHOD, load_evaluation, register_and_gate, target_mean_dice
from sasan.tracking.run_ref import read_run_ref

if TYPE_CHECKING:
    from sasan.tracking.runs import Tracker

RUN_REF = "mlflow_run.json"       # the variant's child run, next to its bundle
IDENTITY_FILE = "identity.json"   # in the evaluate stage's report folder


@dataclass(frozen=True)
class RegisterInputs:
    bundle: Path                    # <models>/<variant>/model.pt
    metrics: Path                   # the evaluate stage's metrics JSON
    identity: Optional[Path] = None  # the evaluate stage's identity.json (None: never promoted)


@dataclass(frozen=True)
class RegisterOutputs:
    report: Path                    # register.json, register.md


def run(inputs: RegisterInputs, outputs: RegisterOutputs, cfg: Config, tracker: "Tracker",
        method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """Returns the report (``promoted``, ``version``, ``reasons``...). ``tracker``: the
    pipeline's parent run (registering needs one)."""
    metrics = check_inputs(inputs, method)
    if not tracker.enabled:
        raise TrackingError("registering needs an MLflow run (the pipeline ran without tracking)")
    identity = _read_identity(inputs.identity)
    ref_path = Path(inputs.bundle).parent / RUN_REF
    model_run = tracker.attach(read_run_ref(ref_path)) if ref_path.is_file() else tracker
    if not model_run.enabled:
        model_run = tracker
    model_uri = log_bundle_model(model_run, inputs.bundle)
    report = register_and_gate(tracker.tracking_uri, model_uri, metrics, cfg.register_, model_run.run_id,
                               outputs.report, method=method, metrics_origin=inputs.metrics, identity=identity,
                               parent_run_id=tracker.run_id)
    tracker.log_artifact(outputs.report, "register")
    return report


def check_inputs(inputs: RegisterInputs, method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """The metrics, checked with the bundle before MLflow is touched (adapters call this
    before they open a run, so a bad input leaves the run as it was)."""
    metrics = load_evaluation(inputs.metrics)
    target_mean_dice(metrics, method, inputs.metrics)
    if not Path(inputs.bundle).is_file():
        raise CheckpointError("model bundle not found (written by `sasan train`)", inputs.bundle)
    return metrics


def _read_identity(path: Optional[Path]) -> Optional[dict[str, Any]]:
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"evaluation identity is not valid JSON: {err}", path) from None
    if not isinstance(data, dict):
        raise DataError("evaluation identity must be a JSON object", path)
    return data

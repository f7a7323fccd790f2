"""Register stage: log the trained bundle as an MLflow pyfunc model on its variant's child
run, register it as a new version and move the ``champion`` alias only past the gate
(:mod:`sasan.tracking.registry`), which compares like with like (the evaluation identity).

Before MLflow is touched, the inputs must belong together: the bundle is of the gated
method's variant, and where the evaluation identity is given, it was written with these
metrics (their sha256) after evaluating this very bundle as that method (its sha256); and
the model is one unsupervised adaptation may serve: ``upper_bound``, the U-Net trained on the
target domain's labels (the reference row of the results table), is never registered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from sasan.atomic import read_json
from sasan.bundle import BUNDLE_FORMAT
from sasan.config import Config
from sasan.errors import CheckpointError, ConfigError, DataError
from sasan.tracking.client import TrackingError
from sasan.tracking.pyfunc_model import log_bundle_model
from sasan.data.manifest import sha256_file as file_sha256
from sasan.tracking.registry import DEFAULT_METHOD, gate_score, load_evaluation, register_and_gate
from sasan.tracking.run_ref import read_run_ref
from sasan.train.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from sasan.tracking.runs import Tracker

RUN_REF = "mlflow_run.json"       # the variant's child run, next to its bundle
IDENTITY_FILE = "identity.json"   # in the evaluate stage's report folder
# variants trained on target labels: references that measure how far adaptation is from
# supervision; serving one would make the system supervised (sasan.train.variants)
TARGET_SUPERVISED = frozenset({"upper_bound"})


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
    metrics, identity = checked_inputs(inputs, method)
    if not tracker.enabled:
        raise TrackingError("registering needs an MLflow run (the pipeline ran without tracking)")
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
    """The metrics, checked with the bundle and the evaluation identity before MLflow is
    touched (adapters call this before they open a run, so a bad input leaves the run as it
    was)."""
    return checked_inputs(inputs, method)[0]


def checked_inputs(inputs: RegisterInputs,
                   method: str = DEFAULT_METHOD) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """(metrics, evaluation identity or None), checked to belong together: the bundle is a
    ``method`` model and, with an identity, the identity was recorded with these metrics
    after evaluating this bundle as ``method``."""
    refuse_target_supervised(method)
    metrics = load_evaluation(inputs.metrics)
    metric, _ = gate_score(metrics, method, inputs.metrics)     # mean Dice, or mean SSIM (paired)
    if not Path(inputs.bundle).is_file():
        raise CheckpointError("model bundle not found (written by `sasan train`)", inputs.bundle)
    variant = bundle_variant(inputs.bundle)
    refuse_target_supervised(variant, inputs.bundle)
    if variant != method:
        raise ConfigError(f"the bundle is a {variant!r} model but the gated method is {method!r}: its "
                          f"{method}.mean.{metric} does not score it (pass the {method} bundle, or --method {variant})",
                          inputs.bundle)
    identity = _read_identity(inputs.identity)
    if identity is not None:
        check_evaluated(identity, inputs, method, metric)
    return metrics, identity


def refuse_target_supervised(variant: str, path: Optional[Path] = None) -> None:
    """A model trained on target labels never becomes a registered (servable) version."""
    if variant in TARGET_SUPERVISED:
        raise ConfigError(f"{variant} is not registered: it is trained on the target domain's labels (a reference "
                          f"row of the results table), which an unsupervised-adaptation model never has; register "
                          f"sasan, or another method trained without target labels", path)


def bundle_variant(path: Path) -> str:
    """The variant a model bundle was trained as (``sasan``, ``cyclegan``...)."""
    state = load_checkpoint(path, "cpu")
    if not isinstance(state, dict) or state.get("format") != BUNDLE_FORMAT or not isinstance(
            state.get("variant"), str):
        raise CheckpointError("not a SASAN model bundle (format tag or variant missing)", path)
    return state["variant"]


def check_evaluated(identity: dict[str, Any], inputs: RegisterInputs, method: str, metric: str = "dice") -> None:
    """The identity was written with these metrics, after evaluating this bundle as ``method``."""
    where = inputs.identity
    recorded = identity.get("metrics_sha256")
    evaluated = identity.get("bundles")
    if not isinstance(recorded, str) or not isinstance(evaluated, dict):
        raise DataError("evaluation identity records no metrics or bundle digests (written by an older "
                        "`sasan evaluate`): evaluate again", where)
    if file_sha256(inputs.metrics) != recorded:
        raise DataError(f"evaluation identity was not recorded with the metrics {inputs.metrics} (their sha256 "
                        f"differs): pass the metrics and the report folder of one `sasan evaluate` run", where)
    entry = evaluated.get(method)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise DataError(f"no {method} bundle was evaluated (evaluated: {sorted(evaluated) or 'none'})", where)
    if entry.get("variant") not in (None, method):
        raise DataError(f"the bundle evaluated as {method} was a {entry['variant']!r} model", where)
    if file_sha256(inputs.bundle) != entry["sha256"]:
        raise DataError(f"the bundle {inputs.bundle} is not the one evaluated as {method} (sha256 "
                        f"{entry['sha256'][:12]}...): its {method}.mean.{metric} does not score it; evaluate it first",
                        where)


def _read_identity(path: Optional[Path]) -> Optional[dict[str, Any]]:
    if path is None or not Path(path).is_file():
        return None
    data = read_json(path, missing="evaluation identity not found", invalid="evaluation identity is not valid JSON")
    if not isinstance(data, dict):
        raise DataError("evaluation identity must be a JSON object", path)
    return data

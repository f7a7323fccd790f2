"""The trained model as an MLflow pyfunc: target-modality slice stacks in, label maps out.

``predict`` takes float32 ``(N, S, H, W)`` stacks in [-1, 1] (S = the bundle's input
channels) and returns int64 ``(N, H, W)`` labels: translate to the source modality with
``G_s(x, A_t(x))`` when the bundle translates, then segment with the U-Net and argmax
(METHOD.md 4.5). The model ships the ``sasan`` package (``code_paths``) and pinned
requirements, so ``mlflow.pyfunc.load_model`` works in any environment that installs them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional

import mlflow
import numpy as np
from mlflow.entities import LoggedModelOutput
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from sasan.tracking.client import TrackingError, mlflow_call, process_tracking_uri
from sasan.tracking.runs import Tracker

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
# What loading the bundle imports (sasan.bundle -> config, models, checkpoint), plus
# cloudpickle, which mlflow.pyfunc imports (an explicit list replaces MLflow's own).
REQUIREMENTS = ("torch", "numpy", "mlflow", "PyYAML", "pydantic", "tqdm", "cloudpickle")


class SasanSegmenterModel(mlflow.pyfunc.PythonModel):
    """Loads the bundle from the model's ``bundle`` artifact; see the module docstring."""

    def load_context(self, context) -> None:
        from sasan.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"], map_location="cpu")

    def predict(self, context, model_input: np.ndarray, params: Optional[dict] = None) -> np.ndarray:
        batch_size = int((params or {}).get("batch_size", DEFAULT_BATCH_SIZE))
        return predict_labels(self.bundle, model_input, batch_size)


def predict_labels(bundle, stacks: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """(N, S, H, W) float32 in [-1, 1] -> (N, H, W) int64 labels, on CPU, in batches: the
    forward pass of ``sasan evaluate`` and ``sasan translate`` (:func:`sasan.bundle.predict_stacks`)."""
    from sasan.bundle import predict_stacks
    from sasan.train.device import resolve_runtime

    stacks = np.asarray(stacks, dtype=np.float32)
    channels = bundle.cfg.model.in_channels
    if stacks.ndim != 4 or stacks.shape[1] != channels:
        raise ValueError(f"expected (N, {channels}, H, W) slice stacks, got shape {stacks.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels, _ = predict_stacks(bundle, stacks, resolve_runtime("cpu"), batch_size)
    return labels.astype(np.int64)


def model_signature(in_channels: int) -> ModelSignature:
    """Tensor signature: any batch size and image size, fixed stack depth."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))]),
        params=ParamSchema([ParamSpec("batch_size", "long", DEFAULT_BATCH_SIZE)]),
    )


def pinned_requirements(constraints: Optional[Path] = None) -> list[str]:
    """``REQUIREMENTS`` pinned from ``requirements/constraints.txt`` (the project's lock),
    falling back to the installed version for a package the file does not pin."""
    pins: dict[str, str] = {}
    if constraints is not None and constraints.is_file():
        for line in constraints.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[_canon(name)] = version.strip()
    reqs = []
    for name in REQUIREMENTS:
        version = pins.get(_canon(name))
        if version is None:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                raise TrackingError(f"cannot pin {name}: not in the constraints file and not installed",
                                    constraints) from None
        reqs.append(f"{name}=={version}")
    return reqs


def default_constraints() -> Path:
    """``requirements/constraints.txt`` of the checkout this package runs from."""
    import sasan

    return Path(sasan.__file__).resolve().parents[1] / "requirements" / "constraints.txt"


def log_bundle_model(tracker: Tracker, bundle_path: str | Path, name: str = "model",
                     example: Optional[np.ndarray] = None,
                     constraints: Optional[Path] = None) -> Optional[str]:
    """Log the bundle as an MLflow model of the tracker's run; returns its URI
    (``models:/<model_id>``), or None when tracking is disabled. ``example`` (stored with
    the model, run once to check the signature) defaults to one blank stack of the
    bundle's training image size."""
    if not tracker.enabled:
        return None
    bundle_path = Path(bundle_path)
    from sasan.bundle import load_bundle    # fail here, not in a server, on a bad bundle

    bundle = load_bundle(bundle_path)
    if example is None:
        size = bundle.cfg.preprocess.image_size
        example = np.full((1, bundle.cfg.model.in_channels, size, size), -1.0, np.float32)
    client = tracker.client
    requirements = pinned_requirements(constraints or default_constraints())
    logged = mlflow_call(client.create_logged_model, tracker.tracking_uri, tracker.experiment_id, name=name,
                   source_run_id=tracker.run_id, model_type="segmentation",
                   tags={"sasan.variant": bundle.variant})
    with tempfile.TemporaryDirectory(prefix="sasan-code-") as tmp, process_tracking_uri(tracker.tracking_uri):
        code = _package_copy(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name=name, model_id=logged.model_id, python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"bundle": str(bundle_path)}, code_paths=[str(code)],
            signature=model_signature(bundle.cfg.model.in_channels),
            input_example=np.asarray(example, np.float32),
            pip_requirements=requirements,
        )
    # log_model links a model to the *active* run only; this run is not made active
    mlflow_call(client.log_outputs, tracker.tracking_uri, tracker.run_id,
          [LoggedModelOutput(model_id=logged.model_id, step=0)])
    log.info("logged model %s (%s) to run %s", info.model_uri, bundle.variant, tracker.run_id)
    return info.model_uri


def _package_copy(into: Path) -> Path:
    """A clean copy of the ``sasan`` package (no caches) for ``code_paths``."""
    import sasan

    dest = into / "sasan"
    shutil.copytree(Path(sasan.__file__).resolve().parent, dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _canon(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")

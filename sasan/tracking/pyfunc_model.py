"""The trained model as an MLflow pyfunc: target-modality slice stacks in, label maps out
(or, for a paired-mode bundle, which translates only, the translation).

``predict`` takes float32 ``(N, S, H, W)`` stacks in [-1, 1] (S = the bundle's input
channels; H and W multiples of 16, at least 32 for a bundle with an attention module; the
stacks ``sasan preprocess`` writes, of the training ``image_size``) and returns int64
``(N, H, W)`` labels: translate to the source modality with ``G_s(x, A_t(x))`` when the
bundle translates, then segment with the U-Net and argmax (METHOD.md 4.5), in fp32 on CPU.
A bundle without a U-Net (``experiment.mode: paired``) returns the centre slice of each
stack's translation instead: float32 ``(N, H, W)`` in [-1, 1], source-modality intensities
as preprocessing normalises them. Input that breaks these rules (NaN or inf, values outside
[-1, 1], a size the networks cannot take) is refused with one line before the networks run.
The model's metadata (``sasan``) records what to send and what comes back (``output``:
``labels`` or ``translation``): image size, domain, intensity bounds. The model ships the
``sasan`` package (``code_paths``) and pinned requirements, so ``mlflow.pyfunc.load_model``
works in any environment that installs them.
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
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from sasan.tracking.client import TrackingError, mlflow_call, process_tracking_uri
from sasan.tracking.runs import Tracker

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
SIZE_MULTIPLE = 16        # the U-Net and A_t halve the image four times
ATTENTION_MIN_SIZE = 32   # A_t's 5x5 block at 1/8 resolution needs more than 2 pixels
RANGE_TOLERANCE = 1e-3    # preprocessed stacks lie in [-1, 1]; float16 shards round within this
# What loading the bundle imports (sasan.bundle -> config, models, checkpoint), plus
# cloudpickle, which mlflow.pyfunc imports (an explicit list replaces MLflow's own).
REQUIREMENTS = ("torch", "numpy", "mlflow", "PyYAML", "pydantic", "tqdm", "cloudpickle")


class StackError(ValueError):
    """The input stacks break the rules of :func:`check_stacks` (the client's fault)."""


class SasanSegmenterModel(mlflow.pyfunc.PythonModel):
    """Loads the bundle from the model's ``bundle`` artifact; see the module docstring (the
    name predates translate-only bundles, which it serves too: ``pyfunc_entry.py`` names it)."""

    def load_context(self, context) -> None:
        from sasan.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts["bundle"], map_location="cpu")

    def predict(self, context, model_input: np.ndarray, params: Optional[dict] = None) -> np.ndarray:
        batch_size = int((params or {}).get("batch_size", DEFAULT_BATCH_SIZE))
        try:
            return predict_output(self.bundle, model_input, batch_size)
        except StackError as err:   # the client's input: a 400 from a server, not a 500
            raise MlflowException.invalid_parameter_value(str(err)) from None


def predict_output(bundle, stacks: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """What the served model returns for ``stacks`` (:meth:`SasanSegmenterModel.predict`):
    the input checked (:func:`check_stacks`, a one-line :class:`StackError`), then, on CPU in
    fp32 and in batches, :func:`sasan.bundle.predict_stacks` (the forward pass ``sasan
    evaluate`` and ``sasan translate`` run on their configured device and precision): int64 labels (N, H, W), or, for a bundle that
    translates only, the translation's centre slices (N, H, W) float32 in [-1, 1]."""
    return _forward(bundle, check_stacks(bundle, stacks, batch_size), batch_size)


def predict_labels(bundle, stacks: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """:func:`predict_output` of a bundle that segments: (N, S, H, W) float32 in [-1, 1] ->
    (N, H, W) int64 labels. A bundle that does not segment (paired mode: it returns a
    translation) is a ValueError, before the input is looked at."""
    if not bundle.segments:
        raise ValueError(f"the {bundle.variant} bundle does not segment (a paired-mode model translates only)")
    return predict_output(bundle, stacks, batch_size)


def output_kind(bundle) -> str:
    """``labels`` (the bundle segments) or ``translation`` (it translates only)."""
    return "labels" if bundle.segments else "translation"


def check_stacks(bundle, stacks: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """``stacks`` as float32, or a one-line :class:`StackError` (a ValueError) saying what is
    wrong with it: shape, size (multiples of 16; at least 32 with attention), NaN/inf, values
    outside [-1, 1], a batch size below 1. Logs a warning when H, W differ from the training
    image size (the outputs, labels or translations, are still computed, at a scale the
    networks were not trained on)."""
    try:
        stacks = np.asarray(stacks, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise StackError(f"expected a float32 array of slice stacks: {err}") from None
    channels = bundle.cfg.model.in_channels
    if stacks.ndim != 4 or stacks.shape[1] != channels:
        raise StackError(f"expected (N, {channels}, H, W) slice stacks, got shape {stacks.shape}")
    if batch_size < 1:
        raise StackError(f"batch_size must be >= 1, got {batch_size}")
    h, w = stacks.shape[2:]
    min_size = ATTENTION_MIN_SIZE if bundle.att_t is not None else SIZE_MULTIPLE
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or min(h, w) < min_size:
        raise StackError(f"image size {h}x{w}: H and W must be multiples of {SIZE_MULTIPLE}, at least {min_size} "
                         f"(the model was trained at {bundle.cfg.preprocess.image_size}x{bundle.cfg.preprocess.image_size})")
    if stacks.size:
        finite = np.isfinite(stacks)
        if not finite.all():
            raise StackError(f"{stacks.size - int(np.count_nonzero(finite))} non-finite values (NaN or inf); "
                             "expected values in [-1, 1]")
        lo, hi = float(stacks.min()), float(stacks.max())
        if lo < -1.0 - RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            raise StackError(f"values span [{lo:.6g}, {hi:.6g}]; expected [-1, 1], normalised as "
                             "`sasan preprocess` does (see the model's metadata: bounds)")
    size = bundle.cfg.preprocess.image_size
    if (h, w) != (size, size):
        log.warning("image size %dx%d differs from the training image size %dx%d: %s at a scale the "
                    "model was not trained on", h, w, size, size, "labels" if bundle.segments else "outputs")
    return stacks


def _forward(bundle, stacks: np.ndarray, batch_size: int) -> np.ndarray:
    from sasan.bundle import predict_stacks
    from sasan.train.device import resolve_runtime

    labels, translated = predict_stacks(bundle, stacks, resolve_runtime("cpu"), batch_size)
    if labels is None:                  # translate-only bundle: the translation is the output
        return np.asarray(translated, dtype=np.float32)
    return labels.astype(np.int64)


def model_metadata(bundle, modality: Optional[str] = None) -> dict:
    """What a client must send and gets back, stored in the logged model's metadata
    (``sasan``): the image size and stack depth, the target domain (and modality when known),
    the intensity bounds preprocessing maps to [-1, 1] (by modality, then by domain), and the
    ``output``: ``labels`` or ``translation`` (a bundle that translates only)."""
    cfg = bundle.cfg
    prep = cfg.preprocess
    domain = cfg.experiment.target
    table = {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(prep.bounds.items())}
    keys = [k for k in ((modality or "").lower(), domain.lower()) if k in table]
    return {"sasan": {
        "variant": bundle.variant,
        "input": "float32 (N, S, H, W) target-modality slice stacks in [-1, 1], as `sasan preprocess` writes them",
        "output": output_kind(bundle),
        "output_format": ("int64 (N, H, W) label maps" if bundle.segments else
                          "float32 (N, H, W) source-modality translation of each stack's centre slice, in [-1, 1]"),
        "domain": domain,
        "source_domain": cfg.experiment.source,
        "modality": modality,
        "image_size": int(prep.image_size),
        "in_channels": int(cfg.model.in_channels),
        "size_multiple": SIZE_MULTIPLE,
        "min_size": ATTENTION_MIN_SIZE if bundle.att_t is not None else SIZE_MULTIPLE,
        "value_range": [-1.0, 1.0],
        "bounds": table[keys[0]] if keys else None,
        "bounds_key": keys[0] if keys else None,
        "bounds_table": table,
        "clip_percentiles": [float(p) for p in prep.clip_percentiles],
        "axis": int(prep.axis),
        "precision": "float32 on CPU",
    }}


def model_signature(in_channels: int, output: str = "labels") -> ModelSignature:
    """Tensor signature: any batch size, fixed stack depth. H and W are -1 because a tensor
    spec cannot say "multiple of 16": :func:`check_stacks` enforces that, and the model's
    metadata and input example give the training image size. ``output``: ``labels`` (int64)
    or ``translation`` (float32)."""
    out_dtype = {"labels": np.int64, "translation": np.float32}[output]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(out_dtype), (-1, -1, -1))]),
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
                     constraints: Optional[Path] = None, modality: Optional[str] = None) -> Optional[str]:
    """Log the bundle as an MLflow model of the tracker's run; returns its URI
    (``models:/<model_id>``), or None when tracking is disabled. ``example`` (stored with
    the model, run once to check the signature) defaults to one blank stack of the
    bundle's training image size. ``modality`` (the target domain's, when the caller knows
    it) goes into the metadata with the bounds it selects (:func:`model_metadata`)."""
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
                   source_run_id=tracker.run_id, model_type="segmentation" if bundle.segments else "translation",
                   tags={"sasan.variant": bundle.variant})
    with tempfile.TemporaryDirectory(prefix="sasan-code-") as tmp, process_tracking_uri(tracker.tracking_uri):
        code = _package_copy(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name=name, model_id=logged.model_id, python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"bundle": str(bundle_path)}, code_paths=[str(code)],
            signature=model_signature(bundle.cfg.model.in_channels, output_kind(bundle)),
            input_example=np.asarray(example, np.float32),
            pip_requirements=requirements,
            metadata=model_metadata(bundle, modality),
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

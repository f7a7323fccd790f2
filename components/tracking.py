"""Tracking components: the pipeline's MLflow parent run, and registration behind the gate.

Component bodies run inside the project image (see :mod:`components.data`). The MLflow
server and credentials come from the environment (ConfigMap and Secrets, set on the task by
the pipeline), never from parameters."""

from kfp.dsl import Artifact, Input, Markdown, Model, Output


def start_run(config: Input[Artifact], pipeline_job: str, run: Output[Artifact]) -> str:
    """Start the one MLflow parent run of this pipeline run. ``run``: its reference
    ``{run_id, experiment_id, tracking_uri}`` (the format of ``sasan train``'s
    mlflow_run.json), which every later step receives; returns the id for the UI. Tracking
    is off (nulls, "") when ``MLFLOW_TRACKING_URI`` is unset."""
    import os

    from sasan.config import load_config
    from sasan.stages.pipeline_run import start_pipeline_run
    from sasan.tracking.lineage import RunContext
    from sasan.tracking.runs import Tracker, write_run_ref

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        context = RunContext.from_environ(os.environ, "kubeflow", kfp_run_id=pipeline_job)
        tracker = start_pipeline_run(uri, load_config(config.path), context)
    else:
        tracker = Tracker.disabled()
    ref = write_run_ref(run.path, tracker)
    run.metadata.update({k: v or "" for k, v in ref.items() if k in ("run_id", "experiment_id")})
    return ref["run_id"] or ""


def register(config: Input[Artifact], sasan_model: Input[Model], evaluation: Input[Artifact], run: Input[Artifact],
             decision: Output[Markdown]) -> bool:
    """The register stage: log the SASAN bundle on its child run, register a version, move
    the ``champion`` alias only past the gate (same evaluation identity, under the gate lock).
    The parent run is ended by the pipeline's exit handler. Returns whether it was promoted."""
    import os
    import tempfile
    from pathlib import Path

    from sasan.config import load_config
    from sasan.stages import register as stage
    from sasan.tracking.runs import Tracker, read_run_ref

    parent = Tracker.reopen(read_run_ref(run.path), os.environ.get("MLFLOW_TRACKING_URI"))
    inputs = stage.RegisterInputs(Path(sasan_model.path) / sasan_model.metadata["bundle"],
                                  Path(evaluation.path) / "evaluation.json",
                                  Path(evaluation.path) / "report" / stage.IDENTITY_FILE)
    with tempfile.TemporaryDirectory(prefix="sasan-register-") as scratch:
        result = stage.run(inputs, stage.RegisterOutputs(Path(scratch)), load_config(config.path), parent)
        Path(decision.path).write_text((Path(scratch) / "register.md").read_text())
    decision.metadata.update({"model": result["model_name"], "version": result["version"],
                              "promoted": result["promoted"]})
    return bool(result["promoted"])

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
    from sasan.tracking.runs import Tracker, write_run_ref

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        cfg = load_config(config.path)
        tracker = Tracker.start(uri, cfg.experiment.name, f"pipeline {cfg.experiment.source}->{cfg.experiment.target}",
                                tags={"kfp.pipeline_job": pipeline_job, "orchestrator": "kubeflow"})
        tracker.log_config(cfg)
    else:
        tracker = Tracker.disabled()
    ref = write_run_ref(run.path, tracker)
    run.metadata.update({k: v or "" for k, v in ref.items() if k != "tracking_uri"})
    return ref["run_id"] or ""


def register(config: Input[Artifact], sasan_model: Input[Model], evaluation: Input[Artifact], run: Input[Artifact],
             decision: Output[Markdown]) -> bool:
    """``sasan register``: log the SASAN bundle on the parent run, register a version, move the
    ``champion`` alias only past the gate; end the parent run. Returns whether it was promoted."""
    import json
    import tempfile
    from pathlib import Path

    from sasan.cli import main

    with tempfile.TemporaryDirectory(prefix="sasan-register-") as scratch:
        report = Path(scratch) / "report"
        code = main(["register", "--bundle", str(Path(sasan_model.path) / sasan_model.metadata["bundle"]),
                     "--metrics", str(Path(evaluation.path) / "evaluation.json"), "--run-ref", run.path,
                     "--params", config.path, "--report", str(report)])
        if code != 0:
            raise RuntimeError(f"sasan register exited with {code}")
        result = json.loads((report / "register.json").read_text())
        Path(decision.path).write_text((report / "register.md").read_text())
    decision.metadata.update({"model": result["model_name"], "version": result["version"],
                              "promoted": result["promoted"]})
    return bool(result["promoted"])

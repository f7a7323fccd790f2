"""Model components: train (one variant per task; torchrun when several GPUs) and evaluate.

Component bodies run inside the project image (see :mod:`components.data`)."""

from typing import List

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def train(config: Input[Artifact], shards: Input[Dataset], run: Input[Artifact], variant: str, gpus: int,
          accelerator_type: str, cpu: str, memory: str, checkpoint_root: str, run_key: str,
          model: Output[Model]):
    """The train stage for one variant into the model artifact (``<variant>/model.pt``, its
    config, logs, samples, ``mlflow_run.json``), as an MLflow child run named by the variant
    under the pipeline's run (``run``: its reference from start_run). ``gpus`` > 1: one
    process per GPU under torchrun (NCCL). ``checkpoint_root`` (``s3://...``): checkpoints and
    the child run's reference are kept at ``checkpoint_root/run_key/variant`` so a retried
    (preempted) pod resumes both; ``run_key`` is the KFP run id.
    ``accelerator_type``/``cpu``/``memory`` are the task's resource request, recorded in the
    model's metadata (being inputs also makes KFP pass them into a ParallelFor body, where the
    resource settings read them)."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.config import load_config
    from sasan.stages import train as stage
    from sasan.tracking.lineage import RunContext
    from sasan.tracking.runs import Tracker, read_run_ref

    ref = read_run_ref(run.path)
    checkpoint_uri = storage.join_uri(checkpoint_root, run_key, variant) if checkpoint_root else ""
    with tempfile.TemporaryDirectory(prefix="sasan-train-") as scratch:
        shards_dir = storage.localize(shards.path, Path(scratch) / "shards")
        if gpus > 1:   # one process per GPU: the one place a component builds a command line
            argv = ["train", str(shards_dir), model.path, "--params", config.path, "--variants", variant, "--no-progress",
                    *(["--parent-run-id", ref["run_id"]] if ref["run_id"] else ["--no-tracking"]),
                    *(["--checkpoint-uri", checkpoint_uri] if checkpoint_uri else [])]
            env = {**os.environ, "SASAN_ORCHESTRATOR": "kubeflow", "SASAN_KFP_RUN_ID": run_key}
            proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     f"--nproc_per_node={gpus}", "-m", "sasan", *argv], env=env)
            signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))   # pod eviction
            if proc.wait() != 0:
                raise RuntimeError(f"sasan train exited with {proc.returncode}")
        else:
            context = RunContext.from_environ(os.environ, "kubeflow", kfp_run_id=run_key)
            parent = Tracker.reopen(ref, os.environ.get("MLFLOW_TRACKING_URI"))
            hook = stage.object_store_checkpoints(checkpoint_uri, Path(model.path)) if checkpoint_uri else None
            stage.run(stage.TrainInputs(shards_dir), stage.TrainOutputs(Path(model.path)), load_config(config.path),
                      parent, [variant], context, progress=False, on_checkpoint=hook)
    model.metadata.update({"variant": variant, "bundle": f"{variant}/model.pt", "gpus": gpus,
                           "accelerator_type": accelerator_type if gpus else "", "cpu": cpu, "memory": memory})


def evaluate(config: Input[Artifact], raw: Input[Dataset], sasan_model: Input[Model],
             baseline_models: Input[List[Model]], run: Input[Artifact], metrics: Output[Metrics],
             evaluation: Output[Artifact], table: Output[Markdown]):
    """3-D Dice / ASSD per structure of every trained variant on the target test volumes
    (paired mode: MAE, RMSE, PSNR, SSIM, Pearson of the translations, ``<method>.<score>.mean``).
    ``metrics``: ``<method>.dice.<structure>`` and means (the Kubeflow metrics view);
    ``evaluation``: the metrics JSON and the report folder; ``table``: Markdown with the
    results table and the report's images embedded as data URIs. The stage logs the numbers
    and pictures to the pipeline's MLflow run (``run``) and each variant's child run."""
    import math
    import os
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.config import load_config
    from sasan.stages import evaluate as stage
    from sasan.tracking.runs import Tracker, read_run_ref

    cfg = load_config(config.path)
    bundles = {m.metadata["variant"]: Path(m.path) / m.metadata["bundle"] for m in [sasan_model, *baseline_models]}
    order = [m for m in cfg.evaluate.methods if m in bundles] + [m for m in bundles if m not in cfg.evaluate.methods]
    out = Path(evaluation.path)
    parent = Tracker.reopen(read_run_ref(run.path), os.environ.get("MLFLOW_TRACKING_URI"))
    with tempfile.TemporaryDirectory(prefix="sasan-evaluate-") as scratch:
        raw_dir = storage.localize(raw.path, Path(scratch) / "raw")
        results = stage.run(stage.EvaluateInputs(raw_dir, {m: bundles[m] for m in order}),
                            stage.EvaluateOutputs(out / "evaluation.json", out / "report"), cfg, parent,
                            save_predictions=False, progress=False)
    paired = stage.is_paired_results(results)
    for method, r in results.items():
        if paired:       # translation scored by image metrics (experiment.mode: paired)
            for key, value in r["mean"].items():
                if math.isfinite(value):
                    metrics.log_metric(f"{method}.{key}.mean", round(float(value), 4))
            continue
        for name, s in r["per_structure"].items():
            metrics.log_metric(f"{method}.dice.{name}", round(float(s["dice"]), 4))
        metrics.log_metric(f"{method}.dice.mean", round(float(r["mean"]["dice"]), 4))
        metrics.log_metric(f"{method}.assd_mm.mean", round(float(r["mean"]["assd_mm"]), 3))
    title = (f"{cfg.experiment.target} -> {cfg.experiment.source} translation: mean (sd) over test subjects"
             if paired else f"{cfg.experiment.source} -> {cfg.experiment.target}: target test Dice (ASSD mm)")
    Path(table.path).write_text(stage.markdown_report(results, order, title, out / "report"))

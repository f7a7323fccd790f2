"""Model components: train (one variant per task; torchrun when several GPUs) and evaluate.

Component bodies run inside the project image (see :mod:`components.data`)."""

from typing import List

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def train(config: Input[Artifact], shards: Input[Dataset], run: Input[Artifact], variant: str, gpus: int,
          accelerator_type: str, cpu: str, memory: str, checkpoint_root: str, run_key: str,
          model: Output[Model]):
    """``sasan train`` for one variant into the model artifact (``<variant>/model.pt``, its
    config, logs, samples, ``mlflow_run.json``), as an MLflow run nested under the pipeline's
    run (``run``: its reference from start_run). ``gpus`` > 1: one process per GPU under
    torchrun (NCCL). ``checkpoint_root`` (``s3://...``): checkpoints are kept at
    ``checkpoint_root/run_key/variant`` so a retried (preempted) pod resumes from them.
    ``accelerator_type``/``cpu``/``memory`` are the task's resource request, recorded in the
    model's metadata (being inputs also makes KFP pass them into a ParallelFor body, where the
    resource settings read them)."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.cli import main
    from sasan.tracking.runs import read_run_ref

    parent_run_id = read_run_ref(run.path)["run_id"]
    with tempfile.TemporaryDirectory(prefix="sasan-train-") as scratch:
        shards_dir = storage.localize(shards.path, Path(scratch) / "shards")
        argv = ["train", str(shards_dir), model.path, "--params", config.path, "--variants", variant,
                "--no-progress"]
        argv += ["--parent-run-id", parent_run_id] if parent_run_id else ["--no-tracking"]
        if checkpoint_root:
            argv += ["--checkpoint-uri", storage.join_uri(checkpoint_root, run_key, variant)]
        if gpus > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                   "-m", "sasan", *argv]
            code = subprocess.run(cmd, env=os.environ.copy()).returncode
        else:
            code = main(argv)
    if code != 0:
        raise RuntimeError(f"sasan train exited with {code}")
    model.metadata.update({"variant": variant, "bundle": f"{variant}/model.pt", "gpus": gpus,
                           "accelerator_type": accelerator_type if gpus else "", "cpu": cpu, "memory": memory})


def evaluate(config: Input[Artifact], raw: Input[Dataset], sasan_model: Input[Model],
             baseline_models: Input[List[Model]], run: Input[Artifact], metrics: Output[Metrics],
             evaluation: Output[Artifact], table: Output[Markdown]):
    """3-D Dice / ASSD per structure of every trained variant on the target test volumes.
    ``metrics``: ``<method>.dice.<structure>`` and means (the Kubeflow metrics view);
    ``evaluation``: the metrics JSON and the report folder; ``table``: Markdown with the
    results table and the report's images embedded as data URIs. The numbers and pictures are
    also logged to the pipeline's MLflow run (``run``)."""
    import base64
    import os
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.config import load_config
    from sasan.stages.evaluate import run_evaluate
    from sasan.tracking.runs import Tracker, flatten_metrics, read_run_ref

    cfg = load_config(config.path)
    bundles = {m.metadata["variant"]: Path(m.path) / m.metadata["bundle"] for m in [sasan_model, *baseline_models]}
    order = [m for m in cfg.evaluate.methods if m in bundles] + [m for m in bundles if m not in cfg.evaluate.methods]
    out = Path(evaluation.path)
    with tempfile.TemporaryDirectory(prefix="sasan-evaluate-") as scratch:
        raw_dir = storage.localize(raw.path, Path(scratch) / "raw")
        results = run_evaluate({m: bundles[m] for m in order}, raw_dir, out / "evaluation.json", out / "report",
                               cfg, save_predictions=False, progress=False)
    for method, r in results.items():
        for name, s in r["per_structure"].items():
            metrics.log_metric(f"{method}.dice.{name}", round(float(s["dice"]), 4))
        metrics.log_metric(f"{method}.dice.mean", round(float(r["mean"]["dice"]), 4))
        metrics.log_metric(f"{method}.assd_mm.mean", round(float(r["mean"]["assd_mm"]), 3))

    structures = list(next(iter(results.values()))["per_structure"])
    lines = [f"# {cfg.experiment.source} -> {cfg.experiment.target}: target test Dice (ASSD mm)", "",
             "| method | " + " | ".join(structures) + " | mean |", "|---" * (len(structures) + 2) + "|"]
    for method in order:
        r = results[method]
        cells = [f"{r['per_structure'][n]['dice']:.3f} ({r['per_structure'][n]['assd_mm']:.2f})" for n in structures]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {r['mean']['dice']:.3f} ({r['mean']['assd_mm']:.2f}) |")
    for png in sorted((out / "report").glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        lines += ["", f"## {png.stem.replace('_', ' ')}", "", f"![{png.stem}](data:image/png;base64,{data})"]
    Path(table.path).write_text("\n".join(lines) + "\n")

    parent_run_id = read_run_ref(run.path)["run_id"]
    if parent_run_id:   # the pipeline's MLflow run: numbers and pictures next to the model
        tracker = Tracker.start(os.environ.get("MLFLOW_TRACKING_URI"), "", "", run_id=parent_run_id)
        for method, r in results.items():
            per = {n: {k: v for k, v in s.items() if not k.endswith("_std") and k != "n_missing"}
                   for n, s in r["per_structure"].items()}
            tracker.log_metrics(flatten_metrics({"mean": r["mean"], **per}), prefix=f"{method}/")
        for png in sorted((out / "report").glob("*.png")):
            tracker.log_image(png, artifact_path="images/evaluation")
        tracker.log_artifact(out / "evaluation.json", artifact_path="metrics")

"""The whole Kubeflow pipeline run locally with kfp.local (subprocess runner, this Python
environment instead of the image) on a tiny phantom generated inside the pipeline.

kfp.local runs the component bodies and the artifact passing (including the ParallelFor
fan-out and dsl.Collected); it ignores the Kubernetes platform config (GPUs, node selector,
tolerations, Secrets/ConfigMap as env, PVC, pod labels) and the retry policy: those are
checked on the compiled YAML in test_compile.py. The environment variables the cluster would
inject come from this process (MLFLOW_TRACKING_URI -> a SQLite store in tmp)."""

import builtins
import json
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.pipelines.conftest import tiny_params


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0]


def _local(tmp_path, monkeypatch, raise_on_error: bool = True) -> tuple[str, Path]:
    """kfp.local with a SQLite MLflow store in tmp: (tracking URI, pipeline root)."""
    from kfp import local

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("KFP_API_URL", raising=False)
    monkeypatch.chdir(tmp_path)          # MLflow's local artifact store lands in tmp
    root = tmp_path / "kfp"
    # kfp.local's configuration is a process-wide singleton: restore it afterwards, so later
    # tests that call components outside a pipeline do not run them
    config = local.config.LocalExecutionConfig
    monkeypatch.setattr(config, "instance", config.instance)
    # kfp.local runs sibling tasks (the two trainings) in threads, and each swaps builtins.print
    # for a 4-space-indenting one and puts back what it found: interleaved, the indenting print
    # can stay for the rest of the session (a later test's captured output came back indented)
    monkeypatch.setattr(builtins, "print", builtins.print)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=raise_on_error)
    return tracking, root


@pytest.mark.slow
def test_a_failed_step_leaves_the_parent_run_failed_not_running(tmp_path, monkeypatch):
    from pipelines.sasan_pipeline import build_pipeline

    tracking, root = _local(tmp_path, monkeypatch, raise_on_error=False)
    # validation fails: the phantom has far fewer cases than required
    params = tiny_params(experiment={"name": "kfp-local-fail"}, validate={"min_cases_train": 100})
    build_pipeline("sasan:test")(data_source="phantom", params=yaml.safe_dump(params), gpus=0, data_root="",
                                 baselines=["no_adaptation"])
    assert not list(root.glob("sasan-*/preprocess"))          # nothing ran after the failure
    client = mlflow.MlflowClient(tracking)
    (parent,) = client.search_runs([client.get_experiment_by_name("kfp-local-fail").experiment_id])
    assert parent.info.status == "FAILED" and parent.data.tags["kfp.final_state"] == "FAILED"
    # kfp.local reports the exit handler's group; on a cluster the KFP API names the step
    assert parent.data.tags["sasan.failed_step"]


@pytest.mark.slow
def test_pipeline_runs_end_to_end_with_kfp_local(tmp_path, monkeypatch):
    from pipelines.sasan_pipeline import build_pipeline

    tracking, root = _local(tmp_path, monkeypatch)

    pipeline = build_pipeline("sasan:test")
    params = tiny_params(evaluate={"methods": ["no_adaptation", "sasan", "upper_bound"]},
                         experiment={"name": "kfp-local"})
    pipeline(data_source="phantom", params=yaml.safe_dump(params), overrides={"train.segmenter.max_steps": 3},
             source="mr", target="ct", baselines=["no_adaptation", "upper_bound"], gpus=0, data_root="")

    run_dir = _one(root, "sasan-*")
    # configure: the resolved configuration, overrides applied
    cfg = yaml.safe_load(_one(run_dir, "configure/config").read_text())
    assert cfg["train"]["segmenter"]["max_steps"] == 3 and cfg["preprocess"]["image_size"] == 32
    assert (cfg["experiment"]["source"], cfg["experiment"]["target"]) == ("mr", "ct")
    # ingest / preprocess: data in the artifacts (data_root empty)
    raw = _one(run_dir, "ingest/raw")
    assert (raw / "manifest.json").is_file()
    assert (_one(run_dir, "preprocess/shards") / "mr" / "train" / "images.npy").is_file()
    # validation report (HTML)
    html = _one(run_dir, "validate/report").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "mr" in html
    # one model per training task: SASAN and the two baselines of the ParallelFor
    bundles = sorted(p.relative_to(run_dir).parts[-2] for p in run_dir.glob("**/train*/model/*/model.pt"))
    assert bundles == ["no_adaptation", "sasan", "upper_bound"]
    # evaluation: metrics in range, Markdown table with embedded images
    metrics = json.loads(_one(run_dir, "evaluate/evaluation/evaluation.json").read_text())
    assert set(metrics) == {"sasan", "no_adaptation", "upper_bound"}
    for method in metrics.values():
        for s in method["per_structure"].values():
            assert 0.0 <= s["dice"] <= 1.0 and s["assd_mm"] >= 0.0
    # the Kubeflow Metrics artifact: per-structure Dice of every method, logged with log_metric
    out = json.loads(_one(run_dir, "evaluate/executor_output.json").read_text())
    logged = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    for method in ("sasan", "no_adaptation", "upper_bound"):
        for name in ("MYO", "LA", "LV", "AA", "mean"):
            assert 0.0 <= logged[f"{method}.dice.{name}"] <= 1.0
        assert logged[f"{method}.dice.mean"] == pytest.approx(metrics[method]["mean"]["dice"], abs=1e-4)
    table = _one(run_dir, "evaluate/table").read_text()
    assert "| sasan |" in table and "| no_adaptation |" in table and "data:image/png;base64," in table
    # register: the decision, and the MLflow side: one parent run with a nested training run
    decision = _one(run_dir, "register/decision").read_text()
    assert "sasan" in decision.lower()
    client = mlflow.MlflowClient(tracking)
    exp = client.get_experiment_by_name("kfp-local")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    parent = parents[0]
    # ended by the exit handler's task with the pipeline's final state
    assert parent.info.status == "FINISHED" and parent.data.tags["kfp.final_state"] == "SUCCEEDED"
    assert 0.0 <= parent.data.metrics["sasan/mean/dice"] <= 1.0
    # the model is logged on the SASAN variant's child run and registered from there
    versions = [v for c in children for v in client.search_model_versions(f"run_id='{c.info.run_id}'")]
    assert len(versions) == 1

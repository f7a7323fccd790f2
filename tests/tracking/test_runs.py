"""Tracker against a real local MLflow store: runs, params, metrics, nesting, run refs."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from sasan.config import config_from_dict
from sasan.tracking.experiments import CLASSIC_ML_KIND, EXPERIMENT_KIND_TAG, RUNS_VIEW_KEY, SHARED_VIEW_TAG
from sasan.tracking.runs import (
    MAX_PARAM_VALUE, Tracker, TrackingError, default_tracking_uri, metric_name, read_run_ref, redact_uri,
    runs_table_url, write_run_ref,
)


def test_default_uri_is_the_store_mlflow_ui_opens_from_the_repo_root(tmp_path, monkeypatch, _empty_store):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(_empty_store, tmp_path / "mlflow.db")
    uri = default_tracking_uri(tmp_path)
    with Tracker.start(uri, "exp", "run") as tracker:      # artifacts land under ./mlruns too
        tracker.log_text("x", "notes/x.txt")
    # `mlflow ui` / `mlflow server` without --backend-store-uri use this (mlflow/cli): it
    # must still pick the SQLite file, i.e. ./mlruns must not look like a file store now.
    ui_default = mlflow.get_tracking_uri()   # nothing set: MLflow's own default
    assert ui_default.startswith("sqlite:///")
    assert Path(ui_default[len("sqlite:///"):]).resolve() == Path(uri[len("sqlite:///"):])
    assert (tmp_path / "mlruns" / "exp").is_dir()


def test_new_experiment_is_a_classic_ml_experiment_with_local_artifacts(tracking_uri):
    tracker = Tracker.start(tracking_uri, "sasan-demo", "run-1")
    exp = MlflowClient(tracking_uri).get_experiment(tracker.experiment_id)
    assert exp.name == "sasan-demo"
    assert exp.tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND
    store_dir = Path(tracking_uri[len("sqlite:///"):]).parent
    assert exp.artifact_location == (store_dir / "mlruns" / "sasan-demo").as_uri()


def test_experiment_carries_a_runs_table_view_with_metric_columns(tracking_uri):
    tracker = Tracker.start(tracking_uri, "exp", "run")
    tags = MlflowClient(tracking_uri).get_experiment(tracker.experiment_id).tags
    view = json.loads(tags[SHARED_VIEW_TAG + RUNS_VIEW_KEY])
    assert view["orderByKey"] == "metrics.`sasan/mean/dice`" and view["orderByAsc"] is False
    assert "metrics.`no_adaptation/mean/dice`" in view["selectedColumns"]
    assert "params.`train.joint.lr`" in view["selectedColumns"]
    url = runs_table_url(tracker.experiment_id, "http://localhost:5000/")
    assert url == (f"http://localhost:5000/#/experiments/{tracker.experiment_id}/runs"
                   f"?workflowType=machine_learning&viewStateShareKey={RUNS_VIEW_KEY}")


def test_existing_experiment_is_reused_and_its_own_kind_kept(tracking_uri):
    client = MlflowClient(tracking_uri)
    untagged = client.create_experiment("plain")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "finetuning"})
    assert Tracker.start(tracking_uri, "plain", "r").experiment_id == untagged
    assert Tracker.start(tracking_uri, "chosen", "r").experiment_id == chosen
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "finetuning"


def test_deleted_experiment_is_a_clear_error(tracking_uri):
    client = MlflowClient(tracking_uri)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(TrackingError, match="gone.*deleted.*restore"):
        Tracker.start(tracking_uri, "gone", "r")


def test_log_config_flattens_every_leaf_and_saves_the_resolved_yaml(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setattr("sasan.tracking.runs.PARAMS_PER_BATCH", 10)     # exercise the batching
    cfg = config_from_dict({"train": {"joint": {"lr": 2e-4, "betas": [0.5, 0.9]}},
                            "experiment": {"name": "x" * 800}})
    tracker = Tracker.start(tracking_uri, "exp", "run")
    tracker.log_config(cfg)
    params = MlflowClient(tracking_uri).get_run(tracker.run_id).data.params
    assert params["train.joint.lr"] == "0.0002"
    assert params["train.joint.betas"] == "[0.5, 0.9]"
    assert params["model.k"] == "8" and params["train.segmenter.fake_source"] == "True"
    assert params["register.model_name"] == "sasan-segmenter"       # YAML keys, not Python names
    assert len(params["experiment.name"]) == MAX_PARAM_VALUE and params["experiment.name"].endswith("...")
    assert len(params) == _leaves(cfg.to_dict()) > 10
    local = MlflowClient(tracking_uri).download_artifacts(tracker.run_id, "config/params.resolved.yaml", str(tmp_path))
    assert config_from_dict(yaml.safe_load(Path(local).read_text())) == cfg


def _leaves(tree):
    return sum(_leaves(v) if isinstance(v, dict) and v else 1 for v in tree.values())


def test_params_are_immutable_a_changed_value_is_reported_not_overwritten(tracking_uri):
    tracker = Tracker.start(tracking_uri, "exp", "run")
    assert tracker.log_config(config_from_dict({"train": {"joint": {"lr": 1e-4}}})) == {}
    assert tracker.log_config(config_from_dict({"train": {"joint": {"lr": 1e-4}}})) == {}   # same: fine
    changed = tracker.log_config(config_from_dict({"train": {"joint": {"lr": 3e-4}}}))
    assert changed == {"train.joint.lr": ("0.0001", "0.0003")}
    assert MlflowClient(tracking_uri).get_run(tracker.run_id).data.params["train.joint.lr"] == "0.0001"


def test_log_metrics_flattens_sanitises_and_keeps_steps(tracking_uri):
    tracker = Tracker.start(tracking_uri, "exp", "run")
    tracker.log_metrics({"loss_g": 2.0}, step=1, prefix="joint")
    tracker.log_metrics({"loss_g": 1.5}, step=2, prefix="joint")
    logged = tracker.log_metrics({"sasan": {"mean": {"dice": 0.8}, "per_structure": {"LV (blood)": {"dice": 0.9}}}})
    assert set(logged) == {"sasan/mean/dice", "sasan/per_structure/LV _blood_/dice"}
    client = MlflowClient(tracking_uri)
    history = client.get_metric_history(tracker.run_id, "joint/loss_g")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    assert client.get_run(tracker.run_id).data.metrics["sasan/per_structure/LV _blood_/dice"] == 0.9
    with pytest.raises(TrackingError, match="not a number"):
        tracker.log_metrics({"note": "high"})


@pytest.mark.parametrize("raw, clean", [("a:b", "a_b"), ("/lead//x/", "lead/x"), ("../up", "__/up"),
                                         ("ok name-1.0", "ok name-1.0"), ("", "_")])
def test_metric_names_become_what_mlflow_accepts(raw, clean):
    assert metric_name(raw) == clean


def test_child_runs_nest_under_the_parent_in_its_experiment(tracking_uri):
    parent = Tracker.start(tracking_uri, "exp", "pipeline")
    child = Tracker.start(tracking_uri, "ignored-for-children", "train", parent_run_id=parent.run_id)
    run = MlflowClient(tracking_uri).get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.info.experiment_id == parent.experiment_id
    assert run.info.run_name == "train"


def test_reopening_a_run_by_id_continues_it(tracking_uri, tmp_path):
    first = Tracker.start(tracking_uri, "exp", "pipeline", tags={"stage": "train"})
    first.log_metrics({"a": 1.0})
    first.end()
    ref = write_run_ref(tmp_path / "run.json", first)
    again = Tracker.reopen(read_run_ref(tmp_path / "run.json"))
    assert again.run_id == first.run_id and ref["tracking_uri"] == tracking_uri
    client = MlflowClient(tracking_uri)
    assert client.get_run(again.run_id).info.status == "RUNNING"
    again.log_metrics({"b": 2.0})
    again.end()
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"a": 1.0, "b": 2.0}
    assert run.data.tags["stage"] == "train"


def test_an_exception_inside_the_run_marks_it_failed(tracking_uri):
    with pytest.raises(RuntimeError):
        with Tracker.start(tracking_uri, "exp", "run") as tracker:
            raise RuntimeError("boom")
    assert MlflowClient(tracking_uri).get_run(tracker.run_id).info.status == "FAILED"


def test_unknown_or_deleted_run_is_a_clear_error(tracking_uri):
    with pytest.raises(TrackingError, match="get_run"):
        Tracker.start(tracking_uri, "exp", "r", run_id="0" * 32)
    tracker = Tracker.start(tracking_uri, "exp", "r")
    MlflowClient(tracking_uri).delete_run(tracker.run_id)
    with pytest.raises(TrackingError, match="deleted"):
        Tracker.start(tracking_uri, "exp", "r", run_id=tracker.run_id)


def test_artifacts_images_and_tags(tracking_uri, tmp_path):
    png = tmp_path / "grid.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "dice.json").write_text("{}")
    tracker = Tracker.start(tracking_uri, "exp", "run")
    tracker.log_image(png)
    tracker.log_artifact(tmp_path / "plots", "plots")
    tracker.set_tags({"data_hash": "abc.dir", "long": "y" * 9000})
    client = MlflowClient(tracking_uri)
    assert [f.path for f in client.list_artifacts(tracker.run_id, "images")] == ["images/grid.png"]
    assert [f.path for f in client.list_artifacts(tracker.run_id, "plots")] == ["plots/dice.json"]
    tags = client.get_run(tracker.run_id).data.tags
    assert tags["data_hash"] == "abc.dir" and len(tags["long"]) < 9000
    with pytest.raises(TrackingError, match="does not exist"):
        tracker.log_artifact(tmp_path / "missing.txt")
    with pytest.raises(TrackingError, match=".png"):
        tracker.log_image(tmp_path / "plots" / "dice.json")


def test_disabled_tracker_records_nothing_and_writes_a_null_ref(tmp_path):
    tracker = Tracker.disabled()
    tracker.log_config(config_from_dict({}))
    assert tracker.log_metrics({"a": 1.0}) == {}
    tracker.log_artifact(tmp_path / "does-not-matter")
    tracker.set_tags({"a": "b"})
    tracker.end()
    write_run_ref(tmp_path / "run.json", tracker)
    ref = read_run_ref(tmp_path / "run.json")
    assert ref == {"run_id": None, "experiment_id": None, "tracking_uri": None, "parent_run_id": None, "run_name": None}
    assert Tracker.reopen(ref).enabled is False
    assert list(tmp_path.iterdir()) == [tmp_path / "run.json"]


def test_run_refs_never_hold_credentials_and_bad_ones_fail_with_their_path(tmp_path):
    assert redact_uri("https://alice:s3cret@mlflow.example.org:5000/x") == "https://mlflow.example.org:5000/x"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    bad = tmp_path / "run.json"
    bad.write_text("{not json")
    with pytest.raises(TrackingError, match="run.json: run reference is not valid JSON"):
        read_run_ref(bad)
    bad.write_text(json.dumps({"run_id": "abc"}))
    with pytest.raises(TrackingError, match="must be an object with run_id"):
        read_run_ref(bad)
    with pytest.raises(TrackingError, match="not found"):
        read_run_ref(tmp_path / "absent.json")

"""The exit task (components.lifecycle.finish_run) called as a plain function: it finds the
pipeline's MLflow parent run by the Kubeflow job id and ends it with the pipeline's outcome,
naming the failed step (from a stand-in Kubeflow Pipelines API)."""

from types import SimpleNamespace

import pytest
from kfp import dsl
from mlflow import MlflowClient

from components.lifecycle import PIPELINE_JOB_TAGS, finish_run


def _status(state: str, message: str = "") -> dsl.PipelineTaskFinalStatus:
    return dsl.PipelineTaskFinalStatus(state=state, pipeline_job_resource_name="job", pipeline_task_name="exit-handler-1",
                                       error_code=None if state == "SUCCEEDED" else 1, error_message=message or None)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """(client, parent run id, child run id) of job ``job-1`` in a SQLite store."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KFP_API_URL", raising=False)
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    tag = PIPELINE_JOB_TAGS[0]
    parent = client.create_run(exp, tags={tag: "job-1"}, run_name="pipeline")
    child = client.create_run(exp, tags={tag: "job-1", "mlflow.parentRunId": parent.info.run_id})
    other = client.create_run(exp, tags={tag: "job-2"})
    return client, parent.info.run_id, child.info.run_id, other.info.run_id


class FakeKfp:
    def __init__(self, host=None, **_):
        self.host = host

    def get_run(self, run_id):
        assert run_id == "job-1" and self.host == "http://ml-pipeline.kubeflow:8888"
        tasks = [SimpleNamespace(display_name=n, state=s) for n, s in
                 [("configure", "SUCCEEDED"), ("train", "FAILED"), ("exit-handler-1", "FAILED"),
                  ("for-loop-2", "FAILED"), ("evaluate", "SKIPPED")]]
        return SimpleNamespace(run_details=SimpleNamespace(task_details=tasks))


def test_success_finishes_the_parent_run_only(runs):
    client, parent, child, other = runs
    assert finish_run("job-1", _status("SUCCEEDED")) == "FINISHED"
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags["kfp.final_state"] == "SUCCEEDED"
    assert "sasan.failed_step" not in run.data.tags
    assert client.get_run(child).info.status == client.get_run(other).info.status == "RUNNING"


def test_failure_marks_the_run_failed_naming_the_step_from_the_kfp_api(runs, monkeypatch):
    import kfp

    client, parent, _, _ = runs
    monkeypatch.setattr(kfp, "Client", FakeKfp)
    monkeypatch.setenv("KFP_API_URL", "http://ml-pipeline.kubeflow:8888")
    assert finish_run("job-1", _status("FAILED", "exit-handler-1 failed")) == "FAILED"
    tags = client.get_run(parent).data.tags
    assert client.get_run(parent).info.status == "FAILED"
    assert tags["sasan.failed_step"] == "train" and tags["sasan.failure"] == "exit-handler-1 failed"


def test_without_the_api_the_group_status_is_recorded_and_cancel_is_killed(runs, monkeypatch):
    import kfp

    class Down(FakeKfp):
        def get_run(self, run_id):
            raise ConnectionError("connection refused")

    client, parent, _, _ = runs
    monkeypatch.setattr(kfp, "Client", Down)
    monkeypatch.setenv("KFP_API_URL", "http://ml-pipeline.kubeflow:8888")
    assert finish_run("job-1", _status("CANCELLED")) == "KILLED"
    run = client.get_run(parent)
    assert run.info.status == "KILLED" and run.data.tags["sasan.failed_step"] == "exit-handler-1"


def test_no_run_or_no_tracking_is_a_no_op(runs, monkeypatch):
    assert finish_run("job-never-started", _status("FAILED")) == ""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert finish_run("job-1", _status("FAILED")) == ""

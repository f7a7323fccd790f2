"""``sasan register`` end to end: a pipeline run, a real bundle, two registrations."""

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from sasan.bundle import save_bundle
from sasan.cli import build_parser, main
from sasan.tracking.client import process_tracking_uri
from sasan.tracking.runs import Tracker, write_run_ref
from tests.tracking.conftest import tiny_bundle
from tests.tracking.test_registry import IDENTITY, evaluation


def test_help_explains_the_gate_and_the_store(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["register", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--bundle", "--metrics", "--run-ref", "champion", "register.min_dice", "MLFLOW_TRACKING_URI",
                   "mlflow ui"):
        assert needle in text


@pytest.mark.slow
def test_register_promotes_then_keeps_the_champion(tracking_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    save_bundle(tmp_path / "bundle.pt", tiny_bundle("sasan", seed=2))
    (tmp_path / "params.yaml").write_text("register:\n  model_name: heart-seg\n  min_dice: 0.5\n")

    def pipeline(dice):
        tracker = Tracker.start(tracking_uri, "sasan-test", "pipeline")
        write_run_ref(tmp_path / "run.json", tracker)
        tracker.end()
        (tmp_path / "evaluation.json").write_text(json.dumps(evaluation(dice)))
        (tmp_path / "evaluation").mkdir(exist_ok=True)
        (tmp_path / "evaluation" / "identity.json").write_text(json.dumps(IDENTITY))
        code = main(["register", "--bundle", str(tmp_path / "bundle.pt"), "--metrics",
                     str(tmp_path / "evaluation.json"), "--run-ref", str(tmp_path / "run.json"),
                     "--report", str(tmp_path / "report"), "--evaluation-report", str(tmp_path / "evaluation")])
        return code, tracker.run_id, json.loads((tmp_path / "report" / "register.json").read_text())

    code, run_id, report = pipeline(0.7)
    assert code == 0 and report["promoted"] and report["model_name"] == "heart-seg"
    assert "heart-seg v1: target mean Dice 0.7000, promoted to @champion" in capsys.readouterr().out
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id, "register")} == {"register/register.json",
                                                                             "register/register.md"}
    with process_tracking_uri(tracking_uri):               # models:/name@alias resolves globally
        champion = mlflow.pyfunc.load_model("models:/heart-seg@champion")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    assert champion.predict(x).shape == (2, 32, 32)

    code, _, report = pipeline(0.6)
    assert code == 0 and not report["promoted"] and report["version"] == "2"
    assert "not promoted (@champion: v1)" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("heart-seg", "champion").version) == "1"


def test_malformed_metrics_exit_non_zero_with_one_line(tracking_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    (tmp_path / "evaluation.json").write_text(json.dumps({"sasan": {"mean": {}}}))
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x", "experiment_id": "1", "tracking_uri": None}))
    code = main(["register", "--bundle", "missing.pt", "--metrics", str(tmp_path / "evaluation.json"),
                 "--run-ref", str(tmp_path / "run.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1] == f"sasan register: error: {tmp_path / 'evaluation.json'}: no sasan.mean.dice in the " \
                      f"evaluation metrics (methods present: ['sasan'])"
    assert MlflowClient(tracking_uri).search_registered_models() == []


def test_a_run_reference_without_a_run_is_refused(tmp_path, capsys):
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation(0.7)))
    write_run_ref(tmp_path / "run.json", Tracker.disabled())
    save_bundle(tmp_path / "b.pt", tiny_bundle("no_adaptation"))
    code = main(["register", "--bundle", str(tmp_path / "b.pt"), "--metrics", str(tmp_path / "evaluation.json"),
                 "--run-ref", str(tmp_path / "run.json")])
    assert code != 0 and "names no MLflow run" in capsys.readouterr().err


def test_a_missing_bundle_is_one_line_and_leaves_the_run_alone(tracking_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation(0.7)))
    tracker = Tracker.start(tracking_uri, "exp", "pipeline")
    write_run_ref(tmp_path / "run.json", tracker)
    tracker.end()
    code = main(["register", "--bundle", str(tmp_path / "nope.pt"), "--metrics", str(tmp_path / "evaluation.json"),
                 "--run-ref", str(tmp_path / "run.json")])
    assert code != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"sasan register: error: {tmp_path / 'nope.pt'}: model bundle not found (written by `sasan train`)"
    assert MlflowClient(tracking_uri).get_run(tracker.run_id).info.status == "FINISHED"

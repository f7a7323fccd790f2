"""``sasan register`` end to end: a pipeline run, a real bundle, two registrations."""

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from sasan.bundle import save_bundle
from sasan.cli import build_parser, main
from sasan.errors import ConfigError, DataError
from sasan.stages import register as register_stage
from sasan.tracking.client import process_tracking_uri
from sasan.data.manifest import sha256_file as file_sha256
from sasan.tracking.runs import Tracker, write_run_ref
from tests.tracking.conftest import tiny_bundle, tiny_paired_bundle
from tests.tracking.test_registry import IDENTITY, evaluation, paired_evaluation


def evaluated(metrics_path, bundles):
    """identity.json as `sasan evaluate` writes it after scoring ``bundles`` {method: path}
    into ``metrics_path``."""
    return {**IDENTITY, "metrics_sha256": file_sha256(metrics_path),
            "bundles": {m: {"sha256": file_sha256(p), "variant": m} for m, p in bundles.items()}}


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
        (tmp_path / "evaluation" / "identity.json").write_text(
            json.dumps(evaluated(tmp_path / "evaluation.json", {"sasan": tmp_path / "bundle.pt"})))
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
                 "--run-ref", str(tmp_path / "run.json"), "--method", "no_adaptation"])
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


# --- the inputs must belong together: bundle, method, metrics and evaluation identity ----------------------


@pytest.fixture
def evaluation_set(tmp_path):
    """A sasan and a cyclegan bundle, metrics and identity.json of one evaluation of both."""
    bundles = {m: tmp_path / "train" / m / "model.pt" for m in ("sasan", "cyclegan")}
    for method, path in bundles.items():
        path.parent.mkdir(parents=True)
        save_bundle(path, tiny_bundle(method))
    metrics = tmp_path / "evaluation.json"
    metrics.write_text(json.dumps(evaluation(0.7)))
    (tmp_path / "evaluation").mkdir()
    identity = tmp_path / "evaluation" / "identity.json"
    identity.write_text(json.dumps(evaluated(metrics, bundles)))
    return bundles, metrics, identity


def test_inputs_of_one_evaluation_are_accepted(evaluation_set):
    bundles, metrics, identity = evaluation_set
    for method in ("sasan", "cyclegan"):
        inputs = register_stage.RegisterInputs(bundles[method], metrics, identity)
        assert register_stage.checked_inputs(inputs, method) == (evaluation(0.7), json.loads(identity.read_text()))
    # no identity at all: checked as before (registered, never promoted by the gate)
    assert register_stage.checked_inputs(register_stage.RegisterInputs(bundles["sasan"], metrics, None)) == \
        (evaluation(0.7), None)


def _other_metrics(tmp_path, metrics, identity):
    metrics.write_text(json.dumps(evaluation(0.9)))              # another evaluation's numbers


def _other_bundle(tmp_path, metrics, identity):
    save_bundle(tmp_path / "train" / "sasan" / "model.pt", tiny_bundle("sasan", seed=7))   # retrained since


def _old_identity(tmp_path, metrics, identity):
    identity.write_text(json.dumps(IDENTITY))                      # an evaluate from before the digests


def _not_evaluated(tmp_path, metrics, identity):
    data = json.loads(identity.read_text())
    del data["bundles"]["sasan"]
    identity.write_text(json.dumps(data))


@pytest.mark.parametrize("change, error, message", [
    (_other_metrics, DataError, "identity.json: evaluation identity was not recorded with the metrics"),
    (_other_bundle, DataError, "identity.json: the bundle {bundle} is not the one evaluated as sasan"),
    (_old_identity, DataError, "identity.json: evaluation identity records no metrics or bundle digests"),
    (_not_evaluated, DataError, "identity.json: no sasan bundle was evaluated (evaluated: ['cyclegan'])"),
    (None, ConfigError, "{cyclegan}: the bundle is a 'cyclegan' model but the gated method is 'sasan'"),
])
def test_register_refuses_inputs_that_do_not_belong_together(tracking_uri, tmp_path, monkeypatch, capsys,
                                                              evaluation_set, change, error, message):
    """One line naming the file, exit non-zero, nothing registered, the run left alone."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    bundles, metrics, identity = evaluation_set
    bundle = bundles["cyclegan"] if change is None else bundles["sasan"]
    if change is not None:
        change(tmp_path, metrics, identity)
    message = message.format(bundle=bundle, cyclegan=bundles["cyclegan"])
    with pytest.raises(error) as err:
        register_stage.check_inputs(register_stage.RegisterInputs(bundle, metrics, identity))
    assert message in str(err.value)
    tracker = Tracker.start(tracking_uri, "exp", "pipeline")
    write_run_ref(tmp_path / "run.json", tracker)
    tracker.end()
    code = main(["register", "--bundle", str(bundle), "--metrics", str(metrics),
                 "--run-ref", str(tmp_path / "run.json"), "--evaluation-report", str(identity.parent),
                 "--report", str(tmp_path / "report")])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err_lines) == 1 and message in err_lines[0]
    assert MlflowClient(tracking_uri).search_registered_models() == []
    assert MlflowClient(tracking_uri).get_run(tracker.run_id).info.status == "FINISHED"
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_register_gates_a_paired_model_on_ssim(tracking_uri, tmp_path, monkeypatch, capsys):
    """A translate-only bundle with a paired evaluation: logged as a translation model and
    gated on register.min_ssim; a bundle other than the one evaluated names the SSIM."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    bundle = tmp_path / "train" / "sasan" / "model.pt"
    bundle.parent.mkdir(parents=True)
    save_bundle(bundle, tiny_paired_bundle(seed=1))
    (tmp_path / "params.yaml").write_text("register:\n  model_name: mr-synth\n  min_ssim: 0.6\n")
    metrics = tmp_path / "evaluation.json"
    metrics.write_text(json.dumps(paired_evaluation(0.7)))
    (tmp_path / "evaluation").mkdir()
    identity = tmp_path / "evaluation" / "identity.json"
    identity.write_text(json.dumps({**evaluated(metrics, {"sasan": bundle}), "mode": "paired"}))
    assert register_stage.checked_inputs(register_stage.RegisterInputs(bundle, metrics, identity)) == \
        (paired_evaluation(0.7), json.loads(identity.read_text()))
    tracker = Tracker.start(tracking_uri, "sasan-test", "pipeline")
    write_run_ref(tmp_path / "run.json", tracker)
    tracker.end()
    code = main(["register", "--bundle", str(bundle), "--metrics", str(metrics), "--run-ref", str(tmp_path / "run.json"),
                 "--report", str(tmp_path / "report"), "--evaluation-report", str(identity.parent),
                 "--params", str(tmp_path / "params.yaml")])
    assert code == 0
    assert "mr-synth v1: target mean SSIM 0.7000, promoted to @champion" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "register.json").read_text())
    assert report["identity"]["mode"] == "paired" and (report["target_mean_ssim"], report["min_ssim"]) == (0.7, 0.6)
    with process_tracking_uri(tracking_uri):
        model = mlflow.pyfunc.load_model("models:/mr-synth@champion")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    out = model.predict(x)
    assert out.shape == (2, 32, 32) and out.dtype == np.float32
    save_bundle(bundle, tiny_paired_bundle(seed=9))                   # retrained since the evaluation
    with pytest.raises(DataError, match="its sasan.mean.ssim does not score it"):
        register_stage.check_inputs(register_stage.RegisterInputs(bundle, metrics, identity))

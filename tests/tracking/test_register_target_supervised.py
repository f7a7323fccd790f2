"""A model trained on target labels (``upper_bound``, the reference row of the results table)
is never registered: an unsupervised-adaptation system must not serve it, whatever the gate's
threshold. The other baselines, trained without target labels, stay registrable."""

import json

import pytest
from mlflow import MlflowClient

from sasan.bundle import save_bundle
from sasan.cli import main
from sasan.errors import ConfigError
from sasan.stages import register as register_stage
from sasan.tracking.runs import Tracker, write_run_ref
from tests.tracking.conftest import tiny_bundle
from tests.tracking.test_registry import evaluation
from tests.tracking.test_registry_cmds import evaluated


def _one_evaluation(tmp_path, variants):
    """Bundles of ``variants``, and the metrics and identity.json of one evaluation of them."""
    bundles = {}
    for variant in variants:
        bundles[variant] = tmp_path / "train" / variant / "model.pt"
        bundles[variant].parent.mkdir(parents=True)
        save_bundle(bundles[variant], tiny_bundle(variant))
    metrics = tmp_path / "evaluation.json"
    metrics.write_text(json.dumps(evaluation(0.7)))
    (tmp_path / "evaluation").mkdir()
    identity = {**evaluated(metrics, bundles), "image_size": {variant: 32 for variant in variants}}
    (tmp_path / "evaluation" / "identity.json").write_text(json.dumps(identity))
    return bundles, metrics


def _register(tmp_path, tracking_uri, bundle, metrics, *extra):
    tracker = Tracker.start(tracking_uri, "sasan-test", "pipeline")
    write_run_ref(tmp_path / "run.json", tracker)
    tracker.end()
    return main(["register", "--bundle", str(bundle), "--metrics", str(metrics), "--run-ref", str(tmp_path / "run.json"),
                 "--report", str(tmp_path / "report"), "--evaluation-report", str(tmp_path / "evaluation"),
                 "--set", "register.min_dice=0", *extra])


def test_register_refuses_the_upper_bound_even_with_no_threshold(tracking_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    bundles, metrics = _one_evaluation(tmp_path, ["upper_bound"])
    code = _register(tmp_path, tracking_uri, bundles["upper_bound"], metrics, "--method", "upper_bound")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0
    assert len(err) == 1 and err[0].startswith("sasan register: error: upper_bound is not registered: it is "
                                               "trained on the target domain's labels"), err
    assert MlflowClient(tracking_uri).search_registered_models() == []
    assert not (tmp_path / "report" / "register.json").exists()


def test_an_upper_bound_bundle_is_refused_under_another_method_name(tmp_path):
    bundles, metrics = _one_evaluation(tmp_path, ["upper_bound"])
    with pytest.raises(ConfigError) as err:
        register_stage.check_inputs(register_stage.RegisterInputs(bundles["upper_bound"], metrics), "sasan")
    text = str(err.value)
    assert text.startswith(f"{bundles['upper_bound']}: upper_bound is not registered"), text
    assert "--method upper_bound" not in text          # never suggest the refused way


@pytest.mark.parametrize("method", ["sasan", "no_adaptation", "cyclegan"])
def test_methods_trained_without_target_labels_are_accepted(tmp_path, method):
    bundles, metrics = _one_evaluation(tmp_path, [method])
    inputs = register_stage.RegisterInputs(bundles[method], metrics, tmp_path / "evaluation" / "identity.json")
    assert register_stage.check_inputs(inputs, method)[method]["mean"]["dice"] > 0

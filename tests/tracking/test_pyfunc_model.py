"""The bundle as an MLflow pyfunc: logged to a real store, loaded back, predicting what the
bundle itself predicts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

from sasan.bundle import save_bundle
from sasan.tracking.pyfunc_model import log_bundle_model, pinned_requirements, predict_labels, predict_output
from sasan.tracking.client import process_tracking_uri
from sasan.tracking.runs import Tracker
from tests.tracking.conftest import tiny_bundle, tiny_paired_bundle


def _reference_labels(bundle, x: np.ndarray) -> np.ndarray:
    """The METHOD.md 4.5 inference path, spelt out: fake_s = G_s(x, A_t(x)), U-Net, argmax."""
    with torch.no_grad():
        t = torch.from_numpy(x)
        if bundle.syn_s is not None:
            att_t = bundle.att_t(t)[0] if bundle.att_t is not None else None
            t = bundle.syn_s(t, att_t)
        return bundle.segmenter(t).argmax(1).numpy()


def _stacks(n=5, size=32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("variant", ["sasan", "cyclegan", "no_adaptation"])
def test_predict_labels_follows_the_inference_path_in_any_batch_size(variant):
    bundle = tiny_bundle(variant, seed=3)
    x = _stacks()
    labels = predict_labels(bundle, x, batch_size=2)
    assert labels.shape == (5, 32, 32) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, _reference_labels(bundle, x))
    assert predict_labels(bundle, x[:0]).shape == (0, 32, 32)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        predict_labels(bundle, x[:, :1])


@pytest.fixture(scope="module")
def logged(tmp_path_factory, _empty_store):
    """One tiny SASAN bundle logged to a fresh store (logging takes seconds: share it)."""
    root = tmp_path_factory.mktemp("pyfunc")
    shutil.copy(_empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    bundle = tiny_bundle("sasan", seed=1)
    save_bundle(root / "bundle.pt", bundle)
    tracker = Tracker.start(uri, "exp", "pipeline")
    model_uri = log_bundle_model(tracker, root / "bundle.pt", example=_stacks(1))
    tracker.end()
    return {"uri": uri, "model_uri": model_uri, "bundle": bundle, "tracker": tracker, "root": root}


def _load(logged):
    # load_model resolves models:/ URIs through the process-wide tracking URI
    with process_tracking_uri(logged["uri"]):
        return mlflow.pyfunc.load_model(logged["model_uri"])


def test_logged_model_loads_and_predicts_like_the_bundle(logged):
    model = _load(logged)
    x = _stacks(3, size=48, seed=7)                   # another image size than the example
    labels = model.predict(x)
    assert labels.shape == (3, 48, 48) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, _reference_labels(logged["bundle"], x))
    np.testing.assert_array_equal(model.predict(x, params={"batch_size": 1}), labels)


def test_logged_model_has_a_tensor_signature_and_pinned_requirements(logged):
    model = _load(logged)
    sig = model.metadata.signature
    [inp], [out] = sig.inputs.inputs, sig.outputs.inputs
    assert (inp.type, inp.shape) == (np.dtype("float32"), (-1, 3, -1, -1))
    assert (out.type, out.shape) == (np.dtype("int64"), (-1, -1, -1))
    # wrong stack depth is refused by MLflow's schema enforcement, before the model's own check
    # (which would say "(N, 3, H, W)"): a client error naming both shapes
    with pytest.raises(MlflowException, match=r"(?s)Failed to enforce schema.*Shape of input \(1, 2, 32, 32\) "
                                              r"does not match expected shape \(-1, 3, -1, -1\)") as err:
        model.predict(_stacks(1)[:, :2])
    assert err.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    artifacts = Path(MlflowClient(logged["uri"]).get_logged_model(logged["model_uri"].split("/")[-1])
                     .artifact_location.removeprefix("file://"))
    reqs = (artifacts / "requirements.txt").read_text().split()
    assert reqs == pinned_requirements(Path(__file__).resolve().parents[2] / "requirements" / "constraints.txt")
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("mlflow==") for r in reqs)
    assert (artifacts / "code" / "sasan" / "bundle.py").is_file()
    assert not list((artifacts / "code").rglob("__pycache__"))
    assert json.loads((artifacts / "input_example.json").read_text())


def test_model_is_an_output_of_the_run_in_its_experiment(logged):
    client = MlflowClient(logged["uri"])
    model_id = logged["model_uri"].removeprefix("models:/")
    run = client.get_run(logged["tracker"].run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    model = client.get_logged_model(model_id)
    assert model.experiment_id == run.info.experiment_id and model.source_run_id == run.info.run_id
    assert model.status.to_proto() == model.status.READY.to_proto()


def test_logging_leaves_the_process_wide_tracking_uri_alone(logged, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    save_bundle(tmp_path / "b.pt", tiny_bundle("no_adaptation"))
    tracker = Tracker.start(logged["uri"], "exp", "other")
    log_bundle_model(tracker, tmp_path / "b.pt")
    assert mlflow.get_tracking_uri() == before
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_disabled_tracking_logs_no_model(bundle_path):
    assert log_bundle_model(Tracker.disabled(), bundle_path) is None


@pytest.mark.slow
def test_model_loads_where_sasan_is_not_installed(logged, tmp_path):
    """The model ships the sasan package: load it in a process that cannot import the
    installed one (its editable-install finder removed)."""
    x = _stacks(2, seed=11)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path = [p for p in sys.path if p not in ("", {str(Path.cwd())!r}, {str(Path(__file__).resolve().parents[2])!r})]
try:
    import sasan
    raise SystemExit("sasan is still importable: the test proves nothing")
except ImportError:
    pass
import mlflow, numpy as np
mlflow.set_tracking_uri({logged["uri"]!r})
model = mlflow.pyfunc.load_model({logged["model_uri"]!r})
np.save({str(tmp_path / "y.npy")!r}, model.predict(np.load({str(tmp_path / "x.npy")!r})))
print(sys.modules["sasan"].__file__)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "/code/sasan/" in done.stdout                       # the shipped copy was used
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _reference_labels(logged["bundle"], x))


@pytest.mark.parametrize("variant", ["sasan", "no_adaptation"])
@pytest.mark.parametrize("bad, message", [
    ("nan", "non-finite"), ("inf", "non-finite"), ("big", r"\[-1, 1\]"), ("low", r"\[-1, 1\]"),
    ("size40", "multiples of 16"), ("size8", "multiples of 16"), ("rect", "multiples of 16"),
])
def test_bad_input_is_refused_with_one_line_before_the_networks(variant, bad, message):
    bundle = tiny_bundle(variant, seed=3)
    x = {"size40": _stacks(2, size=40), "size8": _stacks(2, size=8)}.get(bad, _stacks(2))
    if bad == "nan":
        x[1, 0, 3, 4] = np.nan
    elif bad == "inf":
        x[0, 2, 0, 0] = np.inf
    elif bad == "big":
        x[:] = 1000.0
    elif bad == "low":
        x[0, 0, 0, 0] = -1.01
    elif bad == "rect":
        x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 24)).astype(np.float32)
    with pytest.raises(ValueError, match=message) as err:
        predict_labels(bundle, x)
    assert "\n" not in str(err.value) and "AttentionModule" not in str(err.value)


def test_attention_bundles_need_32_pixels():
    x = _stacks(1, size=16)
    with pytest.raises(ValueError, match="at least 32"):
        predict_labels(tiny_bundle("sasan"), x)
    assert predict_labels(tiny_bundle("cyclegan"), x).shape == (1, 16, 16)   # no A_t: 16 is enough


def test_valid_input_gives_the_same_labels_as_before(caplog):
    """Checks do not touch the values: within the tolerance (float16 shards) and at the
    training size the labels are the plain forward's; another size works with a warning."""
    bundle = tiny_bundle("sasan", seed=3)
    x = _stacks(3)
    x[0, 0, 0, 0], x[1, 1, 1, 1] = 1.0005, -1.0005
    with caplog.at_level("WARNING", logger="sasan.tracking.pyfunc_model"):
        np.testing.assert_array_equal(predict_labels(bundle, x), _reference_labels(bundle, x))
    assert not caplog.records
    big = _stacks(1, size=64)
    with caplog.at_level("WARNING", logger="sasan.tracking.pyfunc_model"):
        np.testing.assert_array_equal(predict_labels(bundle, big), _reference_labels(bundle, big))
    assert any("64x64" in r.getMessage() and "32x32" in r.getMessage() for r in caplog.records)


def test_logged_model_refuses_bad_input_as_a_client_error(logged):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

    model = _load(logged)
    for x, message in ((np.full((1, 3, 32, 32), np.nan, np.float32), "non-finite"),
                       (np.full((1, 3, 32, 32), 1000, np.float32), r"\[-1, 1\]"),
                       (_stacks(1, size=40), "multiples of 16")):
        with pytest.raises(MlflowException, match=message) as err:
            model.predict(x)
        assert err.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
        assert err.value.get_http_status_code() == 400


def test_logged_model_metadata_says_what_to_send(logged):
    meta = _load(logged).metadata.metadata["sasan"]
    bundle = logged["bundle"]
    assert meta["image_size"] == 32 and meta["in_channels"] == 3
    assert meta["domain"] == bundle.cfg.experiment.target == "ct"
    assert meta["bounds"] == list(bundle.cfg.preprocess.bounds["ct"]) and meta["bounds_key"] == "ct"
    assert meta["bounds_table"]["mr"] == list(bundle.cfg.preprocess.bounds["mr"])
    assert meta["value_range"] == [-1.0, 1.0]
    assert meta["size_multiple"] == 16 and meta["min_size"] == 32
    assert meta["variant"] == "sasan" and meta["output"] == "labels"


def test_metadata_prefers_the_modality_bounds_as_preprocessing_does():
    from sasan.tracking.pyfunc_model import model_metadata

    meta = model_metadata(tiny_bundle("no_adaptation"), modality="MR")["sasan"]
    assert (meta["modality"], meta["bounds_key"], meta["domain"]) == ("MR", "mr", "ct")
    assert meta["min_size"] == 16
    assert model_metadata(tiny_bundle("sasan"), modality="pet")["sasan"]["bounds_key"] == "ct"


# --- a paired-mode bundle translates only: the served model returns the translation ---------------


def _reference_translation(bundle, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        t = torch.from_numpy(x)
        return bundle.syn_s(t, bundle.att_t(t)[0])[:, x.shape[1] // 2].numpy()


def test_a_paired_bundle_predicts_its_translation():
    bundle = tiny_paired_bundle(seed=2)
    x = _stacks(4)
    out = predict_output(bundle, x, batch_size=3)
    assert out.shape == (4, 32, 32) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, _reference_translation(bundle, x), atol=1e-5)
    np.testing.assert_array_equal(predict_output(tiny_bundle("sasan", seed=3), x), _reference_labels(
        tiny_bundle("sasan", seed=3), x))                                      # a segmenting bundle: labels
    with pytest.raises(ValueError, match="does not segment"):
        predict_labels(bundle, x)
    with pytest.raises(ValueError, match="non-finite"):
        predict_output(bundle, np.full((1, 3, 32, 32), np.nan, np.float32))


def test_the_served_model_predicts_through_predict_output(monkeypatch):
    """One path: SasanSegmenterModel.predict is predict_output, its input errors client errors."""
    from mlflow.exceptions import MlflowException

    from sasan.tracking import pyfunc_model

    model = pyfunc_model.SasanSegmenterModel()
    model.bundle = tiny_paired_bundle(seed=2)
    x = _stacks(2)
    np.testing.assert_array_equal(model.predict(None, x), predict_output(model.bundle, x))
    calls = []
    monkeypatch.setattr(pyfunc_model, "predict_output", lambda *args: calls.append(args) or "out")
    assert model.predict(None, x, {"batch_size": 5}) == "out" and calls == [(model.bundle, x, 5)]
    monkeypatch.undo()
    with pytest.raises(MlflowException, match="non-finite"):
        model.predict(None, np.full((1, 3, 32, 32), np.nan, np.float32))


def test_a_paired_bundle_warns_of_outputs_not_labels_at_another_size(caplog):
    with caplog.at_level("WARNING", logger="sasan.tracking.pyfunc_model"):
        predict_output(tiny_paired_bundle(seed=2), _stacks(1, size=64))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "64x64" in messages[0] and "outputs at a scale" in messages[0]
    assert "labels" not in messages[0]


def test_a_logged_paired_model_serves_translations(tmp_path, tracking_uri):
    bundle = tiny_paired_bundle(seed=4)
    save_bundle(tmp_path / "paired.pt", bundle)
    tracker = Tracker.start(tracking_uri, "exp", "pipeline")
    model_uri = log_bundle_model(tracker, tmp_path / "paired.pt")          # the default example: valid
    tracker.end()
    with process_tracking_uri(tracking_uri):
        model = mlflow.pyfunc.load_model(model_uri)
    x = _stacks(3, seed=5)
    out = model.predict(x)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference_translation(bundle, x), atol=1e-5)
    [sig_out] = model.metadata.signature.outputs.inputs
    assert (sig_out.type, sig_out.shape) == (np.dtype("float32"), (-1, -1, -1))
    meta = model.metadata.metadata["sasan"]
    assert meta["output"] == "translation" and meta["variant"] == "sasan"
    assert MlflowClient(tracking_uri).get_logged_model(model_uri.split("/")[-1]).model_type == "translation"

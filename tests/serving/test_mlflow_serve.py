"""The registered pyfunc answers real HTTP requests: a tiny SASAN bundle logged and registered
as sasan-segmenter@champion in a local store, served by `mlflow models serve --env-manager
local` (what infra/k8s/base/services/serving runs) on 127.0.0.1, and asked for the label maps
of a target-modality (CT) volume's slices: the 3-slice stacks in [-1, 1] that preprocess
writes."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sasan.bundle import save_bundle
from sasan.config import config_from_dict
from sasan.data.ingest import run_ingest
from sasan.data.phantom import generate_phantom
from sasan.data.preprocess import run_preprocess
from sasan.tracking.client import process_tracking_uri
from sasan.tracking.pyfunc_model import log_bundle_model
from sasan.tracking.runs import Tracker
from tests.tracking.conftest import TINY_MODEL, tiny_bundle

BIN = Path(sys.executable).parent
MODEL_NAME, ALIAS = "sasan-segmenter", "champion"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: bytes | None = None, timeout: float = 60):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def target_slices(root: Path) -> np.ndarray:
    """The CT test volume's slice stacks, as preprocess writes them: [N, 3, 32, 32]."""
    generate_phantom(root / "phantom", cases=2, seed=0, size=48)
    run_ingest(root / "phantom", root / "raw", layout="nnunet", test_fraction=0.5, seed=0)
    run_preprocess(root / "raw", root / "shards", config_from_dict({"preprocess": {"image_size": 32}}).preprocess)
    return np.load(root / "shards" / "ct" / "test" / "images.npy").astype(np.float32)


@pytest.mark.slow
def test_the_champion_answers_invocations_over_http(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    save_bundle(tmp_path / "bundle.pt", tiny_bundle("sasan", seed=2))
    tracker = Tracker.start(uri, "serving", "sasan")
    model_uri = log_bundle_model(tracker, tmp_path / "bundle.pt")
    tracker.end()
    with process_tracking_uri(uri):
        import mlflow

        version = mlflow.register_model(model_uri, MODEL_NAME).version
        mlflow.MlflowClient(uri).set_registered_model_alias(MODEL_NAME, ALIAS, version)

    x = target_slices(tmp_path / "data")
    assert x.ndim == 4 and x.shape[1:] == (3, 32, 32) and len(x) > 0
    assert x.min() >= -1.0 and x.max() <= 1.0

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1",
           "PATH": str(BIN) + os.pathsep + os.environ["PATH"]}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "--model-uri", f"models:/{MODEL_NAME}@{ALIAS}",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "server not ready: " + (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if http(f"http://127.0.0.1:{port}/ping", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)

        status, body = http(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": x.tolist()}).encode())
        assert status == 200
        labels = np.asarray(json.loads(body)["predictions"])
        assert labels.shape == (len(x), 32, 32)
        assert np.issubdtype(labels.dtype, np.integer)
        assert labels.min() >= 0 and labels.max() < TINY_MODEL["num_classes"]
        # the served model is the registered bundle: the same labels as the pyfunc in-process
        with process_tracking_uri(uri):
            local = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{ALIAS}").predict(x)
        np.testing.assert_array_equal(labels, local)

        # a wrong stack depth is refused with a client error, not a crash
        with pytest.raises(urllib.error.HTTPError) as refused:
            http(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": x[:, :2].tolist()}).encode())
        assert 400 <= refused.value.code < 500
        # values that are not preprocessed stacks are refused too, with the reason
        bad = np.full((1, 3, 32, 32), 1000.0, np.float32)
        with pytest.raises(urllib.error.HTTPError) as refused:
            http(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": bad.tolist()}).encode())
        assert refused.value.code == 400
        assert "expected [-1, 1]" in json.loads(refused.value.read())["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)      # the session this test started: server and workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()

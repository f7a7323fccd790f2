"""The MLflow Deployment's configuration, run for real: the container's arguments, its
environment and the basic-auth config file (infra/k8s/base/services/mlflow), started with the
project's MLflow on a free local port. PostgreSQL and S3 are swapped for SQLite and a folder;
everything else (basic-auth app, admin bootstrap from the Secret's variables, CSRF key, allowed
Host headers, the /health probe, proxied artifacts) is what the pod runs."""

import configparser
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MLFLOW = REPO / "infra" / "k8s" / "base" / "services" / "mlflow"
ADMIN, ADMIN_PASSWORD = "admin", "test-admin-password-0123"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(url: str, user: str | None = None, password: str | None = None, host: str | None = None,
            data: bytes | None = None) -> int:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if user:
        req.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    work = tmp_path_factory.mktemp("mlflow-server")
    container = yaml.safe_load((MLFLOW / "deployment.yaml").read_text())["spec"]["template"]["spec"][
        "containers"][0]
    generators = {g["name"]: g for g in yaml.safe_load((MLFLOW / "kustomization.yaml").read_text())[
        "configMapGenerator"]}
    server_env = dict(literal.split("=", 1) for literal in generators["mlflow-server-env"]["literals"])

    config = configparser.ConfigParser()
    config.read_string((MLFLOW / "basic_auth.ini").read_text())
    assert config["mlflow"]["database_uri"].startswith("postgresql")
    config["mlflow"]["database_uri"] = f"sqlite:///{work / 'auth.db'}"
    with (work / "basic_auth.ini").open("w") as out:
        config.write(out)

    port = free_port()
    secrets = {"MLFLOW_AUTH_ADMIN_USERNAME": ADMIN, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-flask-secret", "PGUSER": "unused",
               "PGPASSWORD": "unused", "AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"}
    assert {e["name"] for e in container["env"]} == set(secrets)
    env = {**os.environ, **server_env, **secrets,
           "MLFLOW_AUTH_CONFIG_PATH": str(work / "basic_auth.ini"),
           "MLFLOW_SERVER_ALLOWED_HOSTS": server_env["MLFLOW_SERVER_ALLOWED_HOSTS"] + f",127.0.0.1:{port}"}
    swap = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}",
            "--workers=$(MLFLOW_WORKERS)": "--workers=1",
            "--artifacts-destination=s3://mlflow-artifacts": f"--artifacts-destination={work / 'artifacts'}"}
    args = []
    for arg in container["args"]:
        if arg.startswith("--backend-store-uri=postgresql"):
            arg = f"--backend-store-uri=sqlite:///{work / 'mlflow.db'}"
        args.append(swap.get(arg, arg))
    assert not [a for a in args if "$(" in a], args

    mlflow = Path(sys.executable).with_name("mlflow")
    log = (work / "server.log").open("w")
    server = subprocess.Popen([str(mlflow), "server", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while request(f"{base}/health") != 200:
            assert server.poll() is None, (work / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "MLflow did not become healthy"
            time.sleep(1)
        yield {"base": base, "container": container}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"


def test_probe_path_is_healthy_without_credentials(mlflow_server):
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = mlflow_server["container"][probe]["httpGet"]["path"]
        assert request(mlflow_server["base"] + path, host="10.1.2.3:5000") == 200, probe


def test_authentication_is_on(mlflow_server):
    base = mlflow_server["base"]
    assert request(base + SEARCH) == 401
    assert request(base + SEARCH, ADMIN, "wrong") == 401
    assert request(base + SEARCH, ADMIN, ADMIN_PASSWORD) == 200


def test_only_listed_host_headers_are_served(mlflow_server):
    base = mlflow_server["base"]
    assert request(base + SEARCH, ADMIN, ADMIN_PASSWORD, host="mlflow.sasan.svc.cluster.local:5000") == 200
    assert request(base + SEARCH, ADMIN, ADMIN_PASSWORD, host="attacker.example:5000") == 403


def test_a_pipeline_account_logs_runs_with_proxied_artifacts(mlflow_server, monkeypatch):
    import mlflow

    base = mlflow_server["base"]
    status = request(f"{base}/api/2.0/mlflow/users/create", ADMIN, ADMIN_PASSWORD,
                     data=b'{"username": "pipeline", "password": "pipeline-password-0123"}')
    assert status == 200
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pipeline-password-0123")
    client = mlflow.MlflowClient(tracking_uri=base)
    experiment = client.create_experiment("infra-smoke")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "dice", 0.5)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert re.match(r"mlflow-artifacts:/", run.info.artifact_uri)
    assert client.get_run(run.info.run_id).data.metrics == {"dice": 0.5}
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["note.txt"]

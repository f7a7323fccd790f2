"""`sasan pipeline compile` and the compiled pipeline YAML: image, GPUs, scheduling, Secrets,
caching and retries; and `sasan pipeline submit` against a stand-in kfp.Client."""

import re

import pytest
import yaml

from sasan.cli import main
from sasan.cli import pipeline_cmds

IMAGE = "registry.example.com/sasan:0123456789ab"
TRAIN_EXECUTORS = {"exec-train", "exec-train-2"}            # SASAN, and the baselines' ParallelFor body
MLFLOW_STEPS = {"exec-start-run", "exec-train", "exec-train-2", "exec-evaluate", "exec-register"}
# planted in the compiling process's environment: none of it may reach the YAML
PLANTED = {"AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY123456", "AWS_SECRET_ACCESS_KEY": "planted-s3-secret-value",
           "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password", "MLFLOW_TRACKING_USERNAME": "planted-user",
           "KF_PIPELINES_TOKEN": "planted-kfp-token"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for key, value in PLANTED.items():
        mp.setenv(key, value)
    out = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    try:
        assert main(["pipeline", "compile", str(out), "--image", IMAGE]) == 0
    finally:
        mp.undo()
    text = out.read_text()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec):
    """Every task of the pipeline, nested DAGs included: {task name: task spec}."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def test_every_executor_runs_the_given_image_without_pip_installs(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-configure", "exec-start-run", "exec-ingest", "exec-validate", "exec-preprocess",
                              "exec-train", "exec-train-2", "exec-evaluate", "exec-register"}
    for name, ex in executors.items():
        assert ex["container"]["image"] == IMAGE, name
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_gpus_are_requested_by_the_training_tasks_only(compiled):
    _, spec, platform = compiled
    for name, ex in spec["deploymentSpec"]["executors"].items():
        accel = ex["container"].get("resources", {}).get("accelerator")
        if name in TRAIN_EXECUTORS:
            assert "pipelinechannel--gpus" in accel["resourceCount"]
            assert "pipelinechannel--accelerator_type" in accel["resourceType"]
            assert "pipelinechannel--train_memory" in ex["container"]["resources"]["resourceMemoryRequest"]
            # the pipeline parameters (inside the ParallelFor body under their channel name)
            selector = platform[name]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
            assert selector in ("gpu_node_selector", "pipelinechannel--gpu_node_selector")
            (toleration,) = platform[name]["tolerations"]
            assert toleration["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
        else:
            assert accel is None, name
            assert "nodeSelector" not in platform[name] and "tolerations" not in platform[name], name
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["gpus"]["defaultValue"] == 1 and inputs["accelerator_type"]["defaultValue"] == "nvidia.com/gpu"
    assert inputs["gpu_node_selector"]["defaultValue"] == {"nvidia.com/gpu.present": "true"}
    assert inputs["gpu_tolerations"]["defaultValue"][0]["key"] == "nvidia.com/gpu"


def test_credentials_come_from_secrets_as_env(compiled):
    _, _, platform = compiled
    for name, cfg in platform.items():
        secrets = {s["secretName"]: {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]} for s in cfg["secretAsEnv"]}
        assert secrets["s3-credentials"] == {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}, name
        if name in MLFLOW_STEPS:
            assert secrets["mlflow-credentials"] == {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                                                     "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}, name
        else:
            assert "mlflow-credentials" not in secrets, name
        envs = {k["envVar"] for c in cfg["configMapAsEnv"] for k in c["keyToEnv"]}
        assert "MLFLOW_TRACKING_URI" in envs and "AWS_ENDPOINT_URL_S3" in envs, name


def test_no_secret_values_or_credential_parameters_in_the_yaml(compiled):
    text, spec, _ = compiled
    for value in PLANTED.values():
        assert value not in text
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    for scope in [spec["root"], *spec["components"].values()]:
        for name in scope.get("inputDefinitions", {}).get("parameters", {}):
            assert not re.search(r"password|secret|token|access_key|credential", name, re.I), name
    # nothing sets a credential env var by value (only via secretAsEnv)
    for ex in spec["deploymentSpec"]["executors"].values():
        for env in ex["container"].get("env", []):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", env["name"]), env


def test_caching_and_retries_are_set_per_step(compiled):
    _, spec, _ = compiled
    tasks = _tasks(spec)
    cached = {name: t.get("cachingOptions", {}).get("enableCache", False) for name, t in tasks.items()
              if "componentRef" in t and not name.startswith("for-loop")}
    assert cached == {"configure": True, "ingest": True, "validate": True, "preprocess": True,
                      "start-run": False, "train": False, "train-2": False, "evaluate": False, "register": False}
    retries = {name: t.get("retryPolicy", {}).get("maxRetryCount", 0) for name, t in tasks.items()
               if not name.startswith("for-loop")}
    assert retries == {"configure": 0, "start-run": 1, "ingest": 2, "validate": 0, "preprocess": 0,
                       "train": 3, "train-2": 3, "evaluate": 1, "register": 0}
    # a preempted training is retried for long enough to finish: the window counts from attempt 1
    assert int(tasks["train"]["retryPolicy"]["backoffMaxDuration"].rstrip("s")) >= 24 * 3600


def test_baselines_train_in_a_parallel_for_and_evaluate_collects_them(compiled):
    _, spec, _ = compiled
    loop = spec["root"]["dag"]["tasks"]["for-loop-1"]
    assert loop["parameterIterator"]["itemInput"] == "pipelinechannel--baselines-loop-item"
    ev = spec["root"]["dag"]["tasks"]["evaluate"]["inputs"]["artifacts"]
    assert ev["baseline_models"]["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    assert ev["sasan_model"]["taskOutputArtifact"]["producerTask"] == "train"
    # one MLflow parent run, its reference passed explicitly to every step that logs
    for name in ("train", "evaluate", "register"):
        args = spec["root"]["dag"]["tasks"][name]["inputs"]["artifacts"]["run"]
        assert args == {"taskOutputArtifact": {"outputArtifactKey": "run", "producerTask": "start-run"}}
    body = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train-2"]["inputs"]["artifacts"]["run"]
    assert body == {"componentInputArtifact": "pipelinechannel--start-run-run"}


def test_a_pvc_is_mounted_in_the_data_steps_when_asked(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", str(out), "--image", IMAGE, "--pvc", "sasan-data"]) == 0
    _, platform = yaml.safe_load_all(out.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mounted = {name for name, cfg in executors.items() if cfg.get("pvcMount")}
    assert mounted == {"exec-ingest", "exec-validate", "exec-preprocess", "exec-train", "exec-train-2", "exec-evaluate"}
    assert executors["exec-train"]["pvcMount"][0]["mountPath"] == "/mnt/sasan-data"


def test_compile_rejects_a_bad_image(tmp_path, capsys):
    assert main(["pipeline", "compile", str(tmp_path / "p.yaml"), "--image", "has space"]) != 0
    assert "error" in capsys.readouterr().err


class FakeClient:
    created = []

    def __init__(self, host=None, existing_token=None, credentials=None, **_):
        self.host, self.token, self.credentials = host, existing_token, credentials

    def create_run_from_pipeline_package(self, pipeline_file, arguments=None, run_name=None, experiment_name=None,
                                         enable_caching=None, **_):
        spec = next(yaml.safe_load_all(open(pipeline_file)))
        FakeClient.created.append({"client": self, "arguments": arguments, "run_name": run_name,
                                   "experiment": experiment_name, "caching": enable_caching, "spec": spec})

        class Result:
            run_id = "run-123"
        return Result()


def test_submit_passes_parameters_and_prints_the_run_url(tmp_path, monkeypatch, capsys):
    import kfp

    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok")
    profile = tmp_path / "profile.yaml"
    profile.write_text("train:\n  joint:\n    max_steps: 5\n")
    FakeClient.created.clear()
    code = main(["pipeline", "submit", "--host", "http://kfp.example:8080/", "--experiment", "exp1",
                 "--image", IMAGE, "--params-file", str(profile), "--param", "gpus=2",
                 "--param", "data_source=s3://sasan-data/mmwhs", "--param", "baselines=[cyclegan]", "--no-cache"])
    assert code == 0
    assert capsys.readouterr().out.strip() == "http://kfp.example:8080/#/runs/details/run-123"
    (call,) = FakeClient.created
    assert call["client"].token == "tok" and call["client"].host == "http://kfp.example:8080/"
    assert call["arguments"] == {"gpus": 2, "data_source": "s3://sasan-data/mmwhs", "baselines": ["cyclegan"],
                                 "params": profile.read_text()}
    assert call["experiment"] == "exp1" and call["caching"] is False
    assert call["spec"]["deploymentSpec"]["executors"]["exec-train"]["container"]["image"] == IMAGE


def test_submit_errors_are_one_line(monkeypatch, capsys):
    import kfp

    class Down(FakeClient):
        def create_run_from_pipeline_package(self, *a, **k):
            raise ConnectionError("connection refused\nmore detail")

    monkeypatch.setattr(kfp, "Client", Down)
    assert main(["pipeline", "submit", "--host", "http://nowhere", "--image", IMAGE]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "connection refused" in err
    assert pipeline_cmds.parse_params(["a=1", "b=x", "c="]) == {"a": 1, "b": "x", "c": ""}
    assert main(["pipeline", "submit", "--host", "h", "--image", IMAGE, "--param", "novalue"]) == 2

"""`sasan pipeline compile` and the compiled pipeline YAML: images, GPUs, scheduling, Secrets,
caching and retries, the exit handler, timeouts, resources, scratch, parallelism; and
`sasan pipeline submit` against a stand-in kfp.Client."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from sasan.cli import main
from sasan.cli import pipeline_cmds

IMAGE = "registry.example.com/sasan:0123456789ab"
CPU_IMAGE = "registry.example.com/sasan-cpu:0123456789ab"
TRAIN_EXECUTORS = {"exec-train", "exec-train-2"}            # SASAN, and the baselines' ParallelFor body
MLFLOW_STEPS = {"exec-start-run", "exec-train", "exec-train-2", "exec-evaluate", "exec-register", "exec-finish-run"}
EXECUTORS = {"exec-configure", "exec-start-run", "exec-ingest", "exec-validate", "exec-preprocess", "exec-train",
             "exec-train-2", "exec-evaluate", "exec-register", "exec-finish-run"}
DATA_STEPS = {"exec-ingest", "exec-validate", "exec-preprocess", "exec-train", "exec-train-2", "exec-evaluate"}
S3_STEPS = DATA_STEPS                     # MLflow proxies artifacts: only the data steps talk to S3
BRAIN_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "brain-t2t1.yaml"
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


def test_training_runs_the_cuda_image_every_other_step_the_cpu_image_without_pip_installs(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert set(executors) == EXECUTORS
    for name, ex in executors.items():
        assert ex["container"]["image"] == (IMAGE if name in TRAIN_EXECUTORS else CPU_IMAGE), name
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_images_are_compile_time_settings_and_immutable(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    cpu = "registry.example.com/sasan-cpu@sha256:" + "a" * 64
    assert main(["pipeline", "compile", str(out), "--image", IMAGE, "--cpu-image", cpu]) == 0
    images = {n: ex["container"]["image"] for n, ex in next(yaml.safe_load_all(out.read_text()))
              ["deploymentSpec"]["executors"].items()}
    assert {images[n] for n in TRAIN_EXECUTORS} == {IMAGE} and set(images.values()) == {IMAGE, cpu}
    for moving in ("registry.example.com/sasan:latest", "registry.example.com/sasan"):
        assert main(["pipeline", "compile", str(out), "--image", moving]) != 0
        # submit compiles the same way: a clean one-line error, not a traceback
        capsys.readouterr()
        assert main(["pipeline", "submit", "--host", "http://h", "--image", moving]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "moving tag" in err and "Traceback" not in err
    assert main(["pipeline", "compile", str(out), "--image", IMAGE, "--cpu-image", "sasan-cpu:latest"]) != 0


def test_an_exit_handler_around_every_step_ends_the_mlflow_run_with_the_final_status(compiled):
    _, spec, platform = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finish-run"}
    exit_task = root["finish-run"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["dependentTasks"] == ["exit-handler-1"]
    assert exit_task["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    assert exit_task["inputs"]["parameters"]["pipeline_job"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    inside = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"configure", "start-run", "ingest", "validate", "preprocess", "train", "for-loop-2", "evaluate",
            "register"} == set(inside)
    # the exit task reaches MLflow and the KFP API (to name the failed step)
    envs = {k["envVar"] for c in platform["exec-finish-run"]["configMapAsEnv"] for k in c["keyToEnv"]}
    assert {"MLFLOW_TRACKING_URI", "KFP_API_URL"} <= envs
    # the steps that open MLflow runs know the KFP UI's address (their kfp.run_url tag), from
    # an optional entry: pods still start on a ConfigMap applied before the key existed
    for step in ("exec-start-run", "exec-train"):
        entries = platform[step]["configMapAsEnv"]
        assert "MLFLOW_TRACKING_URI" in {k["envVar"] for c in entries if not c.get("optional") for k in c["keyToEnv"]}
        assert {k["envVar"] for c in entries if c.get("optional") for k in c["keyToEnv"]} == {"KFP_UI_URL"}, step


def _seconds(value) -> int:
    return int(str(value).rstrip("s"))


def test_every_step_has_a_deadline(compiled):
    _, _, platform = compiled
    deadlines = {name: _seconds(cfg["activeDeadlineSeconds"]) for name, cfg in platform.items()}
    assert set(deadlines) == EXECUTORS
    for name, seconds in deadlines.items():
        assert 0 < seconds <= 2 * 24 * 3600, name
    assert deadlines["exec-train"] == deadlines["exec-train-2"] == 24 * 3600
    assert max(v for k, v in deadlines.items() if k not in TRAIN_EXECUTORS) <= 4 * 3600


def test_a_training_deadline_is_a_compile_time_setting(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", str(out), "--image", IMAGE, "--train-timeout-s", "3600",
                 "--baseline-parallelism", "1"]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert _seconds(executors["exec-train-2"]["activeDeadlineSeconds"]) == 3600
    loop = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["for-loop-2"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == 1
    # the retry window follows the deadline: 4 attempts of 1 h fit, far less than the default's
    window = _seconds(_tasks(spec)["train"]["retryPolicy"]["backoffMaxDuration"])
    assert 4 * 3600 < window < 4 * 24 * 3600
    for bad in (["--train-timeout-s", "0"], ["--baseline-parallelism", "0"]):
        assert main(["pipeline", "compile", str(out), "--image", IMAGE, *bad]) == 1


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for unit, factor in units.items():
        if str(text).endswith(unit):
            return float(str(text)[:-len(unit)]) * factor
    return float(text)


def test_every_step_requests_and_limits_cpu_and_memory(compiled):
    _, spec, _ = compiled
    for name, ex in spec["deploymentSpec"]["executors"].items():
        res = ex["container"]["resources"]
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert res.get(key), f"{name}: no {key}"
        if name in TRAIN_EXECUTORS:   # pipeline parameters: request = limit
            assert "train_cpu" in res["resourceCpuRequest"] and res["resourceCpuLimit"] == res["resourceCpuRequest"]
            assert "train_memory" in res["resourceMemoryLimit"]
            continue
        assert _quantity(res["resourceCpuRequest"]) <= _quantity(res["resourceCpuLimit"]), name
        assert _quantity(res["resourceMemoryRequest"]) == _quantity(res["resourceMemoryLimit"]), name


def test_steps_where_data_lands_have_sized_scratch(compiled):
    _, _, platform = compiled
    for name, cfg in platform.items():
        mounts = [m for m in cfg.get("emptyDirMounts", []) if m["mountPath"] != "/dev/shm"]
        if name in DATA_STEPS:
            (mount,) = mounts
            assert mount["mountPath"] == "/tmp" and _quantity(mount["sizeLimit"]) >= 50 * 2**30, name
            assert "medium" not in mount, name
        else:
            assert not mounts, name


def test_training_gets_a_memory_backed_dev_shm_within_its_memory(compiled):
    """64 MiB of /dev/shm (the container default) breaks DataLoader workers and NCCL's
    shared-memory transport; tmpfs pages count against the memory limit."""
    from pipelines.sasan_pipeline import DEFAULT_TRAIN_MEMORY, SHM_SIZE

    _, spec, platform = compiled
    for name, cfg in platform.items():
        shm = [m for m in cfg.get("emptyDirMounts", []) if m["mountPath"] == "/dev/shm"]
        if name in TRAIN_EXECUTORS:
            (mount,) = shm
            assert mount["medium"] == "Memory" and _quantity(mount["sizeLimit"]) >= 2**30, name
        else:
            assert not shm, name
    default = spec["root"]["inputDefinitions"]["parameters"]["train_memory"]["defaultValue"]
    assert default == DEFAULT_TRAIN_MEMORY and _quantity(default) >= _quantity(SHM_SIZE) + 16 * 2**30


def test_every_step_records_its_image_for_lineage(compiled):
    from sasan.tracking.lineage import IMAGE_ENV, RunContext

    _, spec, _ = compiled
    for name, ex in spec["deploymentSpec"]["executors"].items():
        env = {e["name"]: e["value"] for e in ex["container"].get("env", [])}
        assert env[IMAGE_ENV] == ex["container"]["image"], name
        assert RunContext.from_environ(env, "kubeflow").tags()["sasan.image"] == ex["container"]["image"]


def test_data_moves_by_reference_on_a_cluster_by_default(compiled):
    _, spec, _ = compiled
    assert spec["root"]["inputDefinitions"]["parameters"]["data_root"]["defaultValue"] == "s3://sasan-data/runs"


def test_gpus_are_requested_by_the_training_tasks_only(compiled):
    _, spec, platform = compiled
    for name, ex in spec["deploymentSpec"]["executors"].items():
        accel = ex["container"].get("resources", {}).get("accelerator")
        if name in TRAIN_EXECUTORS:
            assert "pipelinechannel--gpus" in accel["resourceCount"]
            assert "pipelinechannel--accelerator_type" in accel["resourceType"]
            assert "pipelinechannel--train_memory" in ex["container"]["resources"]["resourceMemoryRequest"]
            # the pipeline parameters (inside the ParallelFor body under their channel name)
            # settable per run (a parameter), empty by default
            selector = platform[name]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
            assert selector in ("gpu_node_selector", "pipelinechannel--gpu_node_selector")
            (toleration,) = platform[name]["tolerations"]
            assert toleration["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
        else:
            assert accel is None, name
            assert "nodeSelector" not in platform[name] and "tolerations" not in platform[name], name
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["gpus"]["defaultValue"] == 1 and inputs["accelerator_type"]["defaultValue"] == "nvidia.com/gpu"
    # no label only NVIDIA's GPU Feature Discovery sets: the GPU request and toleration pin GPU nodes
    assert inputs["gpu_node_selector"]["defaultValue"] == {}
    assert inputs["gpu_tolerations"]["defaultValue"][0]["key"] == "nvidia.com/gpu"


def test_credentials_come_from_secrets_as_env(compiled):
    _, _, platform = compiled
    for name, cfg in platform.items():
        secrets = {s["secretName"]: {k["secretKey"]: k["envVar"] for k in s["keyToEnv"]}
                   for s in cfg.get("secretAsEnv", [])}
        if name in S3_STEPS:
            assert secrets["s3-credentials"] == {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                                                 "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}, name
        else:
            assert "s3-credentials" not in secrets, name
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
    cached.pop("exit-handler-1")
    assert cached == {"configure": True, "ingest": True, "validate": True, "preprocess": True,
                      "start-run": False, "train": False, "train-2": False, "evaluate": False, "register": False,
                      "finish-run": False}
    retries = {name: t.get("retryPolicy", {}).get("maxRetryCount", 0) for name, t in tasks.items()
               if not name.startswith(("for-loop", "exit-handler"))}
    assert retries == {"configure": 0, "start-run": 1, "ingest": 2, "validate": 0, "preprocess": 0,
                       "train": 3, "train-2": 3, "evaluate": 1, "register": 0, "finish-run": 2}
    # the retry window counts from attempt 1: every attempt may run to its deadline, plus back-offs
    _, _, platform = compiled
    for name, task in tasks.items():
        policy = task.get("retryPolicy")
        if not policy or name.startswith(("for-loop", "exit-handler")):
            continue
        retries = policy["maxRetryCount"]
        deadline = _seconds(platform[task["componentRef"]["name"].replace("comp-", "exec-", 1)]["activeDeadlineSeconds"])
        backoff = sum(_seconds(policy["backoffDuration"]) * policy["backoffFactor"] ** i for i in range(retries))
        assert _seconds(policy["backoffMaxDuration"]) >= (retries + 1) * deadline + backoff, name


def test_baselines_train_in_a_capped_parallel_for_and_evaluate_collects_them(compiled):
    _, spec, _ = compiled
    tasks = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    loop = tasks["for-loop-2"]
    assert loop["parameterIterator"]["itemInput"] == "pipelinechannel--baselines-loop-item"
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    ev = tasks["evaluate"]["inputs"]["artifacts"]
    assert ev["baseline_models"]["taskOutputArtifact"]["producerTask"] == "for-loop-2"
    assert ev["sasan_model"]["taskOutputArtifact"]["producerTask"] == "train"
    # one MLflow parent run, its reference passed explicitly to every step that logs
    for name in ("train", "evaluate", "register"):
        args = tasks[name]["inputs"]["artifacts"]["run"]
        assert args == {"taskOutputArtifact": {"outputArtifactKey": "run", "producerTask": "start-run"}}
    body = spec["components"]["comp-for-loop-2"]["dag"]["tasks"]["train-2"]["inputs"]["artifacts"]["run"]
    assert body == {"componentInputArtifact": "pipelinechannel--start-run-run"}


def test_a_pvc_is_mounted_in_the_data_steps_when_asked(tmp_path):
    # the parallel training pods share it: the claim must be ReadWriteMany (infra's sasan-data
    # is; tests/infra checks it), never one ReadWriteOnce claim on several nodes
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
    assert pipeline_cmds.parse_params(["a=1", "b=x", "c="]) == {"a": "1", "b": "x", "c": ""}
    assert main(["pipeline", "submit", "--host", "h", "--image", IMAGE, "--param", "novalue"]) == 2


def test_submit_converts_parameters_to_their_declared_types_and_rejects_unknown_names(monkeypatch, capsys):
    import kfp

    monkeypatch.setattr(kfp, "Client", FakeClient)
    FakeClient.created.clear()
    submit = ["pipeline", "submit", "--host", "http://h", "--image", IMAGE]
    assert main([*submit, "--param", "train_cpu=8", "--param", "gpus=2", "--param", "train_memory=32Gi",
                 "--param", "gpu_node_selector={cloud.google.com/gke-accelerator: nvidia-l4}",
                 "--param", "experiment=123", "--param", "overrides={train.joint.max_steps: 5}"]) == 0
    (call,) = FakeClient.created
    assert call["arguments"] == {"train_cpu": "8", "gpus": 2, "train_memory": "32Gi", "experiment": "123",
                                 "gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
                                 "overrides": {"train.joint.max_steps": 5}}
    capsys.readouterr()
    for bad in ("gpu=2", "gpus=two", "gpus=true", "baselines=cyclegan", "gpu_tolerations={a: b}", "gpus="):
        assert main([*submit, "--param", bad]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and bad.split("=")[0] in err, err
    assert main([*submit, "--param", "gpu=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown pipeline parameter gpu" in err and "valid: " in err and "gpus" in err
    assert len(FakeClient.created) == 1


def test_submit_takes_a_compiled_package_and_refuses_compile_options_with_it(tmp_path, monkeypatch, capsys):
    import kfp

    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.delenv("SASAN_IMAGE", raising=False)
    FakeClient.created.clear()
    package = tmp_path / "pipeline.yaml"
    assert main(["pipeline", "compile", str(package), "--image", IMAGE]) == 0
    assert main(["pipeline", "submit", "--host", "http://h", "--package", str(package), "--param", "gpus=2"]) == 0
    (call,) = FakeClient.created
    assert call["spec"]["deploymentSpec"]["executors"]["exec-train"]["container"]["image"] == IMAGE
    assert main(["pipeline", "submit", "--host", "http://h", "--package", str(package), "--image", IMAGE]) == 2
    # without --package there is no registry-less default image to guess
    capsys.readouterr()
    assert main(["pipeline", "submit", "--host", "http://h"]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["pipeline", "compile", str(package)]) == 2


def _configure(tmp_path, **arguments) -> dict:
    """The configure component's body with the compiled pipeline's defaults and ``arguments``:
    the metadata it records (source, target, data_source)."""
    from components.data import configure

    out = tmp_path / "compiled.yaml"
    assert main(["pipeline", "compile", str(out), "--image", IMAGE]) == 0
    declared = next(yaml.safe_load_all(out.read_text()))["components"]["comp-configure"]["inputDefinitions"]
    root = next(yaml.safe_load_all(out.read_text()))["root"]["inputDefinitions"]["parameters"]
    values = {k: root[k]["defaultValue"] for k in declared["parameters"]}
    values.update(arguments)
    artifact = SimpleNamespace(path=str(tmp_path / "config.yaml"), metadata={})
    configure(config=artifact, **values)
    return artifact.metadata


def test_empty_direction_and_source_parameters_keep_the_params_file_values(tmp_path, monkeypatch, capsys):
    import kfp

    # the brain profile says t2 -> t1 on data/brain: the pipeline's defaults must not override it
    meta = _configure(tmp_path, params=BRAIN_PROFILE.read_text())
    assert (meta["source"], meta["target"], meta["data_source"]) == ("t2", "t1", "data/brain")
    # a parameter given still wins; no params at all is the phantom demo
    assert _configure(tmp_path, params=BRAIN_PROFILE.read_text(), data_source="s3://b/brain")["data_source"] \
        == "s3://b/brain"
    meta = _configure(tmp_path)
    assert (meta["source"], meta["target"], meta["data_source"]) == ("mr", "ct", "phantom")
    # and the run is named after the direction it resolves to
    monkeypatch.setattr(kfp, "Client", FakeClient)
    FakeClient.created.clear()
    assert main(["pipeline", "submit", "--host", "http://h", "--image", IMAGE, "--params-file", str(BRAIN_PROFILE)]) == 0
    assert main(["pipeline", "submit", "--host", "http://h", "--image", IMAGE, "--params-file", str(BRAIN_PROFILE),
                 "--param", "target=flair"]) == 0
    assert [c["run_name"].split()[1] for c in FakeClient.created] == ["t2->t1", "t2->flair"]
    assert "params" in FakeClient.created[0]["arguments"] and "source" not in FakeClient.created[0]["arguments"]


def test_a_paired_profile_is_submitted_with_translating_baselines_only(monkeypatch, capsys):
    """The pipeline's default baselines are segmenters, which a paired evaluation refuses
    after all training has run: submit picks [cyclegan] for a paired profile, and refuses
    segmenting baselines given explicitly, before anything reaches the cluster."""
    import kfp

    paired = BRAIN_PROFILE.parent / "phantom-paired.yaml"
    monkeypatch.setattr(kfp, "Client", FakeClient)
    FakeClient.created.clear()
    assert main(["pipeline", "submit", "--host", "http://h", "--image", IMAGE, "--params-file", str(paired)]) == 0
    assert FakeClient.created[-1]["arguments"]["baselines"] == ["cyclegan"]
    assert "paired mode: baselines [cyclegan]" in capsys.readouterr().err
    assert main(["pipeline", "submit", "--host", "http://h", "--image", IMAGE, "--params-file", str(paired),
                 "--param", 'baselines=["cyclegan", "upper_bound"]']) == 2
    err = capsys.readouterr().err.strip()
    assert "upper_bound do not translate" in err and len(err.splitlines()) == 1 and len(FakeClient.created) == 1
    # an unpaired profile keeps the pipeline's default baselines (no parameter passed)
    assert main(["pipeline", "submit", "--host", "http://h", "--image", IMAGE, "--params-file", str(BRAIN_PROFILE)]) == 0
    assert "baselines" not in FakeClient.created[-1]["arguments"]
    # a paired mode set through the overrides counts too
    assert main(["pipeline", "submit", "--host", "http://h", "--image", IMAGE,
                 "--param", 'overrides={"experiment.mode": "paired"}']) == 0
    assert FakeClient.created[-1]["arguments"]["baselines"] == ["cyclegan"]


def test_finish_run_ends_a_parent_run_left_running(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("KFP_API_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["pipeline", "finish-run", "job-1"]) == 2          # no tracking server named
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp, tags={"kfp.run_id": "job-1"}).info.run_id
    assert main(["pipeline", "finish-run", "job-1"]) == 0
    run = client.get_run(parent)
    assert run.info.status == "KILLED" and run.data.tags["kfp.final_state"] == "CANCELLED"
    capsys.readouterr()
    assert main(["pipeline", "finish-run", "job-1", "--status", "FINISHED"]) == 1   # already ended: kept
    assert "already ended (KILLED)" in capsys.readouterr().err
    assert client.get_run(parent).info.status == "KILLED"
    assert main(["pipeline", "finish-run", "job-1", "--status", "FINISHED", "--force"]) == 0
    assert client.get_run(parent).info.status == "FINISHED"
    assert main(["pipeline", "finish-run", "job-unknown"]) == 1
    assert "no MLflow parent run" in capsys.readouterr().err

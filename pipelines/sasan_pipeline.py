"""The SASAN Kubeflow pipeline: configure -> ingest -> validate -> preprocess -> train (SASAN,
and the baselines in parallel) -> evaluate -> register, with one MLflow parent run.

Only wiring lives here: which step feeds which, and how each task is scheduled (GPUs, node
selector, tolerations, Secrets and ConfigMap as environment variables, retries, caching).
The steps themselves are the components of :mod:`components`.

Per-step policy (why):

=========== ======= ======== ===================================================================
step        caching retries  reason
=========== ======= ======== ===================================================================
configure   on      0        a pure function of the run's parameters
start_run   off     1        must create a new MLflow parent run every time; a server hiccup
ingest      on      2        a source is read by reference (assumed immutable: a DVC revision or
                             a versioned prefix); network reads may fail transiently
validate    on      0        deterministic: a failure is a data problem, not a flake
preprocess  on      0        deterministic in its inputs
train       off     3        logs to this run's MLflow run; GPU nodes get preempted: with a
                             checkpoint root the retried pod resumes from the s3:// checkpoint
evaluate    off     1        logs to this run's MLflow run
register    off     0        a side effect (a new model version, maybe an alias move): never
                             served from cache, never repeated blindly
=========== ======= ======== ===================================================================
"""

# no `from __future__ import annotations`: kfp reads the pipeline signature's types at runtime
from dataclasses import dataclass
from typing import Callable, Optional

from kfp import dsl, kubernetes

PIPELINE_NAME = "sasan"

# Names of the cluster objects the steps read (infra/k8s/base/pipeline-access, secret-templates)
CLUSTER_CONFIG_MAP = "sasan-cluster-config"
CONFIG_MAP_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
MLFLOW_SECRET = "mlflow-credentials"
MLFLOW_SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
S3_SECRET = "s3-credentials"
S3_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
PVC_MOUNT = "/mnt/sasan-data"

DEFAULT_BASELINES = ["no_adaptation", "cyclegan", "upper_bound"]
DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


RETRY_WINDOW = {"train": "259200s"}   # 3 days; others: 1 h
RETRY_WINDOW.update({step: "3600s" for step in ("start_run", "ingest", "evaluate")})


@dataclass(frozen=True)
class StepPolicy:
    caching: bool
    retries: int


POLICY = {
    "configure": StepPolicy(True, 0),
    "start_run": StepPolicy(False, 1),
    "ingest": StepPolicy(True, 2),
    "validate": StepPolicy(True, 0),
    "preprocess": StepPolicy(True, 0),
    "train": StepPolicy(False, 3),
    "evaluate": StepPolicy(False, 1),
    "register": StepPolicy(False, 0),
}


def _schedule(task: dsl.PipelineTask, step: str, *, mlflow: bool = True, pvc: Optional[str] = None,
              cpu: str = "1", memory: str = "4Gi") -> dsl.PipelineTask:
    policy = POLICY[step]
    task.set_caching_options(policy.caching)
    if policy.retries:
        # exponential backoff 1, 2, 4 min (a preempted GPU node takes a while to come back);
        # the retry window counts from the first attempt, so it must outlast a long training
        task.set_retry(policy.retries, backoff_duration="60s", backoff_factor=2.0,
                       backoff_max_duration=RETRY_WINDOW[step])
    task.set_cpu_request(cpu).set_memory_request(memory)
    kubernetes.use_config_map_as_env(task, CLUSTER_CONFIG_MAP, {k: k for k in CONFIG_MAP_ENV})
    kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_SECRET_ENV})
    if mlflow:
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_SECRET_ENV})
    if pvc:
        kubernetes.mount_pvc(task, pvc, PVC_MOUNT)
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "sasan")
    kubernetes.add_pod_label(task, "sasan/step", step)
    return task


def build_pipeline(image: str, pvc: Optional[str] = None) -> Callable:
    """The pipeline function for one image reference (``REGISTRY/sasan:<git sha>``).
    ``pvc``: a PersistentVolumeClaim mounted at /mnt/sasan-data in every data step (then
    ``data_root=/mnt/sasan-data/...`` keeps big data on it)."""
    from components import make_components

    c = make_components(image)

    @dsl.pipeline(name=PIPELINE_NAME, description="SASAN cross-modality domain adaptation: ingest, validate, "
                  "preprocess, train SASAN and baselines, evaluate, register in MLflow.")
    def sasan_pipeline(
        data_source: str = "phantom",
        layout: str = "",
        source: str = "mr",
        target: str = "ct",
        params: str = "",
        overrides: dict = {},
        experiment: str = "",
        baselines: list = DEFAULT_BASELINES,
        gpus: int = 1,
        accelerator_type: str = "nvidia.com/gpu",
        gpu_node_selector: dict = DEFAULT_GPU_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
        train_cpu: str = "4",
        train_memory: str = "16Gi",
        data_root: str = "",
        checkpoint_root: str = "",
    ):
        """data_source: phantom | local path | s3://BUCKET/PREFIX | dvc://REPO@REV/PATH; layout:
        nnunet|mmwhs|brats|paired (empty: params' ingest.layout); source/target: domain folders
        (direction); params: YAML text or a profile path inside the image (empty: defaults);
        overrides: {"dotted.key": value}; experiment: MLflow experiment (empty: params');
        baselines: variants trained in parallel with SASAN; gpus: GPUs of each training task
        (> 1: torchrun, data-parallel); data_root: empty = data in KFP artifacts, else
        s3://... or a path on the mounted PVC; checkpoint_root: s3://... for checkpoints that
        survive a preempted pod."""
        cfg = _schedule(c.configure(params=params, overrides=overrides, source=source, target=target,
                                    experiment=experiment, data_source=data_source, layout=layout),
                        "configure", mlflow=False, memory="1Gi")
        cfg.set_display_name("configure")
        config = cfg.outputs["config"]
        run = _schedule(c.start_run(config=config, pipeline_job=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "start_run",
                        memory="1Gi")
        run.set_display_name("start MLflow run")
        # the parent run travels as its reference file (run_id, experiment_id, tracking_uri):
        # kfp.local 2.17.3 resolves a task's output *parameter* inside a ParallelFor body to
        # the loop item, while artifacts resolve correctly there
        parent_run = run.outputs["run"]

        raw = _schedule(c.ingest(config=config, data_root=data_root), "ingest", mlflow=False, pvc=pvc)
        report = _schedule(c.validate(config=config, raw=raw.outputs["raw"]), "validate", mlflow=False, pvc=pvc)
        shards = _schedule(c.preprocess(config=config, raw=raw.outputs["raw"], report=report.outputs["report"],
                                        data_root=data_root), "preprocess", mlflow=False, pvc=pvc, cpu="2", memory="8Gi")

        def train(variant) -> dsl.PipelineTask:
            # the resource values are also inputs: kfp 2.17's compiler passes a pipeline parameter
            # into a ParallelFor body only when a component input uses it, and the resource
            # settings alone do not count (the loop's train task then fails to resolve them)
            task = c.train(config=config, shards=shards.outputs["shards"], run=parent_run, variant=variant,
                           gpus=gpus, accelerator_type=accelerator_type, cpu=train_cpu, memory=train_memory,
                           checkpoint_root=checkpoint_root, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
            _schedule(task, "train", pvc=pvc, cpu=train_cpu, memory=train_memory)
            task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus)
            kubernetes.add_node_selector_json(task, gpu_node_selector)
            kubernetes.add_toleration_json(task, gpu_tolerations)
            return task

        main = train("sasan").set_display_name("train sasan")
        with dsl.ParallelFor(baselines) as variant:
            baseline = train(variant).set_display_name("train baseline")

        evaluation = _schedule(c.evaluate(config=config, raw=raw.outputs["raw"], sasan_model=main.outputs["model"],
                                          baseline_models=dsl.Collected(baseline.outputs["model"]),
                                          run=parent_run), "evaluate", pvc=pvc, cpu="2", memory="8Gi")
        _schedule(c.register(config=config, sasan_model=main.outputs["model"],
                             evaluation=evaluation.outputs["evaluation"], run=parent_run),
                  "register", memory="2Gi")

    return sasan_pipeline


def compile_pipeline(path: str, image: str, pvc: Optional[str] = None) -> str:
    """Write the compiled pipeline (IR YAML, uploadable in the Kubeflow UI) to ``path``."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(image, pvc), package_path=str(path), pipeline_name=PIPELINE_NAME)
    return str(path)

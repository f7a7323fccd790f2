"""The SASAN Kubeflow pipeline: [configure -> start_run -> ingest -> validate -> preprocess ->
train (SASAN, and the baselines in parallel) -> evaluate -> register] -> finish_run, with one
MLflow parent run.

Only wiring lives here: which step feeds which, and how each task is scheduled (image, GPUs,
resources, timeouts, node selector, tolerations, Secrets and ConfigMap as environment
variables, retries, caching). The steps themselves are the components of :mod:`components`.

Failure safety: every step runs inside a ``dsl.ExitHandler`` whose exit task
(:func:`components.lifecycle.finish_run`) ends the MLflow parent run FINISHED, or FAILED /
KILLED with the failing step named, whatever happened. Every step has a pod deadline
(``activeDeadlineSeconds``): a hung NCCL job gives its GPUs back after ``train_timeout_s``.
A step with retries gets a retry window (Argo's ``backoff.maxDuration``, counted from the
first attempt) long enough for every attempt to run to its deadline (:func:`retry_window_s`).

Per-step policy (why):

=========== ======= ======== ========= =================================================================
step        caching retries  image     reason
=========== ======= ======== ========= =================================================================
configure   on      0        CPU       a pure function of the run's parameters
start_run   off     1        CPU       must create a new MLflow parent run every time; a server hiccup
ingest      on      2        CPU       a source is read by reference (assumed immutable: a DVC revision or
                                       a versioned prefix); network reads may fail transiently
validate    on      0        CPU       deterministic: a failure is a data problem, not a flake
preprocess  on      0        CPU       deterministic in its inputs
train       off     3        CUDA      logs to this run's MLflow run; GPU nodes get preempted: with a
                                       checkpoint root the retried pod resumes from the s3:// checkpoint
evaluate    off     1        CPU       logs to this run's MLflow run (inference on CPU: a few volumes)
register    off     0        CPU       a side effect (a new model version, maybe an alias move): never
                                       served from cache, never repeated blindly
finish_run  off     2        CPU       the exit task: ends the parent run; must not be lost to a hiccup
=========== ======= ======== ========= =================================================================

Data on a cluster moves by reference: ``data_root`` defaults to ``s3://sasan-data/runs``
(each step writes its output folder there and passes only a pointer artifact). A mounted
volume (``--pvc``) must be ReadWriteMany: the baselines train in parallel pods on different
nodes (docs/kubeflow.md). Each data step's scratch (``/tmp``) is an emptyDir with a size limit.
Only the steps that read or write data (ingest, validate, preprocess, train, evaluate) get the
S3 credentials; MLflow proxies its artifacts, so the others need none.
"""

# no `from __future__ import annotations`: kfp reads the pipeline signature's types at runtime
from dataclasses import dataclass
from typing import Callable, Optional

from kfp import dsl, kubernetes

from sasan.tracking.lineage import IMAGE_ENV   # SASAN_IMAGE: the runs' `sasan.image` tag

PIPELINE_NAME = "sasan"

# Names of the cluster objects the steps read (infra/k8s/base/pipeline-access, secret-templates)
CLUSTER_CONFIG_MAP = "sasan-cluster-config"
CONFIG_MAP_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
# optional (a ConfigMap applied before the key existed still starts the pods): the runs' kfp.run_url link
OPTIONAL_CONFIG_MAP_ENV = ("KFP_UI_URL",)
EXIT_CONFIG_MAP_ENV = CONFIG_MAP_ENV + ("KFP_API_URL",)
MLFLOW_SECRET = "mlflow-credentials"
MLFLOW_SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
S3_SECRET = "s3-credentials"
S3_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
PVC_MOUNT = "/mnt/sasan-data"
SCRATCH_MOUNT = "/tmp"               # tempfile's default: every step's scratch lands here

# On a cluster big data moves by reference (docs/kubeflow.md); kfp.local passes data_root="".
DEFAULT_DATA_ROOT = "s3://sasan-data/runs"
DEFAULT_BASELINES = ["no_adaptation", "cyclegan", "upper_bound"]
DEFAULT_BASELINE_PARALLELISM = 2     # GPUs the baselines may hold at once (SASAN trains beside them)
DEFAULT_TRAIN_TIMEOUT_S = 24 * 3600  # one attempt; retries get their own deadline
# No node selector by default: the GPU resource request and the toleration of the GPU taint
# already put training on GPU nodes. (`nvidia.com/gpu.present=true` is set only by NVIDIA GPU
# Feature Discovery / the GPU operator: stock GKE/EKS GPU nodes do not carry it.)
DEFAULT_GPU_NODE_SELECTOR: dict = {}
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
DEFAULT_TRAIN_MEMORY = "18Gi"        # 16Gi for the processes + SHM_SIZE (tmpfs pages count against the limit)
SHM_MOUNT = "/dev/shm"
SHM_SIZE = "2Gi"                     # DataLoader workers' batches, NCCL's shared-memory transport

# Retries back off 1, 2, 4 min. Argo's retry window (backoff.maxDuration) counts from the first
# attempt and includes scheduling (a preempted GPU node takes a while to come back), image pulls
# and the back-off waits, so it must hold every attempt at its full deadline.
BACKOFF_S = 60
BACKOFF_FACTOR = 2.0
START_SLACK_S = 3600                 # per attempt: pending pod, node scale-up, image pull


def retry_window_s(retries: int, timeout_s: int) -> int:
    """The retry window that lets ``retries`` retries happen when every attempt runs to its
    ``timeout_s`` deadline: all attempts, each with ``START_SLACK_S`` to start, plus the back-offs."""
    backoff = sum(BACKOFF_S * BACKOFF_FACTOR ** i for i in range(retries))
    return int((retries + 1) * (timeout_s + START_SLACK_S) + backoff)


@dataclass(frozen=True)
class StepPolicy:
    caching: bool
    retries: int
    timeout_s: int                   # pod activeDeadlineSeconds, per attempt
    cpu: tuple = ("500m", "1")       # (request, limit)
    memory: tuple = ("1Gi", "1Gi")   # request = limit: no OOM kill for memory the node promised
    scratch: Optional[str] = None    # size of the /tmp emptyDir where the step's data lands
    gpu: bool = False                # CUDA image, GPU node; else the CPU image
    s3: bool = False                 # reads/writes data (data_root, sources, checkpoints): S3 credentials


POLICY = {
    "configure": StepPolicy(True, 0, 600),
    "start_run": StepPolicy(False, 1, 600),
    "ingest": StepPolicy(True, 2, 4 * 3600, ("1", "2"), ("4Gi", "4Gi"), scratch="100Gi", s3=True),
    "validate": StepPolicy(True, 0, 3600, ("1", "2"), ("4Gi", "4Gi"), scratch="100Gi", s3=True),
    "preprocess": StepPolicy(True, 0, 4 * 3600, ("2", "4"), ("8Gi", "8Gi"), scratch="200Gi", s3=True),
    # resources and timeout: pipeline parameters / compile-time setting (build_pipeline)
    "train": StepPolicy(False, 3, DEFAULT_TRAIN_TIMEOUT_S, scratch="100Gi", gpu=True, s3=True),
    "evaluate": StepPolicy(False, 1, 4 * 3600, ("2", "4"), ("8Gi", "8Gi"), scratch="100Gi", s3=True),
    "register": StepPolicy(False, 0, 1800, ("500m", "1"), ("2Gi", "2Gi")),
    "finish_run": StepPolicy(False, 2, 600),
}


def check_image(image: str) -> str:
    """``image`` if it is an immutable reference (a tag other than ``latest``, or a digest):
    Kubeflow caches by image reference, so a re-pushed moving tag serves stale results."""
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"not an image reference: {image!r}")
    name = image.rsplit("/", 1)[-1]
    if "@" not in name and (":" not in name or name.endswith(":latest")):
        raise ValueError(f"{image} is a moving tag: use a git SHA tag or a digest")
    return image


def cpu_image_for(image: str) -> str:
    """The CPU image built next to the CUDA image ``REGISTRY/sasan:<tag>`` (``make image-cpu``):
    ``REGISTRY/sasan-cpu:<tag>``. A digest names one image only: give the CPU image then."""
    if "@" in image.rsplit("/", 1)[-1]:
        raise ValueError(f"{image} is a digest: give the CPU image's own reference (--cpu-image)")
    path, tag = image.rsplit(":", 1)
    return f"{path}-cpu:{tag}"


def _schedule(task: dsl.PipelineTask, step: str, image: str, *, mlflow: bool = True, pvc: Optional[str] = None,
              cpu=None, memory=None, timeout_s: Optional[int] = None,
              config_env: tuple = CONFIG_MAP_ENV) -> dsl.PipelineTask:
    policy = POLICY[step]
    timeout_s = timeout_s or policy.timeout_s
    task.set_caching_options(policy.caching)
    task.set_container_image(image)
    task.set_env_variable(IMAGE_ENV, image)      # lineage: the run's `sasan.image` tag
    if policy.retries:
        task.set_retry(policy.retries, backoff_duration=f"{BACKOFF_S}s", backoff_factor=BACKOFF_FACTOR,
                       backoff_max_duration=f"{retry_window_s(policy.retries, timeout_s)}s")
    cpu_request, cpu_limit = (cpu, cpu) if cpu is not None else policy.cpu
    memory_request, memory_limit = (memory, memory) if memory is not None else policy.memory
    task.set_cpu_request(cpu_request).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory_request).set_memory_limit(memory_limit)
    kubernetes.set_timeout(task, timeout_s)
    if policy.scratch:
        # node-local scratch, world-writable (the image runs as uid 1000); a step that fills
        # more than the limit is evicted instead of filling the node's disk
        kubernetes.empty_dir_mount(task, "scratch", SCRATCH_MOUNT, size_limit=policy.scratch)
    kubernetes.use_config_map_as_env(task, CLUSTER_CONFIG_MAP, {k: k for k in config_env})
    if mlflow:
        kubernetes.use_config_map_as_env(task, CLUSTER_CONFIG_MAP, {k: k for k in OPTIONAL_CONFIG_MAP_ENV},
                                         optional=True)
    if policy.s3:
        kubernetes.use_secret_as_env(task, S3_SECRET, {k: k for k in S3_SECRET_ENV})
    if mlflow:
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {k: k for k in MLFLOW_SECRET_ENV})
    if pvc:
        kubernetes.mount_pvc(task, pvc, PVC_MOUNT)
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "sasan")
    kubernetes.add_pod_label(task, "sasan/step", step)
    return task


def build_pipeline(image: str, pvc: Optional[str] = None, cpu_image: Optional[str] = None,
                   baseline_parallelism: int = DEFAULT_BASELINE_PARALLELISM,
                   train_timeout_s: int = DEFAULT_TRAIN_TIMEOUT_S) -> Callable:
    """The pipeline function for one pair of image references: ``image`` (CUDA,
    ``REGISTRY/sasan:<git sha>``) runs training, ``cpu_image`` (default: ``REGISTRY/sasan-cpu``
    with the same tag) every other step. ``pvc``: a ReadWriteMany PersistentVolumeClaim mounted
    at /mnt/sasan-data in every data step (then ``data_root=/mnt/sasan-data/...`` keeps big
    data on it). ``baseline_parallelism``: at most this many baselines train at once.
    ``train_timeout_s``: deadline of one training attempt."""
    from components import make_components
    from components.lifecycle import finish_run

    image = check_image(image)
    cpu_image = check_image(cpu_image or cpu_image_for(image))
    if baseline_parallelism < 1:
        raise ValueError(f"baseline_parallelism must be >= 1, got {baseline_parallelism}")
    if train_timeout_s < 1:
        raise ValueError(f"train_timeout_s must be >= 1, got {train_timeout_s}")
    c = make_components(image)
    finish = dsl.component(finish_run, base_image=cpu_image, install_kfp_package=False)

    @dsl.pipeline(name=PIPELINE_NAME, description="SASAN cross-modality domain adaptation: ingest, validate, "
                  "preprocess, train SASAN and baselines, evaluate, register in MLflow.")
    def sasan_pipeline(
        data_source: str = "",
        layout: str = "",
        source: str = "",
        target: str = "",
        params: str = "",
        overrides: dict = {},
        experiment: str = "",
        baselines: list = DEFAULT_BASELINES,
        gpus: int = 1,
        accelerator_type: str = "nvidia.com/gpu",
        gpu_node_selector: dict = DEFAULT_GPU_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
        train_cpu: str = "4",
        train_memory: str = DEFAULT_TRAIN_MEMORY,
        data_root: str = DEFAULT_DATA_ROOT,
        checkpoint_root: str = "",
    ):
        """Empty data_source/layout/source/target/experiment: the params' values. data_source:
        phantom | local path | s3://BUCKET/PREFIX | dvc://REPO@REV/PATH (empty: params'
        ingest.source; phantom when no params are given); layout: nnunet|mmwhs|brats|paired;
        source/target: domain folders (direction); params: YAML text or a profile path inside
        the image (empty: defaults); overrides: {"dotted.key": value}; experiment: MLflow
        experiment; baselines: variants trained in parallel with SASAN; gpus: GPUs of each
        training task (> 1: torchrun, data-parallel); gpu_node_selector: extra node labels of
        the training tasks (default none); train_cpu/train_memory: request = limit of each
        training task (train_memory includes the /dev/shm tmpfs); data_root: s3://... (default)
        or a path on the mounted ReadWriteMany PVC where steps put big data, "" = data in KFP
        artifacts (kfp.local); checkpoint_root: s3://... for checkpoints that survive a
        preempted pod (empty: a retried attempt starts training over)."""
        # whatever happens inside, the exit task ends the parent run with the outcome (an exit
        # task may not consume other tasks' outputs: it finds the run by this job's id)
        exit_task = _schedule(finish(pipeline_job=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "finish_run", cpu_image,
                              config_env=EXIT_CONFIG_MAP_ENV)
        exit_task.set_display_name("finish MLflow run")
        with dsl.ExitHandler(exit_task, name="sasan-steps"):
            cfg = _schedule(c.configure(params=params, overrides=overrides, source=source, target=target,
                                        experiment=experiment, data_source=data_source, layout=layout),
                            "configure", cpu_image, mlflow=False)
            cfg.set_display_name("configure")
            config = cfg.outputs["config"]
            run = _schedule(c.start_run(config=config, pipeline_job=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "start_run",
                            cpu_image)
            run.set_display_name("start MLflow run")
            # the parent run travels as its reference file (run_id, experiment_id, tracking_uri):
            # kfp.local 2.17.3 resolves a task's output *parameter* inside a ParallelFor body to
            # the loop item, while artifacts resolve correctly there
            parent_run = run.outputs["run"]

            raw = _schedule(c.ingest(config=config, data_root=data_root), "ingest", cpu_image, mlflow=False, pvc=pvc)
            report = _schedule(c.validate(config=config, raw=raw.outputs["raw"]), "validate", cpu_image,
                               mlflow=False, pvc=pvc)
            shards = _schedule(c.preprocess(config=config, raw=raw.outputs["raw"], report=report.outputs["report"],
                                            data_root=data_root), "preprocess", cpu_image, mlflow=False, pvc=pvc)

            def train(variant) -> dsl.PipelineTask:
                # the resource values are also inputs: kfp 2.17's compiler passes a pipeline parameter
                # into a ParallelFor body only when a component input uses it, and the resource
                # settings alone do not count (the loop's train task then fails to resolve them)
                task = c.train(config=config, shards=shards.outputs["shards"], run=parent_run, variant=variant,
                               gpus=gpus, accelerator_type=accelerator_type, cpu=train_cpu, memory=train_memory,
                               checkpoint_root=checkpoint_root, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
                _schedule(task, "train", image, pvc=pvc, cpu=train_cpu, memory=train_memory, timeout_s=train_timeout_s)
                # memory-backed /dev/shm (the container default is 64 MiB): DataLoader workers pass
                # batches through it, NCCL's shared-memory transport needs it with gpus > 1
                kubernetes.empty_dir_mount(task, "shm", SHM_MOUNT, medium="Memory", size_limit=SHM_SIZE)
                task.set_accelerator_type(accelerator_type).set_accelerator_limit(gpus)
                kubernetes.add_node_selector_json(task, gpu_node_selector)
                kubernetes.add_toleration_json(task, gpu_tolerations)
                return task

            main = train("sasan").set_display_name("train sasan")
            with dsl.ParallelFor(baselines, parallelism=baseline_parallelism) as variant:
                baseline = train(variant).set_display_name("train baseline")

            evaluation = _schedule(c.evaluate(config=config, raw=raw.outputs["raw"], sasan_model=main.outputs["model"],
                                              baseline_models=dsl.Collected(baseline.outputs["model"]),
                                              run=parent_run), "evaluate", cpu_image, pvc=pvc)
            _schedule(c.register(config=config, sasan_model=main.outputs["model"],
                                 evaluation=evaluation.outputs["evaluation"], run=parent_run),
                      "register", cpu_image)

    return sasan_pipeline


def compile_pipeline(path: str, image: str, pvc: Optional[str] = None, cpu_image: Optional[str] = None,
                     **settings) -> str:
    """Write the compiled pipeline (IR YAML, uploadable in the Kubeflow UI) to ``path``.
    ``settings``: the other compile-time settings of :func:`build_pipeline`."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(image, pvc, cpu_image, **settings), package_path=str(path),
                                pipeline_name=PIPELINE_NAME)
    return str(path)

"""``sasan pipeline compile`` / ``submit`` / ``finish-run``: the Kubeflow pipeline of
``pipelines/sasan_pipeline.py`` (needs a source checkout: the pipeline and component
definitions are not part of the installed package, only what runs inside the image is)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sasan.errors import ConfigError, SasanError

TOKEN_ENV = "KF_PIPELINES_TOKEN"

SUBMIT_HELP = """\
Parameters (--param KEY=VALUE; each value is converted to the parameter's type in the compiled
pipeline: text for string parameters, YAML for numbers, lists and mappings; an unknown name is
an error): data_source (phantom | s3://... | dvc://REPO@REV/PATH | a path in the image or on
the PVC), layout, source, target, experiment (empty: the params' values), params (YAML text; or
use --params-file), overrides ({dotted.key: value}), baselines (list), gpus, accelerator_type,
gpu_node_selector (mapping, default none), gpu_tolerations (list), train_cpu, train_memory,
data_root, checkpoint_root (s3://sasan-data/checkpoints on infra's clusters: without it a
retried or preempted training starts over). Never pass credentials: the steps read them from
the cluster's Secrets.

Image: with --package the compiled file's images are used (give no compile options); without
it the pipeline is compiled here and --image (or $SASAN_IMAGE) is required.

Authentication: $KF_PIPELINES_TOKEN when set (a bearer token), else the projected
service-account token when running in the cluster, else none (a port-forwarded endpoint)."""


class PipelineError(SasanError):
    """The pipeline could not be compiled or submitted."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="Kubeflow: compile the pipeline, submit a run",
                       description="The same stages as `dvc repro`, as a Kubeflow pipeline.")
    ps = p.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND")

    c = ps.add_parser("compile", help="write the compiled pipeline YAML (upload it in the Kubeflow UI, or submit)")
    c.add_argument("out", type=Path, help="output file, e.g. pipeline.yaml")
    _compile_args(c)
    c.set_defaults(func=_compile)

    s = ps.add_parser("submit", help="compile (or take --package) and submit a run with kfp.Client; print its URL",
                      description="Compile the pipeline and start a run on a Kubeflow Pipelines endpoint.",
                      epilog=SUBMIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--host", required=True, help="Kubeflow Pipelines endpoint, e.g. http://localhost:8080")
    s.add_argument("--experiment", default="sasan", help="Kubeflow experiment (default: sasan)")
    s.add_argument("--run-name", default=None,
                   help="run name (default: sasan <source>-><target> <time>, the direction the run resolves)")
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter (repeatable)")
    s.add_argument("--params-file", type=Path, default=None,
                   help="a params.yaml/profile whose text becomes the `params` parameter")
    s.add_argument("--package", type=Path, default=None,
                   help="submit this compiled YAML (`sasan pipeline compile`) instead of compiling")
    s.add_argument("--no-cache", action="store_true", help="disable caching for every step of this run")
    _compile_args(s)
    s.set_defaults(func=_submit)

    f = ps.add_parser("finish-run", help="end the MLflow parent run of a Kubeflow run (e.g. one left RUNNING "
                                         "after a cancel)",
                      description="End the MLflow parent run tagged kfp.run_id=KFP_RUN_ID, as the pipeline's exit "
                                  "task would: for a cancelled run whose exit handler did not run. Reads "
                                  "MLFLOW_TRACKING_URI and the MLflow credentials from the environment.")
    f.add_argument("kfp_run_id", metavar="KFP_RUN_ID", help="the Kubeflow run id (in the run's URL)")
    f.add_argument("--status", choices=sorted(FINISH_STATES), default="KILLED",
                   help="MLflow status to set (default: KILLED)")
    f.add_argument("--force", action="store_true",
                   help="also overwrite a parent run that has already ended (default: only a RUNNING one)")
    f.set_defaults(func=_finish_run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# finish-run: MLflow status -> the pipeline state the exit task would have been handed
FINISH_STATES = {"KILLED": "CANCELLED", "FAILED": "FAILED", "FINISHED": "SUCCEEDED"}
# compile options: with --package they would be silently ignored, so they are refused
COMPILE_OPTIONS = ("image", "cpu_image", "pvc", "train_timeout_s", "baseline_parallelism")


def _compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=None,
                   help="CUDA image of the training steps, immutable: REGISTRY/sasan:<git sha> (what `make image` "
                        "tags: git rev-parse --short HEAD) or @sha256:...; required (or $SASAN_IMAGE): there is no "
                        "default registry")
    p.add_argument("--cpu-image", default=None,
                   help="image of the CPU steps (default: the --image repository with -cpu, same tag)")
    p.add_argument("--pvc", default=None,
                   help="mount this ReadWriteMany PersistentVolumeClaim at /mnt/sasan-data in data steps")
    p.add_argument("--train-timeout-s", type=int, default=None, metavar="SECONDS",
                   help="deadline of one training attempt (default: 86400); the retry window follows it")
    p.add_argument("--baseline-parallelism", type=int, default=None, metavar="N",
                   help="at most N baselines train at once (default: 2)")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _pipeline_module():
    try:
        return importlib.import_module("pipelines.sasan_pipeline")
    except ModuleNotFoundError as err:
        if err.name not in ("pipelines", "pipelines.sasan_pipeline", "components"):
            raise
    root = _repo_root()
    if not (root / "pipelines" / "sasan_pipeline.py").is_file():
        raise PipelineError("the pipeline definition is not here: run from a source checkout "
                            "(pipelines/ and components/ are not installed with the package)")
    sys.path.insert(0, str(root))
    return importlib.import_module("pipelines.sasan_pipeline")


def _image(args: argparse.Namespace) -> str:
    image = args.image or os.environ.get("SASAN_IMAGE")
    if not image:
        raise ConfigError("give the training image: --image REGISTRY/sasan:$(git rev-parse --short HEAD) "
                          "(what `make image` builds) or $SASAN_IMAGE")
    return image


def _compile_to(args: argparse.Namespace, out: Path) -> str:
    """Compile with the command's compile options into ``out``; returns the image."""
    image = _image(args)
    module = _pipeline_module()
    settings = {k: getattr(args, k) for k in ("train_timeout_s", "baseline_parallelism")
                if getattr(args, k) is not None}
    try:
        module.compile_pipeline(str(out), image, pvc=args.pvc, cpu_image=args.cpu_image, **settings)
    except (TypeError, ValueError) as err:
        raise PipelineError(f"compile failed: {err}") from None
    return image


def _compile(args: argparse.Namespace) -> int:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = _compile_to(args, args.out)
    print(f"compiled pipeline: {args.out} (image {image})")
    return 0


def parse_params(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` items -> {key: value text}; :func:`typed_params` converts the values."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


# the pipeline spec's parameter types -> (the Python type a value must have, its name)
PARAM_TYPES = {"NUMBER_INTEGER": (int, "an integer"), "NUMBER_DOUBLE": ((int, float), "a number"),
               "BOOLEAN": (bool, "true or false"), "LIST": (list, "a YAML list"), "STRUCT": (dict, "a YAML mapping")}


def typed_params(raw: dict[str, str], declared: dict[str, dict]) -> dict[str, Any]:
    """Each value converted to its parameter's declared type (``declared``: the compiled
    pipeline's ``root.inputDefinitions.parameters``): STRING parameters take the text as
    given (``train_cpu=8`` is "8"), the others parse it as YAML and must match."""
    unknown = sorted(set(raw) - set(declared))
    if unknown:
        raise ConfigError(f"unknown pipeline parameter {', '.join(unknown)}; valid: {', '.join(sorted(declared))}")
    out: dict[str, Any] = {}
    for key, text in raw.items():
        kind = declared[key].get("parameterType", "STRING")
        if kind not in PARAM_TYPES:
            out[key] = text
            continue
        expected, name = PARAM_TYPES[kind]
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = None
        if not isinstance(value, expected) or (isinstance(value, bool) and kind != "BOOLEAN"):
            raise ConfigError(f"--param {key}={text!r}: expected {name}")
        out[key] = float(value) if kind == "NUMBER_DOUBLE" else value
    return out


def _declared_params(package: Path) -> dict[str, dict]:
    try:
        spec = next(yaml.safe_load_all(package.read_text()))
        return dict(spec["root"].get("inputDefinitions", {}).get("parameters", {}))
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", package) from None
    except (yaml.YAMLError, UnicodeDecodeError, StopIteration, KeyError, TypeError, AttributeError):
        raise ConfigError("not a compiled pipeline (no root.inputDefinitions)", package) from None


def _experiment(arguments: dict[str, Any], keys: tuple[str, ...] = ("source", "target")) -> tuple[str, ...]:
    """The experiment settings ``keys`` the run resolves to, as configure does: the parameter
    (source, target), else the overrides, else the params text's experiment section, else the
    built-in defaults."""
    from sasan.config import ExperimentConfig

    try:
        doc = yaml.safe_load(arguments.get("params") or "")
    except yaml.YAMLError:
        doc = None
    section = doc.get("experiment") if isinstance(doc, dict) else None
    section = section if isinstance(section, dict) else {}
    overrides = arguments.get("overrides") or {}
    defaults = ExperimentConfig()
    return tuple(str(arguments.get(k) or overrides.get(f"experiment.{k}") or section.get(k) or getattr(defaults, k))
                 for k in keys)


def paired_baselines(arguments: dict[str, Any]) -> dict[str, Any]:
    """A paired-mode run (experiment.mode: paired) evaluates translators only: without a
    ``baselines`` parameter its baselines become ``["cyclegan"]`` (the pipeline's default list
    holds segmenters, which evaluate would refuse after every training had run); given
    baselines that do not translate are refused before submitting."""
    from sasan.train.variants import SEGMENTER_ONLY

    (mode,) = _experiment(arguments, ("mode",))
    if mode != "paired":
        return arguments
    if "baselines" not in arguments:
        print("sasan pipeline submit: paired mode: baselines [cyclegan] (translators only)", file=sys.stderr)
        return {**arguments, "baselines": ["cyclegan"]}
    segmenters = [b for b in arguments["baselines"] if b in SEGMENTER_ONLY]
    if segmenters:
        raise ConfigError(f"paired mode evaluates translators only: baselines {', '.join(segmenters)} do not "
                          "translate; e.g. --param 'baselines=[\"cyclegan\"]'")
    return arguments


def _client(host: str):
    import kfp

    token = os.environ.get(TOKEN_ENV)
    if token:
        return kfp.Client(host=host, existing_token=token)
    from kfp.client import set_volume_credentials

    sa_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", "/var/run/secrets/kubeflow/pipelines/token")
    if Path(sa_path).is_file():
        return kfp.Client(host=host, credentials=set_volume_credentials.ServiceAccountTokenVolumeCredentials(sa_path))
    return kfp.Client(host=host)


def run_url(host: str, run_id: str) -> str:
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def _submit(args: argparse.Namespace) -> int:
    import datetime

    from sasan.config import PIPELINE_FIELDS, config_from_pipeline

    raw = parse_params(args.param)
    if args.params_file:
        if "params" in raw:
            raise ConfigError("give the profile either as --params-file or as --param params=...")
        try:
            raw["params"] = args.params_file.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read: {err.strerror}", args.params_file) from None
        except UnicodeDecodeError:
            raise ConfigError("not a text (YAML) file", args.params_file) from None
    if args.package is not None:
        given = [f"--{k.replace('_', '-')}" for k in COMPILE_OPTIONS if getattr(args, k) is not None]
        if given:
            raise ConfigError(f"{' '.join(given)}: compile options; --package {args.package} is already compiled")
    with tempfile.TemporaryDirectory(prefix="sasan-pipeline-") as tmp:
        package = args.package
        if package is None:
            package = Path(tmp) / "pipeline.yaml"
            _compile_to(args, package)
        arguments = typed_params(raw, _declared_params(package))
        if args.params_file:     # resolved as the run's configure step will, before anything is submitted
            config_from_pipeline(args.params_file, arguments.get("overrides"),
                                 **{name: arguments.get(name) or "" for name in PIPELINE_FIELDS})
        arguments = paired_baselines(arguments)
        run_name = args.run_name or "sasan {}->{} {}".format(
            *_experiment(arguments), datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
        try:
            result = _client(args.host).create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name, experiment_name=args.experiment,
                enable_caching=False if args.no_cache else None)
        except Exception as err:  # kfp raises ApiException, urllib3 and requests errors alike
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PipelineError(f"submit to {args.host} failed: {type(err).__name__}: {first}") from None
    print(run_url(args.host, result.run_id))
    return 0


def _finish_run(args: argparse.Namespace) -> int:
    """The exit task's logic (components.lifecycle.finish_run) run by hand."""
    from kfp import dsl

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError("set MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME/PASSWORD) to the MLflow server")
    _pipeline_module()                     # puts the checkout's components/ on the path
    from components.lifecycle import PIPELINE_JOB_TAGS, finish_run

    if not args.force:
        from mlflow import MlflowClient

        client = MlflowClient()
        ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
        found = [r for i in range(0, len(ids), 100) for tag in PIPELINE_JOB_TAGS
                 for r in client.search_runs(ids[i:i + 100], f"tags.`{tag}` = '{args.kfp_run_id}'", max_results=100)
                 if "mlflow.parentRunId" not in r.data.tags]
        ended = sorted({r.info.status for r in found} - {"RUNNING"})
        if found and all(r.info.status != "RUNNING" for r in found):
            raise PipelineError(f"the MLflow parent run of {args.kfp_run_id} has already ended ({', '.join(ended)}); "
                                "--force overwrites it")
    state = FINISH_STATES[args.status]
    status = dsl.PipelineTaskFinalStatus(
        state=state, pipeline_job_resource_name=args.kfp_run_id, pipeline_task_name="sasan pipeline finish-run",
        error_code=None if state == "SUCCEEDED" else 1,
        error_message=None if state == "SUCCEEDED" else f"ended by hand: Kubeflow run {state.lower()}")
    if not finish_run(args.kfp_run_id, status):
        raise PipelineError(f"no MLflow parent run tagged kfp.run_id={args.kfp_run_id}")
    print(f"MLflow parent run of {args.kfp_run_id}: {args.status}")
    return 0

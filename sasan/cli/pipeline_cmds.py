"""``sasan pipeline compile`` / ``sasan pipeline submit``: the Kubeflow pipeline of
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
Parameters (--param KEY=VALUE, values parsed as YAML): data_source (phantom | s3://... |
dvc://REPO@REV/PATH | a path in the image or on the PVC), layout, source, target, params (YAML
text; or use --params-file), overrides ({dotted.key: value}), experiment, baselines (list),
gpus, accelerator_type, gpu_node_selector (mapping), gpu_tolerations (list), train_cpu,
train_memory, data_root, checkpoint_root. Never pass credentials: the steps read them from
the cluster's Secrets.

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
    _image_args(c)
    c.set_defaults(func=_compile)

    s = ps.add_parser("submit", help="compile and submit a run with kfp.Client; print its URL",
                      description="Compile the pipeline and start a run on a Kubeflow Pipelines endpoint.",
                      epilog=SUBMIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--host", required=True, help="Kubeflow Pipelines endpoint, e.g. http://localhost:8080")
    s.add_argument("--experiment", default="sasan", help="Kubeflow experiment (default: sasan)")
    s.add_argument("--run-name", default=None, help="run name (default: sasan <source>-><target> <time>)")
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter (repeatable)")
    s.add_argument("--params-file", type=Path, default=None,
                   help="a params.yaml/profile whose text becomes the `params` parameter")
    s.add_argument("--package", type=Path, default=None, help="submit this compiled YAML instead of compiling")
    s.add_argument("--no-cache", action="store_true", help="disable caching for every step of this run")
    _image_args(s)
    s.set_defaults(func=_submit)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=None,
                   help="CUDA image of the training steps, immutable: REGISTRY/sasan:<git sha> or @sha256:... "
                        "(default: $SASAN_IMAGE, else sasan:<HEAD commit> of this checkout)")
    p.add_argument("--cpu-image", default=None,
                   help="image of the CPU steps (default: the --image repository with -cpu, same tag)")
    p.add_argument("--pvc", default=None,
                   help="mount this ReadWriteMany PersistentVolumeClaim at /mnt/sasan-data in data steps")


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
    if args.image:
        image = args.image
    elif os.environ.get("SASAN_IMAGE"):
        image = os.environ["SASAN_IMAGE"]
    else:
        from sasan.tracking.provenance import git_commit, git_dirty

        sha = git_commit(_repo_root())
        if not sha:
            raise ConfigError("no --image given and no git commit to tag it with")
        if git_dirty(_repo_root()):
            print(f"sasan pipeline: warning: uncommitted changes; the image tag {sha[:12]} may not describe "
                  "the code", file=sys.stderr)
        image = f"sasan:{sha[:12]}"
    if image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
        print(f"sasan pipeline: warning: {image} is a moving tag; cached steps may run stale code "
              "(use a git SHA tag or a digest)", file=sys.stderr)
    return image


def _compile(args: argparse.Namespace) -> int:
    image = _image(args)
    module = _pipeline_module()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        module.compile_pipeline(str(args.out), image, pvc=args.pvc, cpu_image=args.cpu_image)
    except (TypeError, ValueError) as err:
        raise PipelineError(f"compile failed: {err}") from None
    print(f"compiled pipeline: {args.out} (image {image})")
    return 0


def parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


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

    arguments = parse_params(args.param)
    if args.params_file:
        if "params" in arguments:
            raise ConfigError("give the profile either as --params-file or as --param params=...")
        try:
            arguments["params"] = args.params_file.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read: {err.strerror}", args.params_file) from None
    run_name = args.run_name or "sasan {}->{} {}".format(
        arguments.get("source", "mr"), arguments.get("target", "ct"),
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
    with tempfile.TemporaryDirectory(prefix="sasan-pipeline-") as tmp:
        package = args.package
        if package is None:
            package = Path(tmp) / "pipeline.yaml"
            _pipeline_module().compile_pipeline(str(package), _image(args), pvc=args.pvc, cpu_image=args.cpu_image)
        try:
            result = _client(args.host).create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name, experiment_name=args.experiment,
                enable_caching=False if args.no_cache else None)
        except Exception as err:  # kfp raises ApiException, urllib3 and requests errors alike
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PipelineError(f"submit to {args.host} failed: {type(err).__name__}: {first}") from None
    print(run_url(args.host, result.run_id))
    return 0

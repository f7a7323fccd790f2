"""CLI: ``sasan train``, ``sasan evaluate``, ``sasan summary``, ``sasan translate`` (thin adapters over
sasan.stages and sasan.inference). The tracking store and the run context are read here,
at the edge (:mod:`sasan.cli.edge`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from sasan.cli.params import add_params_args, load_params
from sasan.errors import ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    add_params_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train SASAN and the baselines on preprocessed shards",
                        description="Run the training recipe (attention pre-training, joint adversarial "
                                    "training, fake-source augmentation, U-Net) for each variant into "
                                    "OUT/<variant>/: one MLflow parent run (OUT/mlflow_run.json), one child "
                                    "run per variant (OUT/<variant>/mlflow_run.json, resumed by a rerun).")
    tr.add_argument("shards", type=Path, help="preprocessed shards (output of `sasan preprocess`)")
    tr.add_argument("out", type=Path, help="output folder (one sub-folder per variant)")
    tr.add_argument("--variants", default=None,
                    help="default: evaluate.methods of the params; comma-separated: sasan, cyclegan, no_adaptation, upper_bound, no_seg_adversary, "
                         "no_aux, no_orthogonality, k16, no_fake_source, feature_disc")
    tr.add_argument("--run-ref", type=Path, default=None,
                    help="the parent MLflow run reference (default OUT/mlflow_run.json); an unfinished "
                         "run it names is continued")
    tr.add_argument("--parent-run-id", default=None,
                    help="use this MLflow run as the parent of the variants' runs (started elsewhere)")
    tr.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    tr.add_argument("--checkpoint-uri", default=None, metavar="s3://BUCKET/PREFIX",
                    help="keep checkpoints in object storage too: download what is there before training, "
                         "upload each checkpoint after it is saved (a preempted pod resumes from it)")
    _common(tr)
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="score each trained variant on the target test volumes",
                        description="3-D Dice and ASSD (voxels and mm) per structure on whole target test "
                                    "volumes, for every variant listed in evaluate.methods. Paired mode "
                                    "(experiment.mode: paired, translate-only bundles): MAE, RMSE, PSNR, SSIM "
                                    "and Pearson correlation of each translation against the real source image "
                                    "of the same subject.")
    ev.add_argument("raw", type=Path, help="ingested data set (canonical layout + manifest.json)")
    ev.add_argument("models", type=Path, help="training output folder (OUT of `sasan train`)")
    ev.add_argument("--metrics", type=Path, default=Path("metrics/evaluation.json"),
                    help="metrics JSON to write (default metrics/evaluation.json)")
    ev.add_argument("--report", type=Path, default=Path("reports/evaluation"),
                    help="report folder, replaced as a whole when the evaluation succeeds (default reports/evaluation)")
    ev.add_argument("--run-ref", type=Path, default=None, help="MLflow run reference (default MODELS/mlflow_run.json)")
    ev.add_argument("--no-predictions", action="store_true", help="do not write predicted NIfTI volumes")
    _common(ev)
    ev.set_defaults(func=_evaluate)

    sm = sub.add_parser("summary", help="print the results table of the last evaluation and where to look")
    sm.add_argument("--metrics", type=Path, default=Path("metrics/evaluation.json"),
                    help="metrics JSON written by `sasan evaluate` (default metrics/evaluation.json)")
    sm.add_argument("--report", type=Path, default=Path("reports/evaluation"),
                    help="evaluation report folder; its per_structure.json gives the label order of the columns "
                         "(default reports/evaluation)")
    sm.add_argument("--models", type=Path, default=Path("outputs/train"),
                    help="training output folder: its mlflow_run.json names the experiment to link, "
                         "its sasan/samples/ the translations (default outputs/train)")
    sm.set_defaults(func=_summary)

    tl = sub.add_parser("translate", help="translate and/or segment one target-modality NIfTI volume",
                        description="Translate a target-modality volume into the source modality (OUT) and/or "
                                    "segment it (--labels); outputs keep the input's affine and header and are "
                                    "written only when all of them succeeded. A bundle that does not translate "
                                    "(no_adaptation, upper_bound) takes --labels without OUT; one that does not "
                                    "segment (paired mode) takes OUT without --labels. Output paths, the "
                                    "device and the bundle kind are checked before the inference.")
    tl.add_argument("image", type=Path, help="input NIfTI (.nii or .nii.gz)")
    tl.add_argument("out", type=Path, nargs="?", default=None,
                    help="translated volume, values in [-1, 1] (.nii.gz gzip-compressed, .nii not); "
                         "optional with --labels, refused for a bundle that does not translate")
    tl.add_argument("--bundle", type=Path, required=True, help="model bundle (OUT/<variant>/model.pt)")
    tl.add_argument("--labels", type=Path, default=None,
                    help="write the label volume here (.nii or .nii.gz); refused for a bundle that does not segment")
    tl.add_argument("--modality", default=None,
                    help="input modality: a key of the bundle's preprocess.bounds (any case: MR is mr), "
                         "whose intensity bounds normalise the image; an unknown key is refused "
                         "(default: the bundle's target domain)")
    tl.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    tl.set_defaults(func=_translate)


def _train(args: argparse.Namespace) -> int:
    from sasan.train import distributed

    # under torchrun (`torchrun --nproc_per_node N -m sasan train ...`): one process per GPU;
    # rank 0 alone tracks, checkpoints and writes outputs
    dist_info = distributed.init_from_env(os.environ)
    try:
        return _train_ranked(args, dist_info)
    finally:
        distributed.shutdown()


def _train_ranked(args: argparse.Namespace, dist_info) -> int:
    from sasan import storage
    from sasan.cli.edge import run_context, tracking_uri
    from sasan.stages import train
    from sasan.stages.pipeline_run import start_pipeline_run
    from sasan.tracking.runs import Tracker, exit_status, write_run_ref
    from sasan.train import distributed

    cfg = load_params(args)
    variants = ([v.strip() for v in args.variants.split(",") if v.strip()] if args.variants
                else list(cfg.evaluate.methods))
    # everything training would refuse is refused before any run is started or file written
    train.check_inputs(train.TrainInputs(args.shards), cfg, variants)
    on_checkpoint = None
    if args.checkpoint_uri:
        if dist_info.local_rank == 0:   # one download per node, before any rank looks for checkpoints
            storage.download_if_exists(args.checkpoint_uri, args.out)
        distributed.barrier()

        def on_checkpoint(path: Path) -> None:
            storage.upload(path, storage.join_uri(args.checkpoint_uri, path.relative_to(args.out).as_posix()))

    context = run_context()
    ref_path = args.run_ref or args.out / "mlflow_run.json"
    owns_parent = False
    if args.no_tracking or not dist_info.is_main:
        parent = Tracker.disabled()
    elif args.parent_run_id:
        parent = Tracker.start(tracking_uri(), "", "", run_id=args.parent_run_id)
    else:   # dvc repro: this execution's parent run (continued when a previous attempt was cut short)
        parent = start_pipeline_run(tracking_uri(), cfg, context, ref_path)
        owns_parent = True
    if dist_info.is_main and not owns_parent:
        write_run_ref(ref_path, parent)
    try:
        summaries = train.run(train.TrainInputs(args.shards), train.TrainOutputs(args.out), cfg, parent, variants,
                              context, rank=dist_info.rank, world_size=dist_info.world_size,
                              progress=not args.no_progress, on_checkpoint=on_checkpoint)
        distributed.barrier()
    except BaseException as err:
        if owns_parent:
            parent.end(exit_status(type(err)))
        raise
    if owns_parent:
        parent.end()
    if not dist_info.is_main:
        return 0
    for variant, s in summaries.items():
        steps = {k: v.get("steps") for k, v in s.items() if isinstance(v, dict) and "steps" in v}
        print(f"{variant}: {steps} -> {args.out / variant / 'model.pt'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from sasan.stages import evaluate
    from sasan.tracking.runs import Tracker, read_run_ref

    cfg = load_params(args)
    models = {m: args.models / m / "model.pt" for m in cfg.evaluate.methods if (args.models / m / "model.pt").is_file()}
    missing = [m for m in cfg.evaluate.methods if m not in models]
    if not models:
        raise ConfigError(f"no trained model bundle under {args.models} for {list(cfg.evaluate.methods)}")
    if missing:
        print(f"sasan evaluate: skipping methods without a model: {', '.join(missing)}", file=sys.stderr)
    ref_path = args.run_ref or args.models / "mlflow_run.json"
    tracker = (Tracker.reopen(read_run_ref(ref_path), os.environ.get("MLFLOW_TRACKING_URI")) if ref_path.is_file()
               else Tracker.disabled())
    with tracker:
        results = evaluate.run(evaluate.EvaluateInputs(args.raw, models), evaluate.EvaluateOutputs(args.metrics, args.report),
                               cfg, tracker, save_predictions=not args.no_predictions, progress=not args.no_progress)
    print(evaluate.summary_table(results, [m for m in cfg.evaluate.methods if m in results],
                                 assd_cap_vox=cfg.evaluate.assd_cap_vox))
    print(f"metrics: {args.metrics}   report: {args.report}/")
    return 0


def _translate(args: argparse.Namespace) -> int:
    from sasan.bundle import load_bundle
    from sasan.errors import SasanError
    from sasan.inference import check_output_path, infer_volume, save_niftis
    from sasan.train.device import resolve_runtime

    # everything that can be refused is refused before the (long) inference
    if args.out is None and args.labels is None:
        raise ConfigError("nothing to write: give OUT (the translated volume), --labels, or both")
    outputs = [p for p in (args.out, args.labels) if p is not None]
    for path in outputs:
        check_output_path(path)
    if args.out is not None and args.labels is not None and args.out.resolve() == args.labels.resolve():
        raise ConfigError("OUT and --labels name the same file", args.labels)
    for path in outputs:
        if _same_file(path, args.image):
            raise ConfigError(f"is the input image {args.image}: it would be overwritten; write elsewhere", path)
    runtime = resolve_runtime(_translate_device(args.device))
    bundle = load_bundle(args.bundle, map_location=runtime.device)
    if args.out is not None and not bundle.translates:
        raise ConfigError(f"bundle {bundle.variant!r} does not translate: drop OUT and give --labels only",
                          args.bundle)
    if args.labels is not None and not bundle.segments:
        raise ConfigError(f"bundle {bundle.variant!r} does not segment (a paired-mode model translates only): "
                          "drop --labels and give OUT only", args.bundle)
    domain = bundle.cfg.experiment.target
    if args.modality is not None:
        _check_modality(args.modality, bundle.cfg.preprocess.bounds, domain, args.bundle)
    bundle = bundle.to(runtime.device)
    modality = args.modality or domain
    try:
        result = infer_volume(bundle, args.image, bundle.cfg.preprocess, modality, runtime, domain=domain)
    except RuntimeError as err:   # torch: out of memory, a CUDA error
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise SasanError(f"inference failed: {first.strip()}", args.image) from None
    except OSError as err:
        raise SasanError(f"cannot read: {err.strerror or err}", args.image) from None
    items = []
    if args.out is not None:
        items.append((result.translated, args.out))
    if args.labels is not None:
        items.append((result.labels, args.labels))
    save_niftis(items)
    print("   ".join(f"{what}: {path}" for what, path in (("translated", args.out), ("labels", args.labels))
                     if path is not None))
    return 0


def _check_modality(modality: str, bounds: dict, domain: str, bundle_path: Path) -> None:
    """``--modality`` names intensity bounds of the bundle's preprocessing config, looked up
    as preprocessing looks a modality up (lower-cased: the manifests spell ``MR``, ``CT``,
    ``T2``); an unknown one is refused, never silently replaced by the target domain's."""
    if modality.lower() not in bounds:
        hint = (f"; leave --modality out for the target domain's ({domain!r})" if domain.lower() in bounds
                else "")
        raise ConfigError(f"--modality {modality!r}: the bundle's preprocess.bounds has no such key (keys: "
                          f"{', '.join(sorted(bounds))}){hint}", bundle_path)


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (a link or another spelling of the path too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:     # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def _translate_device(device: str) -> str:
    """``--device`` checked: auto | cpu | cuda | cuda:N, CUDA only where there is one."""
    import re

    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def _summary(args: argparse.Namespace) -> int:
    from sasan.atomic import read_json
    from sasan.stages.evaluate import check_metrics, summary_table

    results = read_json(args.metrics, missing="no evaluation yet: run `make run` or `dvc repro`",
                        invalid="not a readable metrics JSON", error=ConfigError)
    if not isinstance(results, dict):
        raise ConfigError("not a metrics JSON of `sasan evaluate` (expected an object of methods)", args.metrics)
    check_metrics(results, args.metrics)
    order = [m for m in ("no_adaptation", "cyclegan", "sasan", "upper_bound") if m in results]
    order += [m for m in results if m not in order]
    # metrics JSON is key-sorted; the report's plot data keeps the label order
    structures = None
    plot_rows = args.report / "per_structure.json"
    if plot_rows.is_file():
        rows = read_json(plot_rows, missing="not found", invalid="not the report's per-structure rows",
                         error=ConfigError)
        try:
            structures = list(dict.fromkeys(row["structure"] for row in rows))
        except (TypeError, KeyError) as err:
            raise ConfigError(f"not the report's per-structure rows ({err})", plot_rows) from None
    print(summary_table(results, order, structures, _assd_cap_vox(args.report)))
    print()
    from sasan.stages.evaluate import is_paired_results

    report = args.report
    # the validation and register reports of the pipeline lie next to the evaluation report
    files = ([(report / "translations.png", "translations of every method on a paired test subject")]
             if is_paired_results(results) else
             [(report / "segmentations.png", "predictions of every method on a target test volume"),
              (report / "dice_per_structure.png", "Dice per structure and method")])
    files += [(args.models / "sasan" / "samples", "translations and attention maps"),
              (report.parent / "validation" / "validation.html", "data validation report"),
              (report.parent / "register" / "register.md", "registry decision")]
    # only what is there; the two DVC commands as two commands (each can be pasted alone)
    rows = [(f"{path}/" if path.is_dir() else str(path), note, []) for path, note in files if path.exists()]
    rows += [(f"{_on_path('dvc')} metrics show", "DVC's view of the metrics", []),
             (f"{_on_path('dvc')} plots show", "DVC's plots of the same numbers (HTML)", [])]
    width = max([38, *(len(what) for what, _, _ in rows)])     # a long store URI does not widen the rest
    print("Where to look:")
    for what, note, below in _mlflow_rows(args.models / "mlflow_run.json") + rows:
        if not note:
            print(f"  {what}")
        elif len(what) > width:     # the note on its own line: a command stays one line to paste
            print(f"  {what}\n    # {note}")
        else:
            print(f"  {what:<{width}} # {note}")
        for line in below:
            print(f"    {line}")
    return 0


def _assd_cap_vox(report: Path) -> Optional[float]:
    """The ASSD cap the evaluation used, as its ``identity.json`` records it; None when the
    report has none (an evaluation from before it was recorded): the footer then names the
    setting without a value."""
    from sasan.atomic import read_json
    from sasan.stages.evaluate import IDENTITY_FILE

    path = report / IDENTITY_FILE
    if not path.is_file():
        return None
    cap = read_json(path, missing="not found", invalid="not a readable identity file", error=ConfigError)
    cap = cap.get("assd_cap_vox") if isinstance(cap, dict) else None
    return float(cap) if isinstance(cap, (int, float)) else None


def _mlflow_rows(ref_path: Path) -> list[tuple[str, str, list[str]]]:
    """How to open the runs of the store the run reference at ``ref_path`` names: ``mlflow
    ui``, with ``--backend-store-uri`` unless that store is ./mlflow.db (what plain ``mlflow
    ui`` opens here), or a tracking server's own address; below it the runs table of that
    store's experiment and the run. No reference: plain ``mlflow ui``; a reference of an
    untracked run (``--no-tracking``): nothing."""
    import shlex

    from sasan.tracking.runs import read_run_ref, runs_table_url

    local = "http://127.0.0.1:5000"
    if not ref_path.is_file():
        return [(f"{_on_path('mlflow')} ui", "then open:", [local])]
    ref = read_run_ref(ref_path)
    experiment, run, uri = ref.get("experiment_id"), ref.get("run_id"), ref.get("tracking_uri") or ""
    if not experiment:
        return []
    server = uri.lower().startswith(("http://", "https://"))
    ui = uri.rstrip("/") if server else local
    links = [runs_table_url(experiment, ui)]
    if run:
        links.append(f"{ui}/#/experiments/{experiment}/runs/{run}  # this pipeline's run")
    if server:
        return [(links[0], "the runs table (curves, images, model) on the tracking server", links[1:])]
    command = f"{_on_path('mlflow')} ui"
    if uri and not _is_default_store(uri):
        command += f" --backend-store-uri {shlex.quote(uri)}"
    return [(command, "then open the runs table (curves, images, model):", links)]


def _is_default_store(uri: str) -> bool:
    """Whether ``uri`` is the store plain ``mlflow ui`` opens in this directory (./mlflow.db)."""
    from sasan.tracking.client import default_tracking_uri

    if not uri.startswith("sqlite:///"):
        return False
    db = uri[len("sqlite:///"):].split("?", 1)[0]
    default = default_tracking_uri(Path.cwd())[len("sqlite:///"):]
    return bool(db) and db != ":memory:" and (Path.cwd() / db).resolve() == Path(default).resolve()


def _on_path(tool: str) -> str:
    """How to call ``tool`` from this shell: its name when PATH finds it (an activated
    environment), else its path next to this Python (``.venv/bin/mlflow`` after `make run`)."""
    import shutil

    if shutil.which(tool):
        return tool
    beside = Path(sys.executable).parent / tool
    if not beside.is_file():
        return tool
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)

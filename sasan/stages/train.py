"""Train stage: the full recipe for each requested variant (SASAN and its baselines), each
into ``outputs.models/<variant>/`` (config.yaml, checkpoints, logs, samples, model.pt) and
each as an MLflow child run of the pipeline's parent run, named by the variant.

The child run's reference is kept next to the checkpoints (``<variant>/mlflow_run.json``):
a retried or resumed step re-opens the same child run and continues its checkpoints.
SIGTERM and SIGINT (Ctrl-C) checkpoint at the next step boundary and end the child run as
KILLED; the stage then raises :class:`sasan.train.loop.TrainingInterrupted` (exit 128 + signal)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from sasan.config import Config
from sasan.errors import DataError
from sasan.tracking.lineage import RunContext, log_lineage, read_identity
from sasan.train.loop import stop_signals_raise
from sasan.train.recipe import Trainer, open_shards
from sasan.train.variants import VARIANTS

if TYPE_CHECKING:
    from sasan.tracking.runs import Tracker

log = logging.getLogger(__name__)

RUN_REF = "mlflow_run.json"       # the parent's in outputs.models/, each child's in <variant>/


@dataclass(frozen=True)
class TrainInputs:
    shards: Path


@dataclass(frozen=True)
class TrainOutputs:
    models: Path                    # one sub-folder per variant


def object_store_checkpoints(checkpoint_uri: str, models: Path) -> Callable[[Path], None]:
    """Keep a variant's resume state in object storage (``s3://...``): what is there now is
    downloaded into ``models``; the returned hook uploads each file a retry needs."""
    from sasan import storage

    storage.download_if_exists(checkpoint_uri, models)

    def upload(path: Path) -> None:
        storage.upload(path, storage.join_uri(checkpoint_uri, Path(path).relative_to(models).as_posix()))
    return upload


def check_shards(shards: Path, cfg: Config) -> None:
    """Both domains' training shards exist, and no label reaches ``model.num_classes`` (a
    label value the networks have no output for; checked here, not as an index error deep in
    a loss after minutes of training). Paired mode reads no labels."""
    import numpy as np

    for domain in (cfg.experiment.source, cfg.experiment.target):
        images = shards / domain / "train" / "images.npy"
        if not images.is_file():
            raise DataError(f"no training shard for domain {domain!r}: run `sasan preprocess` first", images)
        labels = images.with_name("labels.npy")
        if labels.is_file() and cfg.experiment.mode == "unpaired":
            top = int(np.load(labels, mmap_mode="r").max(initial=0))
            if top >= cfg.model.num_classes:
                raise DataError(f"label value {top} but model.num_classes is {cfg.model.num_classes} "
                                f"(labels 0..{cfg.model.num_classes - 1}): set model.num_classes to match the data",
                                labels)


def check_inputs(inputs: TrainInputs, cfg: Config, variants: Sequence[str]) -> None:
    """Everything :func:`run` would refuse, checked before anything is written."""
    if not variants:
        raise DataError("no variant to train: give --variants or list evaluate.methods")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise DataError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    check_shards(Path(inputs.shards), cfg)


def run(inputs: TrainInputs, outputs: TrainOutputs, cfg: Config, tracker: "Tracker",
        variants: Sequence[str] = ("sasan",), context: RunContext = RunContext(), *,
        rank: int = 0, world_size: int = 1, progress: bool = True,
        on_checkpoint: Optional[Callable[[Path], None]] = None) -> dict[str, Any]:
    """Train ``variants`` in turn. ``tracker``: the parent run (disabled on ranks > 0 and
    without tracking). ``on_checkpoint(path)`` receives, on rank 0, every file a retried
    pod needs (checkpoints and the child run reference), e.g. to copy it to object storage."""
    shards, out_dir = Path(inputs.shards), Path(outputs.models)
    check_inputs(inputs, cfg, variants)
    data = read_identity(shards)
    log_lineage(tracker, context, data)         # the parent run: the same in DVC and Kubeflow
    jobs = min(cfg.train.jobs, len(variants))
    if jobs > 1 and world_size == 1 and on_checkpoint is None and _on_cpu(cfg):
        return _side_by_side(shards, out_dir, cfg, variants, tracker, context, data, jobs, progress)
    summaries: dict[str, Any] = {}
    with stop_signals_raise():
        for variant in variants:
            summaries[variant] = _train_variant(shards, out_dir / variant, cfg, variant, tracker, context, data,
                                                rank, world_size, progress, on_checkpoint)
    return summaries


# Relative cost of a variant on the CPU demo (joint steps dominate): the longest start first.
_COST = {"sasan": 4, "no_fake_source": 4, "cyclegan": 3}


def _on_cpu(cfg: Config) -> bool:
    from sasan.train.device import resolve_runtime

    return resolve_runtime(cfg.train.device, cfg.train.bf16, cfg.train.channels_last).device.type == "cpu"


def _side_by_side(shards: Path, out_dir: Path, cfg: Config, variants: Sequence[str], tracker: "Tracker",
                  context: RunContext, data, jobs: int, progress: bool) -> dict[str, Any]:
    """``train.jobs`` > 1 on CPU: variants in ``jobs`` worker processes, longest first, each
    worker with cores // jobs torch threads for every variant it trains, whatever the others do:
    a variant's float rounding then never depends on timing, so a rerun gives the same numbers
    (workers that took the cores of finished ones mid-run made two `make run`s differ from the
    step of the switch on). Small convolutions use two threads
    poorly, so two one-thread workers get more done than one two-thread process
    (docs/cpu-speed.md). A stop signal (SIGTERM, Ctrl-C) to the main process reaches the workers
    as SIGTERM (``pool.terminate``), one to the whole process group reaches them directly:
    either way each checkpoints and ends its child run KILLED as in the sequential path, quietly
    (no traceback per worker), and a rerun resumes. A worker whose main process is gone stops
    the same way."""
    import multiprocessing as mp

    import torch

    cores = torch.get_num_threads()
    ctx = mp.get_context("spawn")
    parent = (tracker.ref(), tracker.tracking_uri) if tracker.enabled else None
    log.info("training %s side by side: %d workers x %d thread(s)", ", ".join(variants), jobs,
             max(1, cores // jobs))
    pool = None
    with stop_signals_raise():      # a second signal does not cut the workers' stop short
        try:
            pool = _start_pool(ctx, jobs, max(1, cores // jobs))
            pending = {v: pool.apply_async(_variant_job, (shards, out_dir / v, cfg, v, parent, context, data, progress))
                       for v in sorted(variants, key=lambda v: -_COST.get(v, 1))}
            summaries = {v: pending[v].get() for v in variants}
        except BaseException:
            if pool is not None:
                pool.terminate()    # SIGTERM: each worker checkpoints and ends its child run KILLED
            raise
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return summaries


def _start_pool(ctx, jobs: int, threads: int):
    """The worker processes start with SIGINT ignored (a disposition a child inherits): a Ctrl-C
    while one imports torch would otherwise end it with a traceback. Workers the pool starts
    later to replace finished ones do not inherit it; _worker_init sets it as they start."""
    import threading

    def start():
        return ctx.Pool(jobs, initializer=_worker_init, initargs=(threads, logging.getLogger().level),
                        maxtasksperchild=1)

    if threading.current_thread() is not threading.main_thread():
        return start()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return start()
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker_init(threads: int, level: int) -> None:
    import torch

    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    # between tasks a Ctrl-C is the main process's to handle (it stops the pool); a task takes
    # SIGINT and SIGTERM as the sequential path does (stop_signals_raise in _variant_job)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop_when_parent_exits()


def _parent_gone() -> bool:
    import multiprocessing as mp

    parent = mp.parent_process()
    return parent is not None and not parent.is_alive()


def _stop_when_parent_exits() -> None:
    """A worker whose main process died (``kill -9``) stops as on SIGTERM: it checkpoints at
    the next step boundary and ends its child run KILLED, instead of training on for nobody."""
    import multiprocessing as mp
    import threading
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sasan-parent-watch", daemon=True).start()


def _variant_job(shards: Path, vdir: Path, cfg: Config, variant: str, parent, context: RunContext, data,
                 progress: bool) -> dict[str, Any]:
    from sasan.tracking.runs import Tracker

    try:
        with stop_signals_raise():
            tracker = Tracker.reopen(parent[0], tracking_uri=parent[1]) if parent else Tracker.disabled()
            return _train_variant(shards, vdir, cfg, variant, tracker, context, data, 0, 1, progress, None)
    finally:
        if _parent_gone():
            # nobody to hand the result to (the pool's pipe would raise BrokenPipeError in
            # multiprocessing's own code, with a traceback); checkpoint and child run are done
            logging.shutdown()
            sys.stderr.flush()
            os._exit(128 + signal.SIGTERM)


def _train_variant(shards: Path, vdir: Path, cfg: Config, variant: str, tracker: "Tracker", context: RunContext,
                   data, rank: int, world_size: int, progress: bool,
                   on_checkpoint: Optional[Callable[[Path], None]]) -> dict[str, Any]:
    """Train one variant in its MLflow child run."""
    log.info("training variant %s", variant)
    child = tracker.resume_child(vdir / RUN_REF, variant, tags={"sasan.variant": variant})
    if child.enabled and on_checkpoint is not None:
        on_checkpoint(vdir / RUN_REF)

    def on_log(phase: str, step: int, values: dict[str, float]) -> None:
        child.log_metrics(values, step=step, prefix=f"{phase}/")

    try:
        trainer = Trainer(cfg, vdir, variant, rank=rank, world_size=world_size, progress=progress,
                          on_checkpoint=on_checkpoint, data_identity=data,
                          on_log=on_log)
        log_lineage(child, context, data)
        child.log_config(trainer.cfg)
        summary = trainer.run(open_shards(shards, trainer.cfg, variant))
        if rank == 0:
            for png in sorted((vdir / "samples").glob("*.png")) + sorted((vdir / "logs").glob("*.png")):
                child.log_image(png, artifact_path="images")
            child.log_artifact(vdir / "summary.json", artifact_path="summary")
    except BaseException as err:
        from sasan.tracking.runs import exit_status

        child.end(exit_status(type(err)))
        raise
    child.end("FINISHED")
    return summary

"""Data components: configure, ingest, validate, preprocess.

Each function is the body of one Kubeflow component (see :func:`components.make_components`):
it runs inside the project image, imports ``sasan`` and calls one stage function. Big data
moves by reference when ``data_root`` is set (``s3://...`` or a mounted volume): the data go
to ``data_root/<step>-<hash of the output artifact's URI>`` (unique per execution, so a cached
step's reference stays valid) and the artifact holds only a pointer file
(:mod:`sasan.storage`); with ``data_root`` empty the artifact holds the data (``kfp.local``).
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Output


def configure(params: str, overrides: dict, source: str, target: str, experiment: str, data_source: str,
              layout: str, config: Output[Artifact]):
    """Resolve the run's configuration once; every later step reads this file.

    ``params``: a YAML text, or the path of a profile inside the image (empty: built-in
    defaults); ``overrides``: dotted keys -> values (``{"train.joint.max_steps": 10}``);
    non-empty ``source``/``target``/``experiment``/``data_source``/``layout`` override
    ``experiment.*`` and ``ingest.*``; empty ones keep the params' values. With no params at
    all the built-in defaults are the phantom demo, whose ``data/phantom`` folder is not in
    the image: ``data_source`` then defaults to ``phantom`` (generated in the ingest step)."""
    from sasan.config import config_from_pipeline, save_config

    cfg = config_from_pipeline(params, overrides, source=source, target=target, experiment=experiment,
                               data_source=data_source, layout=layout)
    save_config(cfg, config.path)
    config.metadata.update({"source": cfg.experiment.source, "target": cfg.experiment.target,
                            "experiment": cfg.experiment.name, "data_source": cfg.ingest.source})


def ingest(config: Input[Artifact], data_root: str, raw: Output[Dataset]):
    """``ingest.source`` (local path in the image/volume, ``s3://``, ``dvc://REPO@REV/PATH``, or
    ``phantom``: the built-in synthetic data set of ``phantom.*``) -> canonical raw layout."""
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.config import load_config
    from sasan.stages import ingest as stage
    from sasan.tracking.runs import Tracker

    cfg = load_config(config.path)
    with tempfile.TemporaryDirectory(prefix="sasan-ingest-") as scratch:
        out = Path(raw.path) if not data_root else Path(scratch) / "raw"
        summary = stage.run(stage.IngestInputs(cfg.ingest.source), stage.IngestOutputs(out), cfg, Tracker.disabled())
        raw.metadata.update({"cases": summary["cases"], "layout": summary["layout"], "digest": summary["data_digest"],
                             "location": storage.publish(out, data_root, storage.output_name("raw", raw.uri), raw.path)})


def validate(config: Input[Artifact], raw: Input[Dataset], report: Output[HTML]):
    """Validation report (HTML); the step fails on any error-level check."""
    import shutil
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.config import load_config
    from sasan.stages import validate as stage
    from sasan.tracking.runs import Tracker

    with tempfile.TemporaryDirectory(prefix="sasan-validate-") as scratch:
        raw_dir = storage.localize(raw.path, Path(scratch) / "raw")
        result = stage.run(stage.ValidateInputs(raw_dir), stage.ValidateOutputs(Path(scratch) / "report"),
                           load_config(config.path), Tracker.disabled())
        shutil.copyfile(Path(scratch) / "report" / "validation.html", report.path)
    report.metadata.update({"cases": result["n_cases"], "warnings": result["n_warnings"]})


def preprocess(config: Input[Artifact], raw: Input[Dataset], report: Input[HTML], data_root: str,
               shards: Output[Dataset]):
    """Slice shards of every domain (``report`` only orders this step after validation)."""
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.config import load_config
    from sasan.stages import preprocess as stage
    from sasan.tracking.runs import Tracker

    with tempfile.TemporaryDirectory(prefix="sasan-preprocess-") as scratch:
        raw_dir = storage.localize(raw.path, Path(scratch) / "raw")
        out = Path(shards.path) if not data_root else Path(scratch) / "shards"
        stage.run(stage.PreprocessInputs(raw_dir), stage.PreprocessOutputs(out), load_config(config.path),
                  Tracker.disabled())
        shards.metadata["location"] = storage.publish(out, data_root, storage.output_name("shards", shards.uri), shards.path)

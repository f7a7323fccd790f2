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
    ``experiment.*`` and ``ingest.*``."""
    import tempfile
    from pathlib import Path

    from sasan.config import load_config, save_config

    def exact(value):
        # KFP carries dict parameters as protobuf Structs, where every number is a double:
        # 3 arrives as 3.0, which an int field rejects (a float field accepts an int)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return [exact(v) for v in value]
        return {k: exact(v) for k, v in value.items()} if isinstance(value, dict) else value

    extra = {key: exact(value) for key, value in (overrides or {}).items()}
    for key, value in (("experiment.source", source), ("experiment.target", target),
                       ("experiment.name", experiment), ("ingest.source", data_source),
                       ("ingest.layout", layout)):
        if value:
            extra[key] = value
    if params and "\n" not in params and Path(params).is_file():
        cfg = load_config(params, extra)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text_file = Path(tmp) / "params.yaml"
            text_file.write_text(params or "{}")
            cfg = load_config(text_file, extra)
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
    from sasan.data.ingest import run_ingest
    from sasan.data.phantom import generate_phantom

    cfg = load_config(config.path)
    with tempfile.TemporaryDirectory(prefix="sasan-ingest-") as scratch:
        source, layout = cfg.ingest.source, cfg.ingest.layout
        if source == "phantom":
            source, layout = str(Path(scratch) / "phantom"), "nnunet"
            generate_phantom(source, cases=cfg.phantom.cases, seed=cfg.phantom.seed, domains=tuple(cfg.phantom.domains),
                             mr_contrast=cfg.phantom.mr_contrast)
        out = Path(raw.path) if not data_root else Path(scratch) / "raw"
        summary = run_ingest(source, out, layout=layout, test_fraction=cfg.ingest.test_fraction,
                             seed=cfg.ingest.seed)
        raw.metadata.update({"cases": summary["cases"], "layout": summary["layout"],
                             "location": storage.publish(out, data_root, storage.output_name("raw", raw.uri), raw.path)})


def validate(config: Input[Artifact], raw: Input[Dataset], report: Output[HTML]):
    """Validation report (HTML); the step fails on any error-level check."""
    import shutil
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.config import load_config
    from sasan.data.validate import run_validate

    with tempfile.TemporaryDirectory(prefix="sasan-validate-") as scratch:
        raw_dir = storage.localize(raw.path, Path(scratch) / "raw")
        result = run_validate(raw_dir, Path(scratch) / "report", load_config(config.path).validate_)
        shutil.copyfile(Path(scratch) / "report" / "validation.html", report.path)
    report.metadata.update({"cases": result["n_cases"], "warnings": result["n_warnings"]})


def preprocess(config: Input[Artifact], raw: Input[Dataset], report: Input[HTML], data_root: str,
               shards: Output[Dataset]):
    """Slice shards of every domain (``report`` only orders this step after validation)."""
    import tempfile
    from pathlib import Path

    from sasan import storage
    from sasan.config import load_config
    from sasan.data.preprocess import run_preprocess

    with tempfile.TemporaryDirectory(prefix="sasan-preprocess-") as scratch:
        raw_dir = storage.localize(raw.path, Path(scratch) / "raw")
        out = Path(shards.path) if not data_root else Path(scratch) / "shards"
        run_preprocess(raw_dir, out, load_config(config.path).preprocess)
        shards.metadata["location"] = storage.publish(out, data_root, storage.output_name("shards", shards.uri), shards.path)

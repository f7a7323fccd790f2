"""Ingest stage: a data set source -> the canonical raw layout + ``manifest.json``, split
fixed once (``cfg.ingest``). The source ``phantom`` generates the embedded data set first."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sasan.config import Config
from sasan.data.ingest import run_ingest
from sasan.tracking.lineage import data_identity

if TYPE_CHECKING:
    from sasan.tracking.runs import Tracker

PHANTOM_SOURCE = "phantom"


@dataclass(frozen=True)
class IngestInputs:
    source: str             # folder/archive, s3://BUCKET/PREFIX, dvc://REPO@REV/PATH or "phantom"
    # whether cfg.experiment is the experiment the data is for (Kubeflow, DVC, `sasan ingest
    # --params/--set`); False: none is known, and the layout decides paired splitting
    experiment_known: bool = True


@dataclass(frozen=True)
class IngestOutputs:
    raw: Path


def run(inputs: IngestInputs, outputs: IngestOutputs, cfg: Config, tracker: "Tracker") -> dict[str, Any]:
    """Ingest ``inputs.source`` with ``cfg.ingest``'s layout, test fraction and seed, and
    ``cfg.validate_.affine_atol_mm`` as the image/label affine tolerance; the summary
    carries the data set's identity (manifest content digest, test split). In paired mode
    (``cfg.experiment.mode: paired``) the test quota counts the subjects with an image in both
    ``cfg.experiment.source`` and ``cfg.experiment.target``, labelled or not; the layout does
    not decide it. Only without a known experiment (``inputs.experiment_known`` false) does
    layout ``paired`` mean paired mode, a complete pair then having every modality."""
    from sasan.stages import phantom

    c = cfg.ingest
    with tempfile.TemporaryDirectory(prefix="sasan-ingest-") as scratch:
        source, layout = inputs.source, c.layout
        if source == PHANTOM_SOURCE:
            source, layout = str(Path(scratch) / "phantom"), "nnunet"
            phantom.run(phantom.PhantomOutputs(Path(source)), cfg, tracker)
        paired, pair = None, None                   # no experiment: the layout decides
        if inputs.experiment_known:
            paired = cfg.experiment.mode == "paired"
            pair = (cfg.experiment.source, cfg.experiment.target) if paired else None
        summary = run_ingest(source, outputs.raw, layout=layout, test_fraction=c.test_fraction, seed=c.seed,
                             affine_atol_mm=cfg.validate_.affine_atol_mm, paired=paired, pair=pair)
    identity = data_identity(outputs.raw)
    tracker.set_tags(identity.tags())
    return {**summary, "data_digest": identity.digest}

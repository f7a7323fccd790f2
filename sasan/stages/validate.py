"""Validate stage: checks of the raw data set, and of what ``cfg.experiment`` needs of it
(unpaired: labelled source train cases, labelled target test cases; paired: no labels, but
complete paired subjects in test and train, each subject in one split); reports as JSON and
HTML. Raises :class:`sasan.errors.ValidationFailed` (after writing the
reports) on an error-level check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sasan.config import Config
from sasan.data.validate import run_validate

if TYPE_CHECKING:
    from sasan.tracking.runs import Tracker


@dataclass(frozen=True)
class ValidateInputs:
    raw: Path


@dataclass(frozen=True)
class ValidateOutputs:
    report: Path            # folder: validation.json, validation.html


def run(inputs: ValidateInputs, outputs: ValidateOutputs, cfg: Config, tracker: "Tracker") -> dict[str, Any]:
    try:
        report = run_validate(inputs.raw, outputs.report, cfg.validate_, cfg.experiment, cfg.model.num_classes)
    finally:
        if (outputs.report / "validation.html").is_file():
            tracker.log_artifact(outputs.report, "validation")
    tracker.log_metrics({"cases": report["n_cases"], "warnings": report["n_warnings"]}, prefix="validation")
    return report

"""Validate stage: checks of the raw data set, and of what ``cfg.experiment`` needs of it
(unpaired: labelled source train cases, labelled target test cases; paired: no labels, but
complete paired subjects in test and train, each subject in one split); reports as JSON and
HTML. Raises :class:`sasan.errors.ValidationFailed` (after writing the
reports) on an error-level check; :func:`warning_lines` says which warning-level checks
failed, and where, in a few lines for the console."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

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


def warning_lines(report: dict[str, Any], max_lines: int = 5, per_check: int = 3) -> list[str]:
    """One line per failed warning-level check: its name, the first offender with its reason,
    and up to ``per_check`` offenders in all (``and N more``); at most ``max_lines`` lines, the
    last saying how many checks more the report lists."""
    failed = [c for c in report.get("checks", ()) if c.get("severity") == "warning" and not c.get("success")]
    shown = failed if len(failed) <= max_lines else failed[:max_lines - 1]
    root = report.get("raw_dir")
    lines = []
    for check in shown:
        failures = check.get("failures") or []
        line = f"warning [{check['check']}]"
        if failures:
            first = failures[0]
            where = _where(first, root)
            line += f": {where + ': ' if where else ''}{_short(first.get('reason') or '')}"
            others = [w for w in (_where(f, root) for f in failures[1:per_check]) if w]
            if others:
                line += f"; also {', '.join(others)}"
            if len(failures) > per_check:
                line += f" and {len(failures) - per_check} more"
        lines.append(line)
    if len(failed) > len(shown):
        lines.append(f"... and {len(failed) - len(shown)} more warning check(s) in the report")
    return lines


def _where(failure: dict[str, Any], root: Optional[str]) -> str:
    """The offending file (relative to the data set), else its case, else its domain."""
    file = failure.get("file")
    if file:
        try:
            return str(Path(file).relative_to(root)) if root else str(file)
        except ValueError:
            return str(file)
    parts = [failure.get(k) for k in ("domain", "split", "case_id")]
    return "/".join(str(p) for p in parts if p)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."

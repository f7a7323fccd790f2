"""The gated model registry: every evaluated model becomes a registered version; the alias
(``champion``) moves to it only when its target mean Dice passes the threshold AND beats
the current champion's. The decision and its numbers go to ``register.json`` and
``register.md``.

Each version carries its score as the tag ``target_mean_dice``, so the next gate compares
against the number the champion was promoted with, not a re-computation. Aliases, never the
deprecated stages (STYLE.md 16)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sasan.atomic import write_json, write_text
from sasan.config import RegisterConfig
from sasan.errors import DataError
from sasan.tracking.runs import TrackingError, _call, process_tracking_uri, redact_uri

log = logging.getLogger(__name__)

DICE_TAG = "target_mean_dice"
GATE_TAG = "sasan.gate"
DEFAULT_METHOD = "sasan"


class MetricsError(DataError):
    """The evaluation metrics file is missing, not JSON or lacks the score the gate needs."""


@dataclass
class GateDecision:
    dice: float
    min_dice: float
    champion_version: Optional[str]
    champion_dice: Optional[float]
    promote: bool
    reasons: list[str] = field(default_factory=list)


def load_evaluation(path: str | Path) -> dict[str, Any]:
    """``metrics/evaluation.json`` as a dict (the evaluate stage's format)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MetricsError("evaluation metrics not found (written by `sasan evaluate`)", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetricsError(f"not valid JSON: {err}", path) from None
    if not isinstance(data, dict):
        raise MetricsError("top level must be an object {method: {per_structure, mean}}", path)
    return data


def target_mean_dice(metrics: dict[str, Any], method: str = DEFAULT_METHOD,
                     origin: Optional[str | Path] = None) -> float:
    """``metrics[method]["mean"]["dice"]``, checked to be a number in [0, 1]."""
    where = f"{method}.mean.dice"
    try:
        value = metrics[method]["mean"]["dice"]
    except (KeyError, TypeError):
        methods = sorted(metrics) if isinstance(metrics, dict) else []
        raise MetricsError(f"no {where} in the evaluation metrics (methods present: {methods or 'none'})",
                           origin) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetricsError(f"{where} must be a finite number, got {value!r}", origin)
    if not 0.0 <= value <= 1.0:
        raise MetricsError(f"{where} must lie in [0, 1], got {value}", origin)
    return float(value)


def decide(dice: float, min_dice: float, champion_version: Optional[str],
           champion_dice: Optional[float]) -> GateDecision:
    """The gate, as a pure function: threshold AND (no champion OR strictly better)."""
    reasons = []
    passes = dice >= min_dice
    reasons.append(f"target mean Dice {dice:.4f} {'>=' if passes else '<'} threshold {min_dice:.4f}")
    if champion_version is None:
        beats = True
        reasons.append("no current champion: the threshold alone decides")
    elif champion_dice is None:
        beats = False
        reasons.append(f"champion v{champion_version} has no {DICE_TAG} tag: it is not replaced automatically")
    else:
        beats = dice > champion_dice
        reasons.append(f"target mean Dice {dice:.4f} {'>' if beats else '<='} champion v{champion_version}'s "
                       f"{champion_dice:.4f}")
    return GateDecision(dice, min_dice, champion_version, champion_dice, passes and beats, reasons)


def register_and_gate(tracking_uri: Optional[str], model_uri: str, metrics: dict[str, Any],
                      cfg: RegisterConfig, run_id: Optional[str], report_dir: str | Path,
                      method: str = DEFAULT_METHOD, metrics_origin: Optional[str | Path] = None) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``cfg.model_name``, tag it with its
    target mean Dice, move ``cfg.alias`` to it if the gate passes, write the report.
    Returns the report dict."""
    dice = target_mean_dice(metrics, method, metrics_origin)   # before touching the registry
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    uri = client.tracking_uri
    name, alias = cfg.model_name, cfg.alias
    _ensure_registered_model(client, name)
    champion_version, champion_dice = current_champion(client, name, alias)
    decision = decide(dice, cfg.min_dice, champion_version, champion_dice)

    model_id = model_uri[len("models:/"):] if model_uri.startswith("models:/m-") else None
    with process_tracking_uri(uri):     # the store resolves models:/ sources via the global URI
        version = _call(client.create_model_version, uri, name, source=model_uri, run_id=run_id,
                        model_id=model_id, tags={DICE_TAG: repr(dice), GATE_TAG: _verdict(decision)},
                        description="; ".join(decision.reasons)).version
    if decision.promote:
        _call(client.set_registered_model_alias, uri, name, alias, version)
        log.info("%s v%s promoted to %r (target mean Dice %.4f)", name, version, alias, dice)
    else:
        log.info("%s v%s registered, %r unchanged: %s", name, version, alias, "; ".join(decision.reasons))
    if run_id:
        _call(client.set_tag, uri, run_id, "sasan.registered_version", f"{name}/{version}")
        _call(client.set_tag, uri, run_id, GATE_TAG, _verdict(decision))

    report = {
        "model_name": name, "version": str(version), "model_uri": model_uri, "run_id": run_id,
        "method": method, "alias": alias, "target_mean_dice": dice, "min_dice": cfg.min_dice,
        "previous_champion": None if champion_version is None else
        {"version": champion_version, "target_mean_dice": champion_dice},
        "promoted": decision.promote,
        "champion_version": str(version) if decision.promote else champion_version,
        "reasons": decision.reasons, "tracking_uri": redact_uri(uri),
    }
    write_report(report, Path(report_dir))
    return report


def current_champion(client: MlflowClient, name: str, alias: str) -> tuple[Optional[str], Optional[float]]:
    """(version, its target mean Dice tag) of the model the alias points at, or (None, None)."""
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None, None
        raise TrackingError(f"cannot read alias {alias!r} of {name!r}: {err.message}",
                            redact_uri(client.tracking_uri)) from None
    try:
        dice = float(mv.tags[DICE_TAG])
    except (KeyError, ValueError):
        dice = None
    return str(mv.version), (dice if dice is not None and math.isfinite(dice) else None)


def write_report(report: dict[str, Any], report_dir: Path) -> None:
    write_json(report_dir / "register.json", report)
    write_text(report_dir / "register.md", render_markdown(report))


def render_markdown(r: dict[str, Any]) -> str:
    name, alias, prev = r["model_name"], r["alias"], r["previous_champion"]
    if r["promoted"]:
        verdict = f"**Promoted**: `{name}` v{r['version']} is now `@{alias}`."
    else:
        where = f"stays on v{r['champion_version']}" if r["champion_version"] else "is not set"
        verdict = f"**Not promoted**: `{name}` v{r['version']} is registered; `@{alias}` {where}."
    prev_dice = "n/a" if prev is None or prev["target_mean_dice"] is None else f"{prev['target_mean_dice']:.4f}"
    lines = [
        f"# Model registration: {name}", "", verdict, "",
        f"Gate: target mean Dice of `{r['method']}` >= `register.min_dice` AND > the current `@{alias}`'s.", "",
        "| | version | target mean Dice |", "|---|---|---|",
        f"| candidate | v{r['version']} | {r['target_mean_dice']:.4f} |",
        f"| previous {alias} | {'v' + prev['version'] if prev else 'none'} | {prev_dice} |",
        f"| threshold | | {r['min_dice']:.4f} |", "",
        "Reasons:", "", *[f"- {reason}" for reason in r["reasons"]], "",
        f"Model: `{r['model_uri']}`" + (f", run `{r['run_id']}`" if r["run_id"] else "")
        + f", tracking store `{r['tracking_uri']}`", "",
    ]
    return "\n".join(lines)


def _verdict(decision: GateDecision) -> str:
    return "promoted" if decision.promote else "rejected"


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
        return
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"cannot read registered model {name!r}: {err.message}",
                                redact_uri(client.tracking_uri)) from None
    try:
        client.create_registered_model(name, description="SASAN target-modality segmenter (sasan register)")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":   # created concurrently: fine
            raise TrackingError(f"cannot create registered model {name!r}: {err.message}",
                                redact_uri(client.tracking_uri)) from None

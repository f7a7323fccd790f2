"""The gated model registry: every evaluated model becomes a registered version; the alias
(``champion``) moves to it only when its score passes the threshold AND beats the current
champion's. The decision and its numbers go to ``register.json`` and ``register.md``.

The score is the target mean Dice (``register.min_dice``) of a segmentation evaluation, or,
for a paired evaluation (``"mode": "paired"`` in the metrics: a translate-only model scored
by image metrics), the mean SSIM of its translations (``register.min_ssim``; higher is
better). Each version carries its score as the tag ``target_mean_dice`` or
``target_mean_ssim`` and its evaluation identity (data set digest, target test split, image
size, profile, direction; for a paired evaluation also ``mode``, ``translation_mask``, the
voxels scored, and ``preprocess_digest``, a digest of the gated bundle's preprocessing,
which makes the real image its translations are scored against) as ``sasan.eval.*`` tags, so
the next gate compares against the number the champion was promoted with, and only when
both were measured the same way on the same identity: a challenger scored by another
metric, evaluated on other data, another split, another image size (or, paired, another
mask or preprocessing) is registered but never promoted over (or blocked by a champion of)
another identity without saying so: the report gives the reason, and the fix is a
``register.model_name`` per data set and mode.

Promotion is serialised across concurrent runs by a lock: a registered model named
``<model>.gate-lock``, created atomically (the store refuses a second one) and deleted
after; the champion is read, compared and moved while it is held, and the alias is read
back before the lock is released. A waiter polls (sleeping between tries) until a deadline;
it breaks a lock older than ``LOCK_STALE_S`` only if the lock still names the holder it
read (another waiter may have broken and re-taken it meanwhile). Aliases, never the
deprecated stages (STYLE.md 16)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from sasan.atomic import read_json, write_json, write_text
from sasan.config import RegisterConfig
from sasan.errors import DataError
from sasan.tracking.client import TrackingError, mlflow_call, process_tracking_uri, redact_uri

log = logging.getLogger(__name__)

DICE_TAG = "target_mean_dice"
SSIM_TAG = "target_mean_ssim"             # paired evaluation: mean SSIM of the translations
SCORE_TAGS = {"dice": DICE_TAG, "ssim": SSIM_TAG}
METRIC_NAMES = {"dice": "Dice", "ssim": "SSIM"}
GATE_TAG = "sasan.gate"
DEFAULT_METHOD = "sasan"
IDENTITY_TAG = "sasan.eval."              # + one of IDENTITY_FIELDS
IDENTITY_KEY_TAG = "sasan.eval.key"       # digest of all fields: one string to compare and search
IDENTITY_FIELDS = ("dataset", "data_digest", "source", "target", "test_split", "image_size", "profile")
PAIRED_FIELD = "mode"                     # only in a paired evaluation's identity ("paired")
MASK_FIELD = "translation_mask"           # only in a paired evaluation's identity: the voxels scored
PREPROCESS_FIELD = "preprocess_digest"    # only in a paired evaluation's identity, per method: the
                                          # digest of the preprocessing that makes the reference image
PAIRED_ONLY_FIELDS = (PAIRED_FIELD, MASK_FIELD, PREPROCESS_FIELD)   # tags read back when present
LOCK_SUFFIX = ".gate-lock"
LOCK_WAIT_S = 300.0
LOCK_STALE_S = 900.0                      # a lock older than this was left by a crashed run
LOCK_HOLDER_TAG = "sasan.lock.holder"
LOCK_SINCE_TAG = "sasan.lock.since"


class MetricsError(DataError):
    """The evaluation metrics file is missing, not JSON or lacks the score the gate needs."""


@dataclass
class GateDecision:
    score: float                    # the candidate's target mean Dice or SSIM (``metric``)
    threshold: float
    champion_version: Optional[str]
    champion_score: Optional[float]
    promote: bool
    reasons: list[str] = field(default_factory=list)
    identity_key: Optional[str] = None
    metric: str = "dice"


def load_evaluation(path: str | Path) -> dict[str, Any]:
    """``metrics/evaluation.json`` as a dict (the evaluate stage's format)."""
    path = Path(path)
    data = read_json(path, missing="evaluation metrics not found (written by `sasan evaluate`)", error=MetricsError)
    if not isinstance(data, dict):
        raise MetricsError("top level must be an object {method: {per_structure, mean}}", path)
    return data


def target_mean_dice(metrics: dict[str, Any], method: str = DEFAULT_METHOD,
                     origin: Optional[str | Path] = None) -> float:
    """``metrics[method]["mean"]["dice"]``, checked to be a number in [0, 1]."""
    return _mean_score(metrics, method, "dice", (0.0, 1.0), origin)


def target_mean_ssim(metrics: dict[str, Any], method: str = DEFAULT_METHOD,
                     origin: Optional[str | Path] = None) -> float:
    """``metrics[method]["mean"]["ssim"]`` of a paired evaluation, checked to be a number in [-1, 1]."""
    return _mean_score(metrics, method, "ssim", (-1.0, 1.0), origin)


def is_paired(metrics: dict[str, Any], method: str = DEFAULT_METHOD) -> bool:
    """Whether ``method`` was scored by a paired (translation) evaluation."""
    entry = metrics.get(method) if isinstance(metrics, dict) else None
    return isinstance(entry, dict) and entry.get("mode") == "paired"


def gate_score(metrics: dict[str, Any], method: str = DEFAULT_METHOD,
               origin: Optional[str | Path] = None) -> tuple[str, float]:
    """(metric, value) the gate decides on: ``("ssim", mean SSIM)`` for a paired evaluation,
    else ``("dice", target mean Dice)``; checked (:class:`MetricsError` naming ``origin``)."""
    if is_paired(metrics, method):
        return "ssim", target_mean_ssim(metrics, method, origin)
    return "dice", target_mean_dice(metrics, method, origin)


def _mean_score(metrics: dict[str, Any], method: str, key: str, bounds: tuple[float, float],
                origin: Optional[str | Path]) -> float:
    where = f"{method}.mean.{key}"
    try:
        value = metrics[method]["mean"][key]
    except (KeyError, TypeError):
        methods = sorted(metrics) if isinstance(metrics, dict) else []
        raise MetricsError(f"no {where} in the evaluation metrics (methods present: {methods or 'none'})",
                           origin) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetricsError(f"{where} must be a finite number, got {value!r}", origin)
    lo, hi = bounds
    if not lo <= value <= hi:
        raise MetricsError(f"{where} must lie in [{lo:g}, {hi:g}], got {value}", origin)
    return float(value)


def gate_identity(identity: Optional[Mapping[str, Any]], method: str = DEFAULT_METHOD) -> Optional[dict[str, str]]:
    """The fields the gate compares, as strings (the image size of ``method``'s bundle), and,
    where the evaluation was paired, ``mode``, ``translation_mask`` and ``preprocess_digest``
    (``method``'s entry); a segmentation evaluation records none of these, so its identity is
    what it always was. None when the evaluation recorded no identity."""
    if not identity:
        return None
    size = identity.get("image_size")
    size = size.get(method) if isinstance(size, Mapping) else size
    fields = {**{k: identity.get(k) for k in IDENTITY_FIELDS}, "image_size": size}
    missing = [k for k, v in fields.items() if v in (None, "")]
    if missing:
        raise MetricsError(f"evaluation identity lacks {', '.join(missing)}")
    for key in PAIRED_ONLY_FIELDS:
        value = identity.get(key)
        if key == PREPROCESS_FIELD and isinstance(value, Mapping):
            if value.get(method) in (None, ""):
                raise MetricsError(f"evaluation identity lacks the {key} of {method} (it has "
                                   f"{', '.join(sorted(value)) or 'none'})")
            value = value[method]
        if value not in (None, ""):
            fields[key] = value
    return {k: str(v) for k, v in fields.items()}


def identity_key(fields: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True).encode()).hexdigest()[:16]


def decide(score: float, threshold: float, champion_version: Optional[str], champion_score: Optional[float],
           identity: Optional[Mapping[str, str]] = None,
           champion_identity: Optional[Mapping[str, str]] = None, metric: str = "dice",
           champion_metric: Optional[str] = None) -> GateDecision:
    """The gate, as a pure function: an identity, the threshold AND (no champion OR a
    champion scored by the same metric, of the same identity, that the challenger strictly
    beats). ``metric``: ``dice`` (target mean Dice) or ``ssim`` (paired evaluation: mean
    SSIM); higher is better for both. ``champion_metric``: the metric the champion was
    gated on (None: it carries neither score tag); ``champion_score`` its value."""
    name = f"target mean {METRIC_NAMES[metric]}"
    reasons = []
    passes = score >= threshold
    reasons.append(f"{name} {score:.4f} {'>=' if passes else '<'} threshold {threshold:.4f}")
    if identity is None:
        passes = False
        reasons.append("the evaluation recorded no identity (data set, test split, image size, profile): "
                       "never promoted")
    if champion_version is None:
        beats = True
        reasons.append("no current champion: the threshold alone decides")
    elif champion_metric is not None and champion_metric != metric:
        beats = False
        reasons.append(f"champion v{champion_version} was gated on target mean {METRIC_NAMES[champion_metric]} "
                       f"({SCORE_TAGS[champion_metric]}), this version on {name}: not compared, not promoted; "
                       "give paired (translation) models their own register.model_name")
    elif identity is not None and champion_identity is None:
        beats = False
        reasons.append(f"champion v{champion_version} carries no evaluation identity: it is not compared "
                       "and not replaced automatically")
    elif identity is not None and dict(champion_identity) != dict(identity):
        beats = False
        differ = sorted(k for k in set(identity) | set(champion_identity)
                        if identity.get(k) != champion_identity.get(k))
        detail = "; ".join(f"{k} {champion_identity.get(k)!s:.16} vs {identity.get(k)!s:.16}" for k in differ)
        reasons.append(f"champion v{champion_version} was evaluated on another identity ({detail}): not compared, "
                       "not promoted; give each data set its own register.model_name")
    elif champion_score is None:
        beats = False
        reasons.append(f"champion v{champion_version} has no {SCORE_TAGS[metric]} tag: it is not replaced "
                       "automatically")
    else:
        beats = score > champion_score
        reasons.append(f"{name} {score:.4f} {'>' if beats else '<='} champion v{champion_version}'s "
                       f"{champion_score:.4f} (same evaluation identity)")
    return GateDecision(score, threshold, champion_version, champion_score, passes and beats, reasons,
                        identity_key(identity) if identity is not None else None, metric)


@contextlib.contextmanager
def gate_lock(client: MlflowClient, name: str, holder: str, wait_s: float = LOCK_WAIT_S,
              stale_s: float = LOCK_STALE_S, poll_s: float = 0.2) -> Iterator[None]:
    """Hold the promotion lock of ``name``: the registered model ``<name>.gate-lock``,
    whose creation the store makes atomic. Every failed try sleeps ``poll_s`` and checks
    the ``wait_s`` deadline (whatever reading the lock raised). A lock older than
    ``stale_s`` is broken, but only while it still names the holder read before."""
    lock = f"{name}{LOCK_SUFFIX}"
    uri = client.tracking_uri
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, tags={LOCK_HOLDER_TAG: holder,
                                                       LOCK_SINCE_TAG: f"{time.time():.3f}"},
                                           description="promotion lock of sasan register (deleted after use)")
            break
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise TrackingError(f"cannot take the gate lock {lock!r}: {err.message}", redact_uri(uri)) from None
        seen = _lock_state(client, lock)                 # None: released meanwhile, or unreadable
        if seen is not None and time.time() - seen[1] > stale_s:
            _break_stale_lock(client, lock, seen)
        if time.monotonic() >= deadline:
            raise TrackingError(f"the gate lock {lock!r} is held by another run for over {wait_s:.0f} s; "
                                f"delete it if no registration is running", redact_uri(uri))
        time.sleep(poll_s)
    try:
        yield
    finally:
        try:
            client.delete_registered_model(lock)
        except MlflowException as err:
            log.warning("could not release the gate lock %s: %s", lock, err.message)


def _lock_state(client: MlflowClient, lock: str) -> Optional[tuple[Optional[str], float]]:
    """(holder, since) of the lock as it is now; None when it is gone or unreadable."""
    try:
        tags = client.get_registered_model(lock).tags
        return tags.get(LOCK_HOLDER_TAG), float(tags.get(LOCK_SINCE_TAG, "0"))
    except (MlflowException, ValueError, TypeError):
        return None


def _break_stale_lock(client: MlflowClient, lock: str, seen: tuple[Optional[str], float]) -> None:
    """Delete the stale lock ``seen`` only if a fresh read still shows it: a lock another
    waiter broke and took since ``seen`` was read is left alone. MLflow has no conditional
    delete, so a take-over between this read and the delete can still be lost."""
    if _lock_state(client, lock) != seen:
        return
    log.warning("breaking the stale gate lock %s of %s (held since %.0f s)", lock, seen[0], time.time() - seen[1])
    with contextlib.suppress(MlflowException):
        client.delete_registered_model(lock)


def register_and_gate(tracking_uri: Optional[str], model_uri: str, metrics: dict[str, Any],
                      cfg: RegisterConfig, run_id: Optional[str], report_dir: str | Path,
                      method: str = DEFAULT_METHOD, metrics_origin: Optional[str | Path] = None,
                      identity: Optional[Mapping[str, Any]] = None,
                      parent_run_id: Optional[str] = None) -> dict[str, Any]:
    """Register ``model_uri`` as a new version of ``cfg.model_name``, tagged with its score
    (target mean Dice, or mean SSIM for a paired evaluation: :func:`gate_score`) and
    evaluation ``identity``; under the gate lock, move ``cfg.alias`` to it if the gate
    passes; write the report. ``run_id``: the run that logged the model; ``parent_run_id``:
    the pipeline's run, tagged with the outcome too. Returns the report."""
    metric, score = gate_score(metrics, method, metrics_origin)   # before touching the registry
    threshold = cfg.min_ssim if metric == "ssim" else cfg.min_dice
    fields = gate_identity(identity, method)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    uri = client.tracking_uri
    name, alias = cfg.model_name, cfg.alias
    _ensure_registered_model(client, name)
    id_tags = {IDENTITY_TAG + k: v for k, v in (fields or {}).items()}
    if fields is not None:
        id_tags[IDENTITY_KEY_TAG] = identity_key(fields)

    model_id = model_uri[len("models:/"):] if model_uri.startswith("models:/m-") else None
    with process_tracking_uri(uri):     # the store resolves models:/ sources via the global URI
        version = mlflow_call(client.create_model_version, uri, name, source=model_uri, run_id=run_id,
                              model_id=model_id, tags={SCORE_TAGS[metric]: repr(score), **id_tags}).version
    with gate_lock(client, name, holder=f"{run_id or 'no-run'}/{uuid.uuid4().hex[:8]}"):
        champion_version, champion_scores, champion_fields = current_champion(client, name, alias)
        champion_metric = metric if metric in champion_scores else next(iter(champion_scores), None)
        champion_score = champion_scores.get(metric)
        decision = decide(score, threshold, champion_version, champion_score, fields, champion_fields,
                          metric=metric, champion_metric=champion_metric)
        if decision.promote:
            mlflow_call(client.set_registered_model_alias, uri, name, alias, version)
            now = str(mlflow_call(client.get_model_version_by_alias, uri, name, alias).version)
            if now != str(version):
                raise TrackingError(f"@{alias} of {name!r} reads v{now} right after moving it to v{version}: "
                                    "another writer ignores the gate lock", redact_uri(uri))
    mlflow_call(client.set_model_version_tag, uri, name, version, GATE_TAG, _verdict(decision))
    mlflow_call(client.update_model_version, uri, name, version, description="; ".join(decision.reasons))
    if decision.promote:
        log.info("%s v%s promoted to %r (target mean %s %.4f)", name, version, alias, METRIC_NAMES[metric], score)
    else:
        log.info("%s v%s registered, %r unchanged: %s", name, version, alias, "; ".join(decision.reasons))
    for rid in dict.fromkeys(r for r in (run_id, parent_run_id) if r):
        mlflow_call(client.set_tag, uri, rid, "sasan.registered_version", f"{name}/{version}")
        mlflow_call(client.set_tag, uri, rid, GATE_TAG, _verdict(decision))

    score_key, threshold_key = SCORE_TAGS[metric], f"min_{metric}"   # target_mean_dice, min_dice (or _ssim)
    report = {
        "model_name": name, "version": str(version), "model_uri": model_uri, "run_id": run_id,
        "method": method, "alias": alias, score_key: score, threshold_key: threshold,
        "identity": fields, "identity_key": decision.identity_key,
        "previous_champion": None if champion_version is None else
        {"version": champion_version, score_key: champion_score, "identity": champion_fields},
        "promoted": decision.promote,
        "champion_version": str(version) if decision.promote else champion_version,
        "reasons": decision.reasons, "tracking_uri": redact_uri(uri),
    }
    write_report(report, Path(report_dir))
    return report


def current_champion(client: MlflowClient, name: str,
                     alias: str) -> tuple[Optional[str], dict[str, Optional[float]], Optional[dict[str, str]]]:
    """(version, {metric: its score tag} for each score tag it carries (``dice``:
    ``target_mean_dice``, ``ssim``: ``target_mean_ssim``; None for an unreadable value), its
    evaluation identity) of the model the alias points at, or (None, {}, None)."""
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None, {}, None
        raise TrackingError(f"cannot read alias {alias!r} of {name!r}: {err.message}",
                            redact_uri(client.tracking_uri)) from None
    scores: dict[str, Optional[float]] = {}
    for metric, tag in SCORE_TAGS.items():
        if tag in mv.tags:
            try:
                value: Optional[float] = float(mv.tags[tag])
            except ValueError:
                value = None
            scores[metric] = value if value is not None and math.isfinite(value) else None
    fields = {k: mv.tags[IDENTITY_TAG + k] for k in IDENTITY_FIELDS if IDENTITY_TAG + k in mv.tags}
    if len(fields) != len(IDENTITY_FIELDS):
        return str(mv.version), scores, None
    for key in PAIRED_ONLY_FIELDS:
        if IDENTITY_TAG + key in mv.tags:
            fields[key] = mv.tags[IDENTITY_TAG + key]
    return str(mv.version), scores, fields


def write_report(report: dict[str, Any], report_dir: Path) -> None:
    write_json(report_dir / "register.json", report)
    write_text(report_dir / "register.md", render_markdown(report))


def report_metric(r: Mapping[str, Any]) -> str:
    """``ssim`` for the report of a paired (translation) model, else ``dice``."""
    return "ssim" if SSIM_TAG in r else "dice"


def render_markdown(r: dict[str, Any]) -> str:
    name, alias, prev = r["model_name"], r["alias"], r["previous_champion"]
    metric = report_metric(r)
    score_key, label = SCORE_TAGS[metric], f"target mean {METRIC_NAMES[metric]}"
    if r["promoted"]:
        verdict = f"**Promoted**: `{name}` v{r['version']} is now `@{alias}`."
    else:
        where = f"stays on v{r['champion_version']}" if r["champion_version"] else "is not set"
        verdict = f"**Not promoted**: `{name}` v{r['version']} is registered; `@{alias}` {where}."
    prev_score = "n/a" if prev is None or prev.get(score_key) is None else f"{prev[score_key]:.4f}"
    lines = [
        f"# Model registration: {name}", "", verdict, "",
        f"Gate: {label} of `{r['method']}` >= `register.min_{metric}` AND > the current `@{alias}`'s, "
        "compared only when both were evaluated on the same identity.", "",
        f"| | version | {label} |", "|---|---|---|",
        f"| candidate | v{r['version']} | {r[score_key]:.4f} |",
        f"| previous {alias} | {'v' + prev['version'] if prev else 'none'} | {prev_score} |",
        f"| threshold | | {r['min_' + metric]:.4f} |", "",
        "Evaluation identity: " + (", ".join(f"{k} `{v}`" for k, v in r["identity"].items())
                                   if r.get("identity") else "none recorded"), "",
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

"""What a variant's checkpoints were trained with, so a resume never continues (or reuses the
finished phases of) a run made with other settings or other data.

Each phase checkpoint records ``fingerprint`` (sha256 over the training configuration and the
data digest), ``training_config`` (the variant's resolved configuration less
:data:`NOT_TRAINING_KEYS`) and ``data_digest`` (the shards' data identity). One fingerprint
covers every phase of a variant. Metadata only: computing it touches no RNG and no weights."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

from sasan.config import Config
from sasan.train.checkpoint import load_checkpoint, save_checkpoint
from sasan.train.variants import SEGMENTER_ONLY

log = logging.getLogger(__name__)

# Dotted config keys (a key removes its whole sub-tree) that do not change what a phase
# learns, so changing them never invalidates a checkpoint:
NOT_TRAINING_KEYS: tuple[str, ...] = (
    "experiment.name",          # tracking label
    "validate",                 # data checks: pass or fail, never change the shards
    "ingest.source",            # where the raw data is read from; its content is in the data digest
    "train.device",             # placement ("auto" may resolve differently after a move); bf16 is kept
    "train.channels_last",      # memory layout only
    "train.jobs",               # variants trained side by side: scheduling only
    "train.num_workers",        # batch prefetching: batches are a pure function of the step
    "train.checkpoint_every",   # when state is saved; a resume continues exactly
    "train.log_every",          # when metrics are logged
    "evaluate",                 # after training (evaluate.methods only picks which variants run)
    "register",                 # after training
)

# The segmenter-only baselines (no_adaptation, upper_bound) train just the U-Net: of these
# sections they read only the keys listed, so e.g. a train.joint.lr change leaves them valid.
SEGMENTER_ONLY_READS: dict[str, tuple[str, ...]] = {
    "model": ("in_channels", "num_classes", "unet_width"),      # build_segmenter
    "train.losses": ("dice_weight",),                           # segmenter_loss
    "train.pretrain": (),
    "train.joint": (),
}

SUPERSEDED = "checkpoints.superseded"
_ABSENT = object()


def _node(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def training_config(cfg: Config, segmenter_only: bool = False) -> dict[str, Any]:
    """``cfg`` as a dict without :data:`NOT_TRAINING_KEYS` (and, for a segmenter-only
    variant, without what :data:`SEGMENTER_ONLY_READS` leaves out)."""
    data = cfg.to_dict()
    for dotted in NOT_TRAINING_KEYS:
        parent, _, leaf = dotted.rpartition(".")
        node = _node(data, parent) if parent else data
        if isinstance(node, dict):
            node.pop(leaf, None)
    if segmenter_only:
        for dotted, keep in SEGMENTER_ONLY_READS.items():
            node = _node(data, dotted)
            if isinstance(node, dict):
                for key in [k for k in node if k not in keep]:
                    del node[key]
    return data


def training_record(cfg: Config, variant: str, data_digest: Optional[str]) -> dict[str, Any]:
    """The entries each phase checkpoint of ``variant`` stores (``Phase.extra``)."""
    config = training_config(cfg, segmenter_only=variant in SEGMENTER_ONLY)
    blob = json.dumps({"variant": variant, "config": config, "data_digest": data_digest}, sort_keys=True)
    return {"fingerprint": hashlib.sha256(blob.encode()).hexdigest(), "variant": variant,
            "training_config": config, "data_digest": data_digest}


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves that differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += differing_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "<config>"]


def _lookup(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return _ABSENT
        data = data[key]
    return data


def added_at_default(old_config: Any, new_config: dict[str, Any], keys: list[str]) -> bool:
    """True when every one of ``keys`` (where the two configurations differ) is a setting the
    old configuration does not have, because the code gained it after that checkpoint, and
    the new one leaves at its default: by convention a new setting's default is what the code
    did before it existed, so the checkpoint was trained with the same settings."""
    defaults = Config().to_dict()
    for key in keys:
        new = _lookup(new_config, key)
        if _lookup(old_config, key) is not _ABSENT or new is _ABSENT or new != _lookup(defaults, key):
            return False
    return bool(keys)


def supersede_stale_checkpoints(folder: Path, record: dict[str, Any]) -> bool:
    """Check every ``*.pt`` in ``folder`` against ``record``. If one was trained with another
    fingerprint, move ``folder`` (and the phase logs beside it) to ``checkpoints.superseded/``
    (replacing an older one), warn which keys differ and return True: the variant trains from
    scratch. Checkpoints without a fingerprint (older code) are kept, with a warning; those
    whose only differences are settings added to the code since, left at their defaults
    (:func:`added_at_default`), are kept and re-recorded with ``record``."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    stale: Optional[dict[str, Any]] = None
    legacy: list[str] = []
    for path in sorted(folder.glob("*.pt")):
        ckpt = load_checkpoint(path)
        if ckpt.get("fingerprint") is None:
            legacy.append(path.name)
        elif ckpt["fingerprint"] != record["fingerprint"] and stale is None:
            added = differing_keys(ckpt.get("training_config"), record["training_config"])
            if (ckpt.get("variant") == record["variant"] and ckpt.get("data_digest") == record["data_digest"]
                    and added_at_default(ckpt.get("training_config"), record["training_config"], added)):
                log.info("%s: settings added to the code since it was written are at their defaults (%s): "
                         "resuming it", path.name, ", ".join(added))
                save_checkpoint(path, {**ckpt, **record})
            else:
                stale = ckpt
        del ckpt
    if stale is None:
        if legacy:
            log.warning("%s: checkpoint(s) %s record no configuration (written by older code): resuming them "
                        "unchecked; delete %s to retrain with the current settings", folder.parent.name,
                        ", ".join(legacy), folder)
        return False
    keys = differing_keys(stale.get("training_config"), record["training_config"])
    if stale.get("data_digest") != record["data_digest"]:
        keys.append("data")
    if stale.get("variant") != record["variant"]:
        keys.append("variant")
    aside = folder.parent / SUPERSEDED
    if aside.exists():
        shutil.rmtree(aside)
    folder.rename(aside)
    logs = folder.parent / "logs"
    if logs.is_dir():           # curves of the superseded run must not mix with the new one's
        logs.rename(aside / "logs")
    shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
    log.warning("%s: checkpoints were trained with other settings (differ: %s); moved to %s, training from "
                "scratch", folder.parent.name, shown or "unknown", aside)
    return True

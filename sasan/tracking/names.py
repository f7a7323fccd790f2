"""What MLflow accepts as param, metric and tag names and values: flattening, clipping."""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from sasan.tracking.client import TrackingError

# MLflow 3 stores param values up to 6000 characters, older servers 500 (and some hosted
# ones still do): 500 keeps a run loggable anywhere; the full resolved YAML is an artifact.
MAX_PARAM_VALUE = 500
MAX_TAG_VALUE = 5000
MAX_KEY = 250


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"joint": {"lr": 1e-4}}}`` -> ``{"train.joint.lr": "0.0001"}``; lists as
    JSON, values clipped to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else (
                json.dumps(value) if isinstance(value, (list, tuple, Mapping)) else str(value))
            out[clip_key(name)] = clip(text, MAX_PARAM_VALUE)
    return out


def flatten_metrics(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers -> ``{"a/b/c": float}``; a non-number is a TrackingError."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name))
        elif isinstance(value, (int, float)) or hasattr(value, "item"):
            out[name] = float(value)
        else:
            raise TrackingError(f"metric {name!r} is not a number: {value!r}")
    return out


def metric_name(name: str) -> str:
    """What MLflow accepts: letters, digits, ``_ - . /`` and spaces; no empty, ``.`` or
    ``..`` path parts (names become file paths in some stores)."""
    parts = [re.sub(r"[^\w.\- ]", "_", p) for p in name.split("/")]
    parts = ["_" * len(p) if p in (".", "..") else p for p in parts if p]
    return clip_key("/".join(parts) or "_")


def clip_key(name: str) -> str:
    return name[:MAX_KEY]


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."

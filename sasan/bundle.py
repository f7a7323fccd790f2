"""The trained model as a self-contained bundle: the networks inference needs (A_t, S_s,
U-Net), their resolved configuration, and what the model is (variant, domains); and its
forward pass on slice stacks (:func:`predict_stacks`), shared by whole-volume inference and
the served MLflow model.

A paired-mode model (``experiment.mode: paired``, supervised translation) has no U-Net: it
translates only (``segmenter`` None; ``segments`` False), and is scored by image metrics.
Bundles written before that rule carry an untrained U-Net; :func:`load_bundle` drops it.

A bundle is rebuilt from its own saved configuration, never from today's params.yaml, and
loads with ``torch.load(weights_only=True)``. A configuration with settings this version does
not know (or lacks settings it needs) was written by another version of the code, not damaged:
:func:`load_bundle` says so."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml
from pydantic import ValidationError

from sasan.atomic import atomic_path
from sasan.config import Config, config_from_dict
from sasan.errors import CheckpointError, ConfigError
from sasan.models import (AttentionModule, SynthesisModule, UNet, build_attention, build_segmenter,
                          build_synthesis)
from sasan.train.checkpoint import load_checkpoint
from sasan.train.device import Runtime

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "sasan-bundle/1"     # the "format" entry of every bundle file


@dataclass
class ModelBundle:
    cfg: Config
    variant: str
    segmenter: Optional[UNet]                   # None: the bundle translates only (paired mode)
    att_t: Optional[AttentionModule] = None     # None: no attention (CycleGAN) or no translation
    syn_s: Optional[SynthesisModule] = None     # None: segment target images directly

    def __post_init__(self) -> None:
        if self.segmenter is None and self.syn_s is None:
            raise ValueError("a model bundle needs a segmenter, a translator (S_s) or both")

    @property
    def translates(self) -> bool:
        return self.syn_s is not None

    @property
    def segments(self) -> bool:
        return self.segmenter is not None

    def eval(self) -> "ModelBundle":
        for m in (self.segmenter, self.att_t, self.syn_s):
            if m is not None:
                m.eval()
        return self

    def to(self, device: torch.device | str) -> "ModelBundle":
        for name in ("segmenter", "att_t", "syn_s"):
            m = getattr(self, name)
            if m is not None:
                setattr(self, name, m.to(device))
        return self


def save_bundle(path: str | Path, bundle: ModelBundle) -> None:
    state = {
        "format": BUNDLE_FORMAT,
        "variant": bundle.variant,
        "config_yaml": yaml.safe_dump(bundle.cfg.to_dict(), sort_keys=False),
        "segmenter": bundle.segmenter.state_dict() if bundle.segmenter is not None else None,
        "att_t": bundle.att_t.state_dict() if bundle.att_t is not None else None,
        "syn_s": bundle.syn_s.state_dict() if bundle.syn_s is not None else None,
    }
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(state, tmp)


def load_bundle(path: str | Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    """A file that is not a usable bundle (foreign, damaged, written by another version of
    sasan, a configuration that does not parse or validate, weights that do not fit the
    networks it builds) is one :class:`CheckpointError` line naming ``path``."""
    state = load_checkpoint(path, map_location)
    if not isinstance(state, dict) or state.get("format") != BUNDLE_FORMAT:
        raise CheckpointError("not a SASAN model bundle (format tag missing)", path)
    missing = [k for k in ("variant", "config_yaml", "segmenter", "att_t", "syn_s") if k not in state]
    if missing or not isinstance(state["variant"], str):
        raise CheckpointError(f"damaged model bundle: no {', '.join(missing) or 'variant name'}", path)
    cfg = _saved_config(state["config_yaml"], path)
    m = cfg.model
    segmenter = None
    if state["segmenter"] is not None and not (cfg.experiment.mode == "paired" and state["syn_s"] is not None):
        segmenter = _with_weights(build_segmenter(m), state, "segmenter", path)
    elif state["segmenter"] is not None:
        # a paired-mode translator written before paired bundles left the U-Net out: its U-Net
        # was never trained (paired training has no segmentation phase)
        log.info("%s: paired-mode bundle; its untrained U-Net is ignored (the bundle translates only)", path)
    elif state["syn_s"] is None:
        raise CheckpointError("model bundle holds neither a segmenter nor a translator", path)
    att_t = _with_weights(build_attention(m), state, "att_t", path) if state["att_t"] is not None else None
    syn_s = _with_weights(build_synthesis(m), state, "syn_s", path) if state["syn_s"] is not None else None
    return ModelBundle(cfg, state["variant"], segmenter, att_t, syn_s).eval()


def _saved_config(text: object, path: str | Path) -> Config:
    try:
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise TypeError(f"a {type(data).__name__}, not a mapping")
        _check_same_settings(data, path)
        return config_from_dict(data, str(path))
    except (yaml.YAMLError, AttributeError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"damaged model bundle: its configuration: {getattr(err, 'reason', err)}",
                              path) from None


def _check_same_settings(data: dict, path: str | Path) -> None:
    """A configuration with keys this version does not know, or without keys it requires,
    was written by another version of sasan (not damaged): one :class:`CheckpointError` that
    names the keys. Other invalid values are left to :func:`config_from_dict` (damage)."""
    try:
        Config.model_validate_json(json.dumps(data))
        return
    except ValidationError as err:
        errors = err.errors()
    unknown = [_dotted(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
    missing = [_dotted(e["loc"]) for e in errors if e["type"] == "missing"]
    if not unknown and not missing:
        return
    parts = []
    if unknown:
        parts.append(f"its configuration has settings this version does not know: {_first(unknown)}")
    if missing:
        parts.append(f"its configuration lacks settings this version needs: {_first(missing)}")
    raise CheckpointError(f"written by another version of sasan ({'; '.join(parts)}); use the version that "
                          "trained it", path)


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _with_weights(module: torch.nn.Module, state: dict, key: str, path: str | Path) -> torch.nn.Module:
    try:
        module.load_state_dict(state[key])
    except (RuntimeError, TypeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = "; ".join(lines[1:] or lines)          # torch's first line only names the class
        detail = detail if len(detail) <= 200 else detail[:200] + " ..."
        raise CheckpointError(f"the {key} weights do not fit the network its configuration builds: {detail}",
                              path) from None
    return module


@torch.no_grad()
def predict_stacks(bundle: ModelBundle, stacks: np.ndarray, runtime: Runtime,
                   batch_size: int = 16) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(Z, S, H, W) float32 in [-1, 1] -> labels (Z, H, W) uint8 (None when the bundle does
    not segment: a paired-mode translator) and the centre slice of the translation (Z, H, W)
    float32 (None when the bundle does not translate).

    Memory formats as in training: the U-Net in channels_last (on CPU too: its batch-16
    forward at 256 px takes about 0.48 s a slice instead of 0.65 s; docs/cpu-speed.md), A_t and
    S_s in channels_last on CUDA only. The bundle's modules are converted in place."""
    labels, translated = [], []
    centre = stacks.shape[1] // 2
    unet_rt = runtime.for_unet()
    segmenter = unet_rt.prepare_module(bundle.segmenter) if bundle.segmenter is not None else None
    att_t, syn_s = (runtime.prepare_module(m) if m is not None else None for m in (bundle.att_t, bundle.syn_s))
    for start in range(0, len(stacks), batch_size):
        x = runtime.batch(torch.from_numpy(np.ascontiguousarray(stacks[start:start + batch_size])))
        with runtime.autocast():
            if syn_s is not None:
                x = syn_s(x, att_t(x)[0] if att_t is not None else None)
                translated.append(x[:, centre].float().cpu().numpy())
            if segmenter is not None:
                logits = segmenter(unet_rt.batch(x))
        if segmenter is not None:
            labels.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    if len(stacks) == 0:                # no slices
        empty = np.zeros((0, *stacks.shape[2:]), np.float32)
        return (empty.astype(np.uint8) if segmenter is not None else None), (empty if syn_s is not None else None)
    return (np.concatenate(labels) if segmenter is not None else None), \
        (np.concatenate(translated) if translated else None)

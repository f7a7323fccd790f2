"""The trained model as a self-contained bundle: the networks inference needs (A_t, S_s,
U-Net), their resolved configuration, and what the model is (variant, domains).

A bundle is rebuilt from its own saved configuration, never from today's params.yaml, and
loads with ``torch.load(weights_only=True)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from sasan.atomic import atomic_path
from sasan.config import Config, config_from_dict
from sasan.errors import CheckpointError
from sasan.models import AttentionModule, SynthesisModule, UNet, build_segmenter
from sasan.train.checkpoint import load_checkpoint


@dataclass
class ModelBundle:
    cfg: Config
    variant: str
    segmenter: UNet
    att_t: Optional[AttentionModule] = None     # None: no attention (CycleGAN) or no translation
    syn_s: Optional[SynthesisModule] = None     # None: segment target images directly

    @property
    def translates(self) -> bool:
        return self.syn_s is not None

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
        "format": "sasan-bundle/1",
        "variant": bundle.variant,
        "config_yaml": yaml.safe_dump(bundle.cfg.to_dict(), sort_keys=False),
        "segmenter": bundle.segmenter.state_dict(),
        "att_t": bundle.att_t.state_dict() if bundle.att_t is not None else None,
        "syn_s": bundle.syn_s.state_dict() if bundle.syn_s is not None else None,
    }
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(state, tmp)


def load_bundle(path: str | Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    state = load_checkpoint(path, map_location)
    if state.get("format") != "sasan-bundle/1":
        raise CheckpointError("not a SASAN model bundle (format tag missing)", path)
    cfg = config_from_dict(yaml.safe_load(state["config_yaml"]), f"{path}:config")
    m = cfg.model
    segmenter = build_segmenter(m)
    segmenter.load_state_dict(state["segmenter"])
    att_t = syn_s = None
    if state["att_t"] is not None:
        att_t = AttentionModule(m.in_channels, m.k, m.num_classes, m.attention_width)
        att_t.load_state_dict(state["att_t"])
    if state["syn_s"] is not None:
        syn_s = SynthesisModule(m.in_channels, m.in_channels, m.k, m.synth_width, m.norm_hidden)
        syn_s.load_state_dict(state["syn_s"])
    return ModelBundle(cfg, state["variant"], segmenter, att_t, syn_s).eval()

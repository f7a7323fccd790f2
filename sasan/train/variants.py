"""The paper's table rows from one code path: each baseline or ablation is a config change
(and, for the segmenter-only baselines, a choice of training data)."""

from __future__ import annotations

from typing import Any

from sasan.config import Config, config_from_dict, set_dotted
from sasan.errors import ConfigError

# variant -> dotted overrides applied to the configuration
VARIANTS: dict[str, dict[str, Any]] = {
    "sasan": {},
    "no_adaptation": {},           # segmenter on real source only, applied to target directly
    "upper_bound": {},             # segmenter on labelled target training data
    "cyclegan": {"model.attention": False, "train.segmenter.fake_source": False},
    "no_seg_adversary": {"train.losses.seg_adversarial": 0.0},
    "no_aux": {"train.losses.aux_seg": 0.0},
    "no_orthogonality": {"train.losses.orthogonality": 0.0},   # A_s pre-training too (METHOD.md 4.1 uses it)
    "k16": {"model.k": 16},
    "no_fake_source": {"train.segmenter.fake_source": False},
    "feature_disc": {"model.feature_disc": True},
}

SEGMENTER_ONLY = {"no_adaptation", "upper_bound"}


def variant_config(cfg: Config, variant: str) -> Config:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    data = cfg.to_dict()
    for key, value in VARIANTS[variant].items():
        set_dotted(data, key, value)
    return config_from_dict(data, f"variant {variant}")


"""SASAN networks (METHOD.md section 2). Every network takes explicit constructor arguments;
:func:`build_networks`, :func:`build_attention`, :func:`build_synthesis` and
:func:`build_segmenter` adapt a ``ModelConfig`` to them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sasan.models.attention_unet import AttentionModule
from sasan.models.blocks import count_parameters
from sasan.models.discriminators import FeatureDiscriminator, PatchDiscriminator, SegDiscriminator
from sasan.models.networks import SASANNetworks
from sasan.models.sasan_norm import SASANNorm, SASANResBlock
from sasan.models.synthesis import SynthesisModule
from sasan.models.unet import UNet

if TYPE_CHECKING:
    from sasan.config import ModelConfig

__all__ = [
    "AttentionModule", "SynthesisModule", "SASANNorm", "SASANResBlock", "PatchDiscriminator",
    "SegDiscriminator", "FeatureDiscriminator", "UNet", "SASANNetworks", "count_parameters",
    "build_networks", "build_attention", "build_synthesis", "build_segmenter",
]


def build_networks(cfg: "ModelConfig", seg_adversary: bool = True) -> SASANNetworks:
    return SASANNetworks(
        cfg.in_channels, cfg.num_classes, cfg.k, attention=cfg.attention,
        seg_adversary=seg_adversary, feature_disc=cfg.feature_disc,
        attention_width=cfg.attention_width, synth_width=cfg.synth_width,
        norm_hidden=cfg.norm_hidden, disc_width=cfg.disc_width, seg_disc_width=cfg.seg_disc_width,
        disc_layers=cfg.disc_layers, attention_bottleneck=cfg.attention_bottleneck,
    )


def build_synthesis(cfg: "ModelConfig") -> SynthesisModule:
    """One synthesis module S_Y as ``cfg`` describes it (what ``build_networks`` builds twice)."""
    return SynthesisModule(cfg.in_channels, cfg.in_channels, cfg.k, cfg.synth_width, cfg.norm_hidden)


def build_attention(cfg: "ModelConfig") -> AttentionModule:
    """One attention module A_X as ``cfg`` describes it (what ``build_networks`` builds twice)."""
    return AttentionModule(cfg.in_channels, cfg.k, cfg.num_classes, cfg.attention_width, cfg.attention_bottleneck)


def build_segmenter(cfg: "ModelConfig") -> UNet:
    return UNet(cfg.in_channels, cfg.num_classes, cfg.unet_width)

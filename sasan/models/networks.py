"""All SASAN networks for one source -> target pair, built from explicit arguments.

Naming follows METHOD.md: ``att_s`` = A_s (attention of source-domain images), ``syn_t`` =
S_t (synthesises target-domain images), so G_t(x) = syn_t(x, att_s(x)); ``disc_t`` = D_t
judges target-domain images; ``seg_discs[c - 1]`` judges softmax channel c.
"""

from __future__ import annotations

from torch import nn

from sasan.models.attention_unet import AttentionModule
from sasan.models.discriminators import FeatureDiscriminator, PatchDiscriminator, seg_discriminators
from sasan.models.synthesis import SynthesisModule


class SASANNetworks(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 5, k: int = 8, *,
                 attention: bool = True, seg_adversary: bool = True, feature_disc: bool = False,
                 attention_width: int = 32, synth_width: int = 32, norm_hidden: int = 64,
                 disc_width: int = 64, seg_disc_width: int = 64, disc_layers: int = 4,
                 attention_bottleneck: bool = True):
        super().__init__()
        self.attention, self.k, self.num_classes = attention, k, num_classes
        self.syn_s = SynthesisModule(in_channels, in_channels, k, synth_width, norm_hidden)
        self.syn_t = SynthesisModule(in_channels, in_channels, k, synth_width, norm_hidden)
        self.disc_s = PatchDiscriminator(in_channels, disc_width, disc_layers)
        self.disc_t = PatchDiscriminator(in_channels, disc_width, disc_layers)
        # CycleGAN ablation: no attention modules, no segmentation adversary
        att_args = (in_channels, k, num_classes, attention_width, attention_bottleneck)
        self.att_s = AttentionModule(*att_args) if attention else None
        self.att_t = AttentionModule(*att_args) if attention else None
        self.seg_discs = (seg_discriminators(num_classes, seg_disc_width, max(1, disc_layers - 1))
                          if attention and seg_adversary else None)
        feat_ch = 4 * synth_width
        self.feat_disc_s = FeatureDiscriminator(feat_ch) if feature_disc else None
        self.feat_disc_t = FeatureDiscriminator(feat_ch) if feature_disc else None

    def generator_modules(self) -> list[nn.Module]:
        """Modules updated by the generator step (A_s is added only when it trains)."""
        mods: list[nn.Module] = [self.syn_s, self.syn_t]
        if self.att_t is not None:
            mods.append(self.att_t)
        return mods

    def discriminator_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.disc_s, self.disc_t]
        for m in (self.seg_discs, self.feat_disc_s, self.feat_disc_t):
            if m is not None:
                mods.append(m)
        return mods


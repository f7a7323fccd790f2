"""Shapes and parameter counts of the SASAN networks (METHOD.md section 2)."""

import pytest
import torch

from sasan.config import ModelConfig
from sasan.models import (AttentionModule, FeatureDiscriminator, PatchDiscriminator, SASANNorm,
                          SASANResBlock, SegDiscriminator, SynthesisModule, UNet, build_attention,
                          build_networks, count_parameters)
from sasan.models.blocks import ConvBlock


def test_parameter_counts_match_the_paper_configuration():
    # 3-slice input, K = 8, 5 classes (issue 2: ~2.4M, ~1.6M, ~2.8M)
    assert count_parameters(AttentionModule(3, k=8, num_classes=5)) == 2_436_053
    assert count_parameters(SynthesisModule(3, 3, k=8)) == 1_579_923
    assert count_parameters(PatchDiscriminator(3)) == 2_763_841
    assert count_parameters(SegDiscriminator()) == 133_185
    assert count_parameters(FeatureDiscriminator(128)) < 500_000   # small, not a 67M MLP
    assert 17_000_000 < count_parameters(UNet(3, 5)) < 17_500_000
    # METHOD.md's A_X has no 3x3 block at 1/16: 256 x 256 x 3 x 3 weights fewer
    assert count_parameters(AttentionModule(3, k=8, num_classes=5, bottleneck=False)) == 2_436_053 - 589_824


def test_output_shapes_at_256():
    x = torch.randn(1, 3, 256, 256)
    att = AttentionModule(3, k=8, num_classes=5)
    maps, seg = att(x)
    assert maps.shape == (1, 8, 256, 256) and seg.shape == (1, 5, 256, 256)
    y = SynthesisModule(3, 3, k=8)(x, maps)
    assert y.shape == x.shape and y.abs().max() <= 1.0        # tanh output
    assert PatchDiscriminator(3)(x).shape == (1, 1, 15, 15)
    assert SegDiscriminator()(seg.softmax(1)[:, 1:2]).shape == (1, 1, 31, 31)


@pytest.mark.parametrize("size", [32, 48, 80, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_at_other_sizes_divisible_by_16(size, channels):
    x = torch.randn(2, channels, size, size)
    att = AttentionModule(channels, k=4, num_classes=3, width=8)
    maps, seg = att(x)
    assert maps.shape == (2, 4, size, size) and seg.shape == (2, 3, size, size)
    syn = SynthesisModule(channels, channels, k=4, width=8, norm_hidden=16)
    assert syn(x, maps).shape == x.shape
    assert syn(x, None).shape == x.shape                       # CycleGAN ablation: constant maps
    assert UNet(channels, 3, width=8)(x).shape == (2, 3, size, size)
    assert PatchDiscriminator(channels, 8)(x).shape == (2, 1, size // 16 - 1, size // 16 - 1)


def test_rejects_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        AttentionModule(3, width=8)(torch.randn(1, 3, 40, 40))


def test_segmentation_is_a_linear_readout_of_the_maps():
    att = AttentionModule(3, k=4, num_classes=3, width=8)
    maps, seg = att(torch.randn(1, 3, 32, 32))
    assert torch.allclose(att.to_seg(maps), seg)
    conv = att.to_seg[1]
    assert conv.in_channels == 4 and conv.kernel_size == (3, 3)


def test_sasan_norm_modulates_per_pixel_from_the_maps():
    torch.manual_seed(0)
    norm = SASANNorm(channels=6, k=2, hidden=8)
    x = torch.randn(1, 6, 16, 16)
    left = torch.zeros(1, 2, 16, 16)
    left[:, 0, :, :8] = 1.0
    right = torch.zeros(1, 2, 16, 16)
    right[:, 0, :, 8:] = 1.0
    out_l, out_r = norm(x, left), norm(x, right)
    # different maps -> different modulation, and it changes where the maps differ
    assert not torch.allclose(out_l, out_r)
    # maps given at another resolution are resized (nearest) to the activations
    small = torch.zeros(1, 2, 8, 8)
    small[:, 0, :, :4] = 1.0
    assert torch.allclose(norm(x, small), out_l, atol=1e-6)
    # with gamma = beta = 0 the layer is exactly instance normalisation
    for conv in (norm.gamma, norm.beta):
        torch.nn.init.zeros_(conv.weight), torch.nn.init.zeros_(conv.bias)
    assert torch.allclose(norm(x, left), torch.nn.functional.instance_norm(x), atol=1e-5)


def test_residual_block_shortcut():
    same = SASANResBlock(8, 8, k=2, hidden=4)
    assert not same.learned_shortcut
    down = SASANResBlock(8, 4, k=2, hidden=4)
    assert down.learned_shortcut and down.conv_s.bias is None and down.conv_0.out_channels == 4
    m = torch.randn(1, 2, 8, 8)
    assert down(torch.randn(1, 8, 8, 8), m).shape == (1, 4, 8, 8)


def test_gradients_reach_every_generator_parameter_through_the_maps():
    att = AttentionModule(3, k=4, num_classes=3, width=8)
    syn = SynthesisModule(3, 3, k=4, width=8, norm_hidden=8)
    x = torch.randn(2, 3, 32, 32)
    maps, _ = att(x)
    syn(x, maps).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in syn.parameters())
    # anatomy reaches the decoder through the maps: the attention encoder gets gradients
    assert att.enc[0][1].weight.grad.abs().sum() > 0
    assert att.to_seg[1].weight.grad is None                # the seg read-out is not on this path


def test_build_networks_from_config_and_ablation_switches():
    cfg = ModelConfig(k=4, attention_width=8, synth_width=8, norm_hidden=8, disc_width=8, seg_disc_width=8)
    nets = build_networks(cfg)
    assert nets.att_s is not None and len(nets.seg_discs) == cfg.num_classes - 1
    assert nets.feat_disc_s is None
    cyc = build_networks(cfg.model_copy(update={"attention": False}))
    assert cyc.att_s is None and cyc.att_t is None and cyc.seg_discs is None
    feat = build_networks(cfg.model_copy(update={"feature_disc": True}))
    assert feat.feat_disc_s is not None and feat.feat_disc_t is not None
    k16 = build_networks(cfg.model_copy(update={"k": 16}))
    assert k16.att_t.to_maps[1].out_channels == 16
    assert k16.syn_s.block_full.norm_0.shared[0].in_channels == 16
    assert isinstance(nets.att_s.bottleneck, ConvBlock) and isinstance(nets.att_t.bottleneck, ConvBlock)
    plain_cfg = cfg.model_copy(update={"attention_bottleneck": False})    # METHOD.md's A_X
    plain = build_networks(plain_cfg)
    assert isinstance(plain.att_s.bottleneck, torch.nn.Identity) and isinstance(plain.att_t.bottleneck, torch.nn.Identity)
    att = build_attention(plain_cfg)
    assert count_parameters(att) == count_parameters(plain.att_t) < count_parameters(nets.att_t)
    maps, seg = att(torch.randn(2, 3, 32, 32))
    assert maps.shape == (2, 4, 32, 32) and seg.shape == (2, cfg.num_classes, 32, 32)


@pytest.mark.parametrize("layers", [2, 3, 4])
def test_patch_discriminator_depth_sets_the_judged_patch(layers):
    """An output score depends on exactly receptive_field(layers) x receptive_field(layers)
    input pixels through its convolutions (measured by back-propagating one interior score)."""
    from sasan.models.discriminators import receptive_field

    torch.manual_seed(0)
    d = PatchDiscriminator(1, 8, layers).eval()
    for i, m in enumerate(d.net):   # instance statistics span the image: leave them out here
        if isinstance(m, torch.nn.InstanceNorm2d):
            d.net[i] = torch.nn.Identity()
    x = torch.randn(1, 1, 128, 128, requires_grad=True)
    out = d(x)
    assert out.shape == (1, 1, 128 // 2 ** layers - 1, 128 // 2 ** layers - 1)
    i = out.shape[-1] // 2
    out[0, 0, i, i].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    cols = x.grad[0, 0].abs().sum(0).nonzero()
    assert int(rows.max() - rows.min()) + 1 == receptive_field(layers)
    assert int(cols.max() - cols.min()) + 1 == receptive_field(layers)
    assert receptive_field(4) == 94 and receptive_field(2) == 22


def test_discriminator_layers_from_the_config():
    from sasan.config import ModelConfig
    from sasan.models import build_networks

    nets = build_networks(ModelConfig(disc_width=8, seg_disc_width=8, disc_layers=2))
    x = torch.randn(2, 3, 64, 64)
    assert nets.disc_s(x).shape == (2, 1, 15, 15)
    assert nets.seg_discs[0](x[:, :1]).shape == (2, 1, 31, 31)   # one stride-2 layer fewer
    with pytest.raises(ValueError):
        PatchDiscriminator(3, 8, 5)


def test_sasan_norm_is_eq_1_to_3_written_by_hand():
    """SASANNorm against instance statistics and convolutions written out with torch ops."""
    import torch.nn.functional as F

    from sasan.models.sasan_norm import SASANNorm

    torch.manual_seed(0)
    norm = SASANNorm(channels=4, k=3, hidden=5)
    x, maps = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 4, 4)
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    normalized = (x - mean) / torch.sqrt(var + 1e-5)                                 # eq. (1)
    m = maps.repeat_interleave(2, -1).repeat_interleave(2, -2)                       # nearest x2
    h = F.relu(F.conv2d(m, norm.shared[0].weight, norm.shared[0].bias, padding=1))  # eq. (2)
    gamma = F.conv2d(h, norm.gamma.weight, norm.gamma.bias, padding=1)
    beta = F.conv2d(h, norm.beta.weight, norm.beta.bias, padding=1)
    expected = normalized * (1 + gamma) + beta                                      # eq. (3)
    assert torch.allclose(norm(x, maps), expected, atol=1e-5)


def test_sasan_norm_modulation_follows_the_maps_pixel_by_pixel():
    """A map that changes in one pixel changes the output only in that pixel's 5x5
    neighbourhood (two 3x3 convs): the modulation is spatial, not a global style."""
    from sasan.models.sasan_norm import SASANNorm

    torch.manual_seed(1)
    x = torch.randn(1, 2, 16, 16)
    maps = torch.zeros(1, 1, 16, 16)
    norm = SASANNorm(channels=2, k=1, hidden=3)
    poked = maps.clone()
    poked[0, 0, 8, 8] = 5.0
    changed = (norm(x, poked) - norm(x, maps)).abs().sum(1)[0] > 1e-6
    rows, cols = changed.nonzero().T
    assert changed.any() and rows.min() >= 6 and rows.max() <= 10 and cols.min() >= 6 and cols.max() <= 10


@pytest.mark.parametrize("f_in,f_out", [(8, 8), (8, 4)])
def test_residual_block_is_the_written_composition(f_in, f_out):
    """The block of METHOD.md section 2, composed from its own modules by hand."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    block = SASANResBlock(f_in, f_out, k=3, hidden=4)
    x, maps = torch.randn(2, f_in, 16, 16), torch.rand(2, 3, 8, 8)
    dx = block.conv_0(F.leaky_relu(block.norm_0(x, maps), 0.2))
    dx = block.conv_1(F.leaky_relu(block.norm_1(dx, maps), 0.2))
    shortcut = block.conv_s(block.norm_s(x, maps)) if f_in != f_out else x
    assert block.learned_shortcut == (f_in != f_out)
    assert torch.equal(block(x, maps), shortcut + dx)
    assert block.conv_0.out_channels == min(f_in, f_out) and block(x, maps).shape == (2, f_out, 16, 16)


def test_residual_block_under_bf16_autocast():
    """The CUDA path trains under bf16 autocast (checked here with CPU autocast)."""
    torch.manual_seed(0)
    block = SASANResBlock(8, 4, k=2, hidden=4)
    x, maps = torch.randn(2, 8, 16, 16), torch.rand(2, 2, 16, 16)
    ref = block(x, maps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x, maps)
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max()
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())

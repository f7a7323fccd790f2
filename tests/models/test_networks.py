"""Shapes and parameter counts of the SASAN networks (METHOD.md section 2)."""

import pytest
import torch

from sasan.config import ModelConfig
from sasan.models import (AttentionModule, FeatureDiscriminator, PatchDiscriminator, SASANNorm,
                          SASANResBlock, SegDiscriminator, SynthesisModule, UNet, build_networks,
                          count_parameters)

torch.set_num_threads(1)


def test_parameter_counts_match_the_paper_configuration():
    # 3-slice input, K = 8, 5 classes (issue 2: ~2.4M, ~1.6M, ~2.8M)
    assert count_parameters(AttentionModule(3, k=8, num_classes=5)) == 2_436_053
    assert count_parameters(SynthesisModule(3, 3, k=8)) == 1_579_923
    assert count_parameters(PatchDiscriminator(3)) == 2_763_841
    assert count_parameters(SegDiscriminator()) == 133_185
    assert count_parameters(FeatureDiscriminator(128)) < 500_000   # small, not a 67M MLP
    assert 17_000_000 < count_parameters(UNet(3, 5)) < 17_500_000


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
    torch.nn.init.zeros_(norm.gamma_beta.weight), torch.nn.init.zeros_(norm.gamma_beta.bias)
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


def test_cpu_winograd_swap_keeps_parameters_and_results():
    from sasan.models import SASANNetworks
    from sasan.train.device import fast_cpu_convs, resolve_runtime

    torch.manual_seed(0)
    nets = SASANNetworks(3, 5, 8)
    before = {k: v.clone() for k, v in nets.state_dict().items()}
    x, maps = torch.randn(1, 3, 64, 64), torch.randn(1, 8, 64, 64)
    ref = nets.syn_s(x, maps)
    swapped = fast_cpu_convs(nets, resolve_runtime("cpu"), enabled=True)
    # the gamma/beta convs of the 128- and 64-channel SASAN norms, in both synthesis modules
    assert swapped >= 8
    assert set(nets.state_dict()) == set(before)
    assert all(torch.equal(before[k], v) for k, v in nets.state_dict().items())
    assert torch.allclose(nets.syn_s(x, maps), ref, atol=1e-4)
    assert fast_cpu_convs(SASANNetworks(3, 5, 8), resolve_runtime("cpu"), enabled=False) == 0


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


@pytest.mark.parametrize("f_in,f_out,winograd", [(8, 8, False), (8, 4, False), (64, 32, False), (64, 32, True)])
def test_residual_block_fast_forward_equals_the_written_composition(f_in, f_out, winograd):
    """forward() merges the norms' first convs, shares one instance norm and folds conv_s into
    norm_s's beta conv; values and every gradient must equal the module-by-module block."""
    from sasan.models.winograd import winograd_convs

    torch.manual_seed(0)
    block = SASANResBlock(f_in, f_out, k=3, hidden=64 if f_in == 64 else 4)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.2)
    if winograd:
        assert winograd_convs(block) == 4          # the norms' gamma/beta convs (64 -> 2C), conv_0
    x = torch.randn(2, f_in, 64, 64, requires_grad=True)
    maps = torch.rand(2, 3, 32, 32, requires_grad=True)   # resized inside, as in the decoder
    fast, ref = block(x, maps), block.reference_forward(x, maps)
    scale = ref.abs().max()
    assert (fast - ref).abs().max() <= 1e-5 * scale
    grad = torch.randn_like(ref)
    inputs = [x, maps, *block.parameters()]
    for g_fast, g_ref in zip(torch.autograd.grad(fast, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        assert (g_fast - g_ref).abs().max() <= 1e-5 * g_ref.abs().max()


def test_modulate_matches_the_formula_and_its_gradients():
    """eq. (3) with a hand-written backward: values against n * (1 + gamma) + beta, and
    gradients checked numerically (double precision)."""
    from sasan.models.sasan_norm import modulate

    torch.manual_seed(0)
    n = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    gb = torch.randn(2, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    gamma, beta = gb[:, :3], gb[:, 3:]
    assert torch.allclose(modulate(n, gb), n * (1 + gamma) + beta)
    assert torch.autograd.gradcheck(modulate, (n, gb))
    assert torch.autograd.gradcheck(lambda g: modulate(n.detach(), g), (gb,))
    with pytest.raises(ValueError, match="channels"):
        modulate(n, gb[:, :5])


def test_residual_block_under_bf16_autocast():
    """The CUDA path trains under bf16 autocast; the rearranged block and the hand-written
    modulation backward must accept mixed dtypes (checked here with CPU autocast)."""
    torch.manual_seed(0)
    block = SASANResBlock(8, 4, k=2, hidden=4)
    x, maps = torch.randn(2, 8, 16, 16), torch.rand(2, 2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = block(x, maps), block.reference_forward(x, maps)
    assert (out.float() - ref.float()).abs().max() <= 0.02 * ref.float().abs().max()
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize("h, w, bias", [(4, 4, False), (5, 7, True), (1, 3, False)])
def test_up_concat_conv_equals_upsample_concat_reflect_conv(h, w, bias):
    """The sub-pixel decoder conv against the plain composition: values and gradients of the
    low-res input, the skip input, the weight and the bias."""
    import torch.nn.functional as F

    from sasan.models.attention_unet import up_concat_conv3x3

    gen = torch.Generator().manual_seed(h * 10 + w)
    low = torch.randn(2, 6, h, w, generator=gen, requires_grad=True)
    skip = torch.randn(2, 3, 2 * h, 2 * w, generator=gen, requires_grad=True)
    weight = torch.randn(5, 9, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(5, generator=gen, requires_grad=True) if bias else None
    up = torch.cat([F.interpolate(low, scale_factor=2.0, mode="nearest"), skip], 1)
    ref = F.conv2d(F.pad(up, (1, 1, 1, 1), mode="reflect"), weight, b)
    got = up_concat_conv3x3(low, skip, weight, b)
    assert got.shape == ref.shape == (2, 5, 2 * h, 2 * w)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    inputs = [low, skip, weight] + ([b] if bias else [])
    g = torch.randn(ref.shape, generator=gen)
    for a, e in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(ref, inputs, g)):
        assert (a - e).abs().max() <= 1e-5 * e.abs().max()


def test_attention_module_forward_equals_the_written_composition():
    """forward() runs the decoder convs in sub-pixel form; maps, segmentation and every
    parameter's gradient must equal the layer-by-layer module."""
    torch.manual_seed(0)
    att = AttentionModule(in_channels=3, k=8, num_classes=5, width=8)
    x = torch.randn(2, 3, 48, 32, requires_grad=True)
    (m_fast, s_fast), (m_ref, s_ref) = att(x), att.reference_forward(x)
    for fast, ref in ((m_fast, m_ref), (s_fast, s_ref)):
        assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()
    inputs = [x, *att.parameters()]
    loss_fast = m_fast.square().mean() + s_fast.logsumexp(1).mean()
    loss_ref = m_ref.square().mean() + s_ref.logsumexp(1).mean()
    for g_fast, g_ref in zip(torch.autograd.grad(loss_fast, inputs), torch.autograd.grad(loss_ref, inputs)):
        assert (g_fast - g_ref).abs().max() <= 1e-4 * g_ref.abs().max().clamp_min(1e-12)

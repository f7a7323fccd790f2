"""The joint trainer: every loss term finite and weighted as configured, the translator
really fits a fixed batch, each step moves only its own networks, ablations switch the
right terms off."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sasan.config import LossWeights
from sasan.models import build_networks
from sasan.train import joint
from sasan.train.device import resolve_runtime
from sasan.train.variants import variant_config

from ..stand_ins import Scale
from .conftest import blob_slices, tiny_config


def make_trainer(cfg, paired=False):
    torch.manual_seed(0)
    nets = build_networks(cfg.model, seg_adversary=not paired)
    j = cfg.train.joint
    og, od = joint.make_optimizers(nets, 1e-3, j.betas, 0.0, paired)
    return nets, joint.JointTrainer(nets, cfg.train.losses, resolve_runtime("cpu"), og, od, paired=paired)


def fixed_batch(n=2):
    xs, ys = blob_slices(n, seed=1, bright_ring=True)
    ts, _ = blob_slices(n, seed=2, bright_ring=False)
    return {"x": torch.from_numpy(xs), "y_x": torch.from_numpy(ys).long(), "t": torch.from_numpy(ts)}


SASAN_TERMS = {"adversarial", "cycle", "identity", "orthogonality", "attention_consistency",
               "seg_adversarial", "aux_seg", "pseudo_seg"}


def weights_config(**weights):
    """tiny_config with every SASAN term's weight 0 except those given (and dice_weight)."""
    return tiny_config(train={"losses": {**{name: 0.0 for name in SASAN_TERMS}, **weights}})


def param_ids(modules):
    return {id(p) for m in modules for p in m.parameters()}


def record_optimizer_steps(trainer, nets):
    """Wrap opt_g.step and opt_d.step: at each call, snapshot every parameter of ``nets`` by
    name as (grad copy or None, requires_grad, value copy), then run the real step.
    Returns {"G": snapshot, "D": snapshot}, filled in by ``trainer.step``."""
    seen = {}

    def wrap(key, opt):
        real_step = opt.step

        def step(*args, **kwargs):
            seen[key] = {n: (None if p.grad is None else p.grad.detach().clone(), p.requires_grad,
                             p.detach().clone()) for n, p in nets.named_parameters()}
            return real_step(*args, **kwargs)

        opt.step = step

    wrap("G", trainer.opt_g)
    wrap("D", trainer.opt_d)
    return seen


def names_of(nets, modules):
    ids = param_ids(modules)
    return {n for n, p in nets.named_parameters() if id(p) in ids}


def grad_mass_at(snapshot, names):
    """Sum of |grad| over the named parameters in one of record_optimizer_steps' snapshots."""
    return sum(float(snapshot[n][0].abs().sum()) for n in names if snapshot[n][0] is not None)


def same_grad(a, b):
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


def test_every_sasan_term_is_present_and_finite():
    _, trainer = make_trainer(tiny_config())
    logs = trainer.step(fixed_batch())
    g_terms = {k[2:] for k in logs if k.startswith("G/")} - {"total"}
    assert g_terms == SASAN_TERMS
    assert {"D/image", "D/seg", "D/total"} <= set(logs)
    assert all(math.isfinite(v) for v in logs.values())


# ---------------------------------------------------------------------------- loss weights
def test_generator_total_is_the_weighted_sum_of_its_terms():
    """G/total = 10 x cycle + 2.5 x identity when only those two weights are on."""
    _, trainer = make_trainer(weights_config(cycle=10.0, identity=2.5))
    logs = trainer.step(fixed_batch())
    assert {k for k in logs if k.startswith("G/")} == {"G/cycle", "G/identity", "G/total"}
    assert logs["G/total"] == pytest.approx(10 * logs["G/cycle"] + 2.5 * logs["G/identity"], rel=1e-6)


def test_doubling_a_weight_doubles_its_gradients():
    """The weight multiplies the term inside the backward: cycle weight 2 gives S_s exactly
    twice the gradients of cycle weight 1 (same initial networks, same batch)."""
    once, _ = gradients_after_one_step(cycle=1.0)
    twice, _ = gradients_after_one_step(cycle=2.0)
    pairs = [(a.grad, b.grad) for a, b in zip(once.syn_s.parameters(), twice.syn_s.parameters())]
    assert any(g1 is not None and g1.abs().sum() > 0 for g1, _ in pairs)
    for g1, g2 in pairs:
        assert (g1 is None) == (g2 is None)
        if g1 is not None:
            torch.testing.assert_close(g2, 2 * g1, rtol=1e-5, atol=1e-12)


def hand_passes(nets, x, t):
    """fake_t, fake_s and the segmentation logits of METHOD.md §3, computed here call by
    call, without gradient."""
    with torch.no_grad():
        att_s_x, _ = nets.att_s(x)
        att_t_t, seg_t_t = nets.att_t(t)
        fake_t, fake_s = nets.syn_t(x, att_s_x), nets.syn_s(t, att_t_t)
        return dict(fake_t=fake_t, fake_s=fake_s, seg_t_t=seg_t_t,
                    seg_t_fake=nets.att_t(fake_t)[1], seg_s_fake=nets.att_s(fake_s)[1])


def test_dice_weight_scales_the_dice_part_of_both_segmentation_terms():
    """seg_loss = CE + dice_weight x soft Dice (METHOD.md §3), in aux_seg (labels y_x) and
    pseudo_seg (labels argmax A_s(fake_s)): each logged term grows by dice_weight x that
    soft Dice loss."""
    from sasan.losses.segmentation import soft_dice_loss

    batch = fixed_batch()
    trainers = {dw: make_trainer(weights_config(aux_seg=1.0, pseudo_seg=1.0, dice_weight=dw))
                for dw in (0.0, 0.5, 1.0)}                      # identical initial networks
    out = hand_passes(trainers[0.0][0], batch["x"], batch["t"])
    logs = {dw: trainer.step(batch) for dw, (_, trainer) in trainers.items()}
    dice = {"G/aux_seg": soft_dice_loss(out["seg_t_fake"], batch["y_x"]).item(),
            "G/pseudo_seg": soft_dice_loss(out["seg_t_t"], out["seg_s_fake"].argmax(1)).item()}
    for term, d in dice.items():
        assert 0.01 < d <= 1.0, term
        for dice_weight in (0.5, 1.0):
            assert logs[dice_weight][term] - logs[0.0][term] == pytest.approx(dice_weight * d, rel=1e-4), term


# ---------------------------------------------------------------------------- D terms
def test_image_discriminator_loss_matches_the_hand_formula():
    """D_image = 0.5 x w.adversarial x [mean((D_s(x)-1)^2) + mean(D_s(fake_s)^2)
    + mean((D_t(t)-1)^2) + mean(D_t(fake_t)^2)], with stand-ins D_s(p) = a_s p, D_t(p) = a_t p:
    swapping real and fake, or the two domains' discriminators, gives another value."""
    g = torch.Generator().manual_seed(0)
    x, t, fake_s, fake_t = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1 for _ in range(4))
    a_s, a_t = 0.5, -1.5
    nets = SimpleNamespace(disc_s=Scale(a_s), disc_t=Scale(a_t), seg_discs=None, feat_disc_s=None)
    w = LossWeights(adversarial=3.0)
    terms = joint.discriminator_terms(nets, {"fake_s": fake_s, "fake_t": fake_t}, x, t, w)
    want = 0.5 * 3.0 * (((a_s * x - 1) ** 2).mean() + ((a_s * fake_s) ** 2).mean()
                        + ((a_t * t - 1) ** 2).mean() + ((a_t * fake_t) ** 2).mean())
    assert set(terms) == {"D_image"}
    assert terms["D_image"].item() == pytest.approx(want.item(), rel=1e-6)


def test_segmentation_discriminator_loss_matches_the_hand_formula():
    """D_seg = 0.5 x w.seg_adversarial x (1/C) sum_c [mean((D_c(r_c)-1)^2) + mean(D_c(f_c)^2)
    + mean(D_c(g_c)^2)], real r = softmax(A_s(x)), fakes f = softmax(A_s(fake_s)) and
    g = softmax(A_t(t)) (METHOD.md §3), with stand-ins D_c(p) = a_c p."""
    g = torch.Generator().manual_seed(1)
    img = [torch.rand(2, 3, 8, 8, generator=g) for _ in range(4)]
    logits = {k: torch.randn(2, 3, 8, 8, generator=g) * 2 for k in ("seg_s_x", "seg_s_fake", "seg_t_t")}
    a = [2.0, -0.5]                                         # C = 3: classes 1 and 2
    nets = SimpleNamespace(disc_s=Scale(1.0), disc_t=Scale(1.0), seg_discs=[Scale(v) for v in a],
                           feat_disc_s=None)
    w = LossWeights(seg_adversarial=3.0)
    terms = joint.discriminator_terms(nets, {"fake_s": img[0], "fake_t": img[1], **logits}, img[2], img[3], w)
    real, f, gg = (logits[k].softmax(1) for k in ("seg_s_x", "seg_s_fake", "seg_t_t"))
    want = 0.5 * 3.0 / 3 * sum(((ac * real[:, c] - 1) ** 2).mean() + ((ac * f[:, c]) ** 2).mean()
                               + ((ac * gg[:, c]) ** 2).mean() for c, ac in zip((1, 2), a))
    assert terms["D_seg"].item() == pytest.approx(want.item(), rel=1e-6)


# ---------------------------------------------------------------------------- who learns when
def test_generator_step_leaves_discriminators_alone():
    """At opt_g.step no discriminator (image, segmentation, feature) holds a gradient while
    the generators do; after step() every discriminator trains again; the G optimiser holds
    no discriminator parameter."""
    nets, trainer = make_trainer(variant_config(tiny_config(), "feature_disc"))
    d_modules = nets.discriminator_modules()
    assert len(d_modules) == 5                                  # disc_s, disc_t, seg_discs, feat x 2
    seen = record_optimizer_steps(trainer, nets)
    trainer.step(fixed_batch())
    d_names = names_of(nets, d_modules)
    g_names = names_of(nets, nets.generator_modules())
    assert all(seen["G"][n][0] is None for n in d_names)
    assert all(seen["G"][n][0] is not None for n in g_names if n.startswith("syn_s."))
    assert all(p.requires_grad for p in nets.parameters() if id(p) in param_ids(d_modules))
    assert not {id(p) for p in trainer.g_params} & param_ids(d_modules)


def test_discriminator_step_moves_only_the_discriminators():
    """The D step's backward leaves every generator-side gradient as the G step left it (its
    fakes are detached) and gives each discriminator a gradient it did not have at the G
    step; opt_d.step changes no generator-side parameter."""
    nets, trainer = make_trainer(tiny_config())
    seen = record_optimizer_steps(trainer, nets)
    trainer.step(fixed_batch())
    d_modules = nets.discriminator_modules()
    g_names = names_of(nets, nets.generator_modules() + [nets.att_s])
    changed_by_d_step = [n for n in g_names if not same_grad(seen["G"][n][0], seen["D"][n][0])]
    assert not changed_by_d_step
    for module in d_modules:
        names = names_of(nets, [module])
        assert all(seen["G"][n][0] is None for n in names)
        assert grad_mass_at(seen["D"], names) > 0
    params = dict(nets.named_parameters())
    assert all(torch.equal(seen["D"][n][2], params[n]) for n in g_names)


def test_frozen_source_attention_gets_no_update():
    """Unpaired: A_s is frozen, outside the G optimiser, gets no gradient and stays as it was."""
    nets, trainer = make_trainer(tiny_config())
    before = {k: v.clone() for k, v in nets.att_s.state_dict().items()}
    seen = record_optimizer_steps(trainer, nets)
    trainer.step(fixed_batch())
    after = nets.att_s.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in nets.att_s.parameters())
    a_names = names_of(nets, [nets.att_s])
    assert all(seen[step][n][0] is None for step in ("G", "D") for n in a_names)
    assert not {id(p) for p in trainer.g_params} & param_ids([nets.att_s])


def test_paired_step_trains_source_attention_and_logs_the_voxel_l1():
    """Paired: A_s is in the G optimiser, gets gradients and changes; G/voxel is
    mean|S_t(x, A_s(x)) - t| + mean|S_s(t, A_t(t)) - x| on the networks before the step."""
    nets, trainer = make_trainer(tiny_config(experiment={"mode": "paired"}), paired=True)
    batch = fixed_batch()
    batch.pop("y_x")
    x, t = batch["x"], batch["t"]
    out = hand_passes(nets, x, t)
    want = (out["fake_t"] - t).abs().mean() + (out["fake_s"] - x).abs().mean()
    before = copy.deepcopy(nets.att_s)
    seen = record_optimizer_steps(trainer, nets)
    logs = trainer.step(batch)
    assert logs["G/voxel"] == pytest.approx(want.item(), rel=1e-5)
    assert param_ids([nets.att_s]) <= {id(p) for p in trainer.g_params}
    assert grad_mass_at(seen["G"], names_of(nets, [nets.att_s])) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), nets.att_s.parameters()))


PAIRED_TERMS = {"adversarial", "cycle", "identity", "voxel", "orthogonality"}


@pytest.mark.parametrize("term,learns,untouched", [
    ("voxel", {"att_s", "att_t", "syn_s", "syn_t"}, set()),   # S_t(x, A_s(x)) ~ t, S_s(t, A_t(t)) ~ x
    ("orthogonality", {"att_s", "att_t"}, {"syn_s", "syn_t"}),  # on A_s(x) and A_t(t)
])
def test_paired_terms_train_source_attention_through_its_maps_of_x(term, learns, untouched):
    """Paired: A_s(x) runs with gradient, so each of these terms alone trains A_s (neither
    uses A_s(fake_s), so A_s(x) is the only way in)."""
    weights = {name: (1.0 if name == term else 0.0) for name in PAIRED_TERMS}
    nets, trainer = make_trainer(tiny_config(experiment={"mode": "paired"}, train={"losses": weights}),
                                 paired=True)
    seen = record_optimizer_steps(trainer, nets)
    batch = fixed_batch()
    batch.pop("y_x")
    logs = trainer.step(batch)
    assert {k[2:] for k in logs if k.startswith("G/")} - {"total"} == {term}
    for name in learns | untouched:
        assert (grad_mass_at(seen["G"], names_of(nets, [getattr(nets, name)])) > 0) == (name in learns), name


# ---------------------------------------------------------------------------- variants
def test_cyclegan_ablation_has_only_image_terms():
    cfg = variant_config(tiny_config(), "cyclegan")
    nets, trainer = make_trainer(cfg)
    logs = trainer.step(fixed_batch())
    assert {k[2:] for k in logs if k.startswith("G/")} - {"total"} == {"adversarial", "cycle", "identity"}
    assert nets.att_s is None


@pytest.mark.parametrize("variant,missing", [("no_seg_adversary", "seg_adversarial"),
                                             ("no_aux", "aux_seg"),
                                             ("no_orthogonality", "orthogonality")])
def test_loss_ablations_switch_their_term_off(variant, missing):
    cfg = variant_config(tiny_config(), variant)
    _, trainer = make_trainer(cfg)
    logs = trainer.step(fixed_batch())
    assert f"G/{missing}" not in logs and "G/cycle" in logs


def test_feature_discriminator_switch():
    cfg = variant_config(tiny_config(), "feature_disc")
    _, trainer = make_trainer(cfg)
    logs = trainer.step(fixed_batch())
    assert "G/feature_adversarial" in logs and "D/feature" in logs


def test_paired_mode_uses_voxel_loss_and_no_segmentation_terms():
    _, trainer = make_trainer(tiny_config(experiment={"mode": "paired"}), paired=True)
    batch = fixed_batch()
    batch.pop("y_x")
    logs = trainer.step(batch)
    assert "G/voxel" in logs and "G/aux_seg" not in logs and "G/seg_adversarial" not in logs
    assert "G/orthogonality" in logs


def test_paired_recipe_bundles_a_translator_without_a_u_net(tmp_path, tiny_data):
    """Paired mode trains no segmenter, and its bundle holds none (it held an untrained one)."""
    from sasan.bundle import load_bundle
    from sasan.train.recipe import Trainer

    summary = Trainer(tiny_config(experiment={"mode": "paired"}), tmp_path, "sasan", progress=False).run(tiny_data)
    assert "joint" in summary and "segmenter" not in summary
    assert torch.load(tmp_path / "model.pt", weights_only=True)["segmenter"] is None
    bundle = load_bundle(tmp_path / "model.pt")
    assert not bundle.segments and bundle.translates and bundle.att_t is not None


@pytest.mark.slow
def test_translator_fits_a_fixed_batch():
    """Cycle and identity losses fall clearly when the same batch is seen repeatedly."""
    _, trainer = make_trainer(tiny_config())
    batch = fixed_batch()
    first = trainer.step(batch)
    for _ in range(50):
        last = trainer.step(batch)
    # measured: cycle 3.59 -> ~1.7, identity 3.52 -> ~1.6, total 52.5 -> ~27 in 60 steps
    assert last["G/cycle"] < 0.6 * first["G/cycle"]
    assert last["G/identity"] < 0.6 * first["G/identity"]
    assert last["G/total"] < 0.75 * first["G/total"]
    assert last["G/orthogonality"] < first["G/orthogonality"]
    assert all(math.isfinite(v) for v in last.values())


# ---------------------------------------------------------------------------- gradient routing
def gradients_after_one_step(**weights):
    """Networks and logs after one joint step with only the given SASAN terms weighted and
    the generator's optimiser step skipped, so each parameter's .grad is what those terms
    gave."""
    cfg = weights_config(**weights)
    nets, trainer = make_trainer(cfg)
    trainer.opt_g.step = lambda *a, **k: None       # keep the gradients for inspection
    trainer.opt_d.zero_grad = lambda *a, **k: None
    trainer.opt_d.step = lambda *a, **k: None
    logs = trainer.step(fixed_batch())
    assert {k[2:] for k in logs if k.startswith("G/")} - {"total"} == {n for n, v in weights.items() if v}
    return nets, logs


def grad_mass(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("term,learns,untouched", [
    # METHOD.md section 3, the authors' recipe: A_s(fake_s) is the pseudo-labels' teacher
    ("pseudo_seg", {"att_t"}, {"syn_s", "syn_t"}),
    ("orthogonality", {"att_t"}, {"syn_s", "syn_t"}),          # on A_t(t) only
    ("aux_seg", {"att_t", "syn_t"}, {"syn_s"}),                # A_t(fake_t), fake_t = S_t(x, A_s(x))
    ("seg_adversarial", {"att_t", "syn_s"}, {"syn_t"}),        # softmax(A_s(fake_s)), softmax(A_t(t))
    ("attention_consistency", {"att_t", "syn_s", "syn_t"}, set()),
    ("cycle", {"att_t", "syn_s", "syn_t"}, set()),             # end to end through the SASAN norms
    # D_t(S_t(x, A_s(x))) and D_s(S_s(t, A_t(t))): A_t only through fake_s's maps
    ("adversarial", {"att_t", "syn_s", "syn_t"}, set()),
    # S_s(x, A_s(x)) ~ x and S_t(t, A_t(t)) ~ t: A_t only through idt_t's maps
    ("identity", {"att_t", "syn_s", "syn_t"}, set()),
])
def test_each_term_trains_what_the_method_says(term, learns, untouched):
    nets, _ = gradients_after_one_step(**{term: 1.0})
    for name in learns:
        assert grad_mass(getattr(nets, name)) > 0, name
    for name in untouched:
        assert grad_mass(getattr(nets, name)) == 0, name
    assert grad_mass(nets.att_s) == 0                           # frozen teacher

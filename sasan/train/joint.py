"""Joint adversarial training of SASAN (METHOD.md sections 3-4): per iteration one generator
step, then one discriminator step on detached fakes.

Passes (names as in METHOD.md), x: source image, y_x: its labels, t: target image:
    att_s_x, seg_s_x     = A_s(x)        (A_s pre-trained and frozen)
    att_t_t, seg_t_t     = A_t(t)
    fake_t = S_t(x, att_s_x)             fake_s = S_s(t, att_t_t)
    att_t_fake, seg_t_fake = A_t(fake_t) att_s_fake, seg_s_fake = A_s(fake_s)
    rec_x  = S_s(fake_t, att_t_fake)     rec_t  = S_t(fake_s, att_s_fake)
    idt_s  = S_s(x, att_s_x)             idt_t  = S_t(t, att_t_t)

Generator loss = sum of weight x term (``LossWeights``; defaults in brackets):
    adversarial [2]            lsgan_G(D_t(fake_t)) + lsgan_G(D_s(fake_s))
    seg_adversarial [2]        segadv_G(softmax(seg_s_fake)) + segadv_G(softmax(seg_t_t))
    cycle [10]                 (L1 + 1 - SSIM)(rec_x, x) + (L1 + 1 - SSIM)(rec_t, t)
    identity [2.5]             (L1 + 1 - SSIM)(idt_s, x) + (L1 + 1 - SSIM)(idt_t, t)
    orthogonality [1]          orth(att_t_t)
    aux_seg [0.1]              seg_loss(seg_t_fake, y_x)
    pseudo_seg [0.1]           seg_loss(seg_t_t, argmax seg_s_fake) + L1(seg_t_t, sg(seg_s_fake))
    attention_consistency [.1] L1(att_t_t, att_s_fake) + L1(att_t_fake, att_s_x)
    feature_adversarial [2]    (optional) lsgan_G on the encoder features of translated images
Discriminator loss, on detached fakes, each real and each fake term counted once:
    D_image  0.5 x 2 x [lsgan_D(D_s(x), D_s(fake_s)) + lsgan_D(D_t(t), D_t(fake_t))]
    D_seg    0.5 x 2 x segadv_D(real = softmax(seg_s_x), fakes = softmax(seg_s_fake), softmax(seg_t_t))

CycleGAN ablation (``nets.attention`` False): constant maps; adversarial + cycle + identity.
Paired mode (RIRE-style) has its own term set (:func:`paired_generator_terms`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from sasan import losses as L
from sasan.config import LossWeights
from sasan.models.networks import SASANNetworks
from sasan.train.device import Runtime


def set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


# ---------------------------------------------------------------------------- passes
def translate(nets: SASANNetworks, x: Tensor, t: Tensor, train_att_s: bool = False) -> dict[str, Tensor]:
    """Every forward pass of the G step, one network call each, in METHOD.md's order.
    The CycleGAN ablation runs the same passes with constant maps (``None``).

    ``A_s(x)`` is the frozen, pre-trained teacher and runs without gradient, except in paired
    mode (``train_att_s``), where no labels pre-train it and it learns jointly with the
    generators (METHOD.md §3, last paragraph)."""
    out: dict[str, Tensor] = {}
    if nets.attention:
        with torch.set_grad_enabled(train_att_s and torch.is_grad_enabled()):
            out["att_s_x"], out["seg_s_x"] = nets.att_s(x)
        out["att_t_t"], out["seg_t_t"] = nets.att_t(t)
    att_s = (lambda img: nets.att_s(img)) if nets.attention else (lambda img: (None, None))
    att_t = (lambda img: nets.att_t(img)) if nets.attention else (lambda img: (None, None))
    att_s_x, att_t_t = out.get("att_s_x"), out.get("att_t_t")

    out["fake_t"] = nets.syn_t(x, att_s_x)
    out["fake_s"] = nets.syn_s(t, att_t_t)
    att_t_fake, seg_t_fake = att_t(out["fake_t"])
    att_s_fake, seg_s_fake = att_s(out["fake_s"])
    out["rec_x"] = nets.syn_s(out["fake_t"], att_t_fake)
    out["rec_t"] = nets.syn_t(out["fake_s"], att_s_fake)
    out["idt_s"] = nets.syn_s(x, att_s_x)
    out["idt_t"] = nets.syn_t(t, att_t_t)
    if nets.attention:
        out.update(att_t_fake=att_t_fake, seg_t_fake=seg_t_fake, att_s_fake=att_s_fake, seg_s_fake=seg_s_fake)
    return out


# ---------------------------------------------------------------------------- G terms
def image_terms(nets: SASANNetworks, out: dict[str, Tensor], x: Tensor, t: Tensor,
                w: LossWeights) -> dict[str, Tensor]:
    """The terms SASAN shares with its CycleGAN ablation (and with paired mode)."""
    terms: dict[str, Tensor] = {}
    if w.adversarial:
        terms["adversarial"] = (L.lsgan_generator_loss(nets.disc_t(out["fake_t"]))
                                + L.lsgan_generator_loss(nets.disc_s(out["fake_s"])))
    if w.cycle:
        terms["cycle"] = L.cycle_loss(out["rec_x"], x) + L.cycle_loss(out["rec_t"], t)
    if w.identity:
        terms["identity"] = L.identity_loss(out["idt_s"], x) + L.identity_loss(out["idt_t"], t)
    if nets.feat_disc_s is not None and w.feature_adversarial:
        # S_s's encoding of fake target images should pass for its encoding of real ones
        terms["feature_adversarial"] = (
            L.lsgan_generator_loss(nets.feat_disc_s(nets.syn_s.encode(out["fake_t"])))
            + L.lsgan_generator_loss(nets.feat_disc_t(nets.syn_t.encode(out["fake_s"]))))
    return terms


def attention_terms(nets: SASANNetworks, out: dict[str, Tensor], y_x: Tensor, w: LossWeights) -> dict[str, Tensor]:
    """SASAN's own terms (unpaired): attention, segmentation and the segmentation adversary."""
    terms: dict[str, Tensor] = {}
    if w.orthogonality:
        terms["orthogonality"] = L.orthogonality_loss(out["att_t_t"])
    if w.attention_consistency:
        terms["attention_consistency"] = (L.attention_consistency_loss(out["att_t_t"], out["att_s_fake"])
                                          + L.attention_consistency_loss(out["att_t_fake"], out["att_s_x"]))
    if w.aux_seg:
        terms["aux_seg"] = L.seg_loss(out["seg_t_fake"], y_x, dice_weight=w.dice_weight)
    if w.pseudo_seg:
        terms["pseudo_seg"] = L.pseudo_label_loss(out["seg_t_t"], out["seg_s_fake"], dice_weight=w.dice_weight)
    if nets.seg_discs is not None and w.seg_adversarial:
        terms["seg_adversarial"] = L.seg_adversarial_generator_loss(
            nets.seg_discs, [out["seg_s_fake"].softmax(1), out["seg_t_t"].softmax(1)])
    return terms


def paired_generator_terms(nets: SASANNetworks, out: dict[str, Tensor], x: Tensor, t: Tensor,
                           w: LossWeights) -> dict[str, Tensor]:
    """Paired (supervised) translation: image terms + voxel L1 to the registered partner;
    attention learned without labels (orthogonality of both modules' maps)."""
    terms = image_terms(nets, out, x, t, w)
    if w.voxel:
        terms["voxel"] = L.voxel_l1_loss(out["fake_t"], t) + L.voxel_l1_loss(out["fake_s"], x)
    if nets.attention and w.orthogonality:
        terms["orthogonality"] = L.orthogonality_loss(out["att_t_t"]) + L.orthogonality_loss(out["att_s_x"])
    return terms


# ---------------------------------------------------------------------------- D terms
def discriminator_terms(nets: SASANNetworks, fakes: dict[str, Tensor], x: Tensor, t: Tensor,
                        w: LossWeights) -> dict[str, Tensor]:
    """The D step on detached ``fakes`` (``fake_s``, ``fake_t``, and for SASAN ``seg_s_x``,
    ``seg_s_fake``, ``seg_t_t`` logits)."""
    terms = {"D_image": 0.5 * w.adversarial * (
        L.lsgan_discriminator_loss(nets.disc_s(x), nets.disc_s(fakes["fake_s"]))
        + L.lsgan_discriminator_loss(nets.disc_t(t), nets.disc_t(fakes["fake_t"])))}
    if nets.seg_discs is not None and "seg_s_fake" in fakes:
        terms["D_seg"] = 0.5 * w.seg_adversarial * L.seg_adversarial_discriminator_loss(
            nets.seg_discs, fakes["seg_s_x"].softmax(1),
            [fakes["seg_s_fake"].softmax(1), fakes["seg_t_t"].softmax(1)])
    if nets.feat_disc_s is not None:
        with torch.no_grad():   # S_s encodes target images: real = t, fake = fake_t (S_t: x, fake_s)
            feat = {"t": nets.syn_s.encode(t), "fake_t": nets.syn_s.encode(fakes["fake_t"]),
                    "x": nets.syn_t.encode(x), "fake_s": nets.syn_t.encode(fakes["fake_s"])}
        terms["D_feature"] = 0.5 * w.feature_adversarial * (
            L.lsgan_discriminator_loss(nets.feat_disc_s(feat["t"]), nets.feat_disc_s(feat["fake_t"]))
            + L.lsgan_discriminator_loss(nets.feat_disc_t(feat["x"]), nets.feat_disc_t(feat["fake_s"])))
    return terms


DETACHED_FOR_D = ("fake_s", "fake_t", "seg_s_x", "seg_s_fake", "seg_t_t")


def weighted_sum(terms: dict[str, Tensor], w: LossWeights) -> Tensor:
    return sum(getattr(w, name) * value for name, value in terms.items())


# ---------------------------------------------------------------------------- trainer
class JointTrainer:
    """``step(batch)``: the G step, then the D step.

    ``batch``: {"x": (B,C,H,W), "y_x": (B,H,W) int64 (unpaired), "t": (B,C,H,W)}. In
    unpaired mode A_s must be pre-trained before and stays frozen; in paired mode it is
    trained with the generators (orthogonality only)."""

    def __init__(self, nets: SASANNetworks, weights: LossWeights, runtime: Runtime,
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, *, paired: bool = False,
                 sync: Optional[Any] = None):
        self.nets, self.w, self.rt, self.paired = nets, weights, runtime, paired
        self.opt_g, self.opt_d = opt_g, opt_d
        self.sync = sync      # data-parallel: sasan.train.distributed.Synchronizer, else None
        self.g_params = [p for group in opt_g.param_groups for p in group["params"]]
        self.d_params = [p for group in opt_d.param_groups for p in group["params"]]
        if nets.att_s is not None and not paired:
            set_requires_grad([nets.att_s], False)

    def generator_terms(self, out: dict[str, Tensor], x: Tensor, y_x: Optional[Tensor], t: Tensor):
        if self.paired:
            return paired_generator_terms(self.nets, out, x, t, self.w)
        terms = image_terms(self.nets, out, x, t, self.w)
        if self.nets.attention:
            terms.update(attention_terms(self.nets, out, y_x, self.w))
        return terms

    def step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        x, t = self.rt.batch(batch["x"]), self.rt.batch(batch["t"])
        y_x = batch.get("y_x")
        y_x = y_x.to(self.rt.device) if y_x is not None else None
        d_modules = self.nets.discriminator_modules()

        # generator step: discriminators frozen
        set_requires_grad(d_modules, False)
        self.opt_g.zero_grad(set_to_none=True)
        with self.rt.autocast():
            out = translate(self.nets, x, t, train_att_s=self.paired)
            g_terms = self.generator_terms(out, x, y_x, t)
            loss_g = weighted_sum(g_terms, self.w)
        loss_g.backward()
        if self.sync is not None:
            self.sync.gradients(self.g_params)
        self.opt_g.step()
        set_requires_grad(d_modules, True)

        # discriminator step on detached fakes
        fakes = {k: out[k].detach() for k in DETACHED_FOR_D if k in out}
        del out
        self.opt_d.zero_grad(set_to_none=True)
        with self.rt.autocast():
            d_terms = discriminator_terms(self.nets, fakes, x, t, self.w)
            loss_d = sum(d_terms.values())
        loss_d.backward()
        if self.sync is not None:
            self.sync.gradients(self.d_params)
        self.opt_d.step()
        if self.sync is not None:
            self.sync.buffers(self.nets)

        logs = {f"G/{k}": float(v.detach()) for k, v in g_terms.items()}
        logs.update({f"D/{k[2:]}": float(v.detach()) for k, v in d_terms.items()})
        logs["G/total"], logs["D/total"] = float(loss_g.detach()), float(loss_d.detach())
        return logs

    @torch.no_grad()
    def sample(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Forward pass for pictures: translations, reconstructions, attention maps."""
        with self.rt.autocast():
            out = translate(self.nets, self.rt.batch(x), self.rt.batch(t))
        return {k: v.float().cpu() for k, v in out.items()}


def make_optimizers(nets: SASANNetworks, lr: float, betas: tuple[float, float], weight_decay: float,
                    paired: bool) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the generator side (S_s, S_t, A_t; A_s too in paired mode) and for the
    discriminators. ``foreach``: the multi-tensor update, the default on CUDA; on CPU it gives
    the same floats as the per-tensor loop with a quarter less optimizer time (docs/cpu-speed.md)."""
    g_modules = nets.generator_modules() + ([nets.att_s] if paired and nets.att_s is not None else [])
    g_params = [p for m in g_modules for p in m.parameters()]
    d_params = [p for m in nets.discriminator_modules() for p in m.parameters()]
    return (torch.optim.Adam(g_params, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True),
            torch.optim.Adam(d_params, lr=lr, betas=betas, weight_decay=weight_decay, foreach=True))

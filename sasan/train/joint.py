"""Joint adversarial training of SASAN (METHOD.md sections 3-4): one generator step, then
one discriminator step, per iteration.

Tensors (names as in METHOD.md), x: source image, y_x: its labels, t: target image:
    att_s_x, seg_s_x     = A_s(x)                 att_t_t, seg_t_t       = A_t(t)
    fake_t = S_t(x, att_s_x)                       fake_s = S_s(t, att_t_t)
    att_t_fake, seg_t_fake = A_t(fake_t)           att_s_fake, seg_s_fake = A_s(fake_s)
    rec_x  = S_s(fake_t, att_t_fake)               rec_t  = S_t(fake_s, att_s_fake)
    idt_s  = S_s(x, att_s_x)                       idt_t  = S_t(t, att_t_t)

Generator loss (weights from ``LossWeights``; default in brackets):
    adversarial [2]            lsgan_G(D_t(fake_t)) + lsgan_G(D_s(fake_s))
    seg_adversarial [2]        segadv_G(softmax(seg_s_fake)) + segadv_G(softmax(seg_t_t))
    cycle [10]                 (L1 + 1 - SSIM)(rec_x, x) + (L1 + 1 - SSIM)(rec_t, t)
    identity [2.5]             (L1 + 1 - SSIM)(idt_s, x) + (L1 + 1 - SSIM)(idt_t, t)
    orthogonality [1]          orth(att_t_t) + orth(att_t_fake)
    aux_seg [0.1]              seg_loss(seg_t_fake, y_x) (+ seg_loss(seg_s_x, y_x) if A_s trains)
    pseudo_seg [0.1]           pseudo_label_loss(seg_t_t, seg_s_fake)
    attention_consistency [.1] L1(att_t_t, att_s_fake) + L1(att_t_fake, att_s_x)
    voxel [10] (paired only)   L1(fake_t, t) + L1(fake_s, x)
    feature_adversarial [2]    (optional) lsgan_G on encoder features of fake inputs
Discriminator loss: 0.5 x weight x (LSGAN real/fake terms), on detached fakes; the
segmentation discriminators see one-hot source labels as real. The image and segmentation
terms' fake halves are taken from the G step's scores (same weights, same fake values) and
back-propagated to the discriminators only; the D step then judges the real samples.

``aux_seg_to_generator=False`` computes aux_seg on A_t(detached fake_t): A_t still learns
from translated source images, but S_t gets no gradient to make them easy for A_t.
``attention_synthesis_grad`` scales the image terms' gradient that reaches the attention
maps through the SASAN norms (1 = end to end, the paper's setting).

CycleGAN ablation (``attention=False``): constant maps, only adversarial + cycle + identity
(+ voxel). Paired mode: no segmentation adversary, attention learned with orthogonality only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from sasan import losses as L
from sasan.config import LossWeights
from sasan.models.networks import SASANNetworks
from sasan.train.device import Runtime


@dataclass(frozen=True)
class JointOptions:
    weights: LossWeights
    paired: bool = False
    train_source_attention: bool = False
    seg_real: str = "labels"     # "labels" | "source_attention"
    attention_synthesis_grad: float = 1.0   # gradient scale from S's norms into the maps
    aux_seg_to_generator: bool = True       # aux_seg gradient reaches S_t through fake_t


def scale_gradient(x: Optional[Tensor], factor: float) -> Optional[Tensor]:
    """Identity in the forward pass; multiplies the gradient flowing back through it by
    ``factor`` (0 = detach, 1 = untouched)."""
    if x is None or factor == 1.0:
        return x
    if factor == 0.0:
        return x.detach()
    return torch.lerp(x.detach(), x, factor)


def set_requires_grad(modules: list[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)


class JointTrainer:
    """Owns the networks' optimisation: ``step(batch)`` runs the G step then the D step.

    ``batch``: {"x": (B,C,H,W), "y_x": (B,H,W) int64 (unpaired), "t": (B,C,H,W)}.
    A_s must be pre-trained before (unpaired mode); it is frozen unless
    ``train_source_attention``."""

    def __init__(self, nets: SASANNetworks, opts: JointOptions, runtime: Runtime,
                 g_params: list[nn.Parameter], d_params: list[nn.Parameter],
                 opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, sync: Optional[Any] = None):
        self.nets, self.opts, self.rt = nets, opts, runtime
        self.sync = sync      # data-parallel: sasan.train.distributed.Synchronizer, else None
        self.g_params, self.d_params = g_params, d_params
        self.opt_g, self.opt_d = opt_g, opt_d
        self.att_source_frozen = nets.att_s is not None and not (opts.train_source_attention or opts.paired)
        if self.att_source_frozen:
            set_requires_grad([nets.att_s], False)
        self._fakes: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ forward
    def _translate(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Every pass of the G step, each network called on as large a batch as the data
        dependencies allow (instance norm is per sample, so batching changes nothing):

            S_t: enc [x, t]          dec fake_t (A_s maps)    enc fake_s    dec [idt_t, rec_t]
            A_t: [t, fake_t]         S_s: enc [t, x, fake_t]  dec [fake_s, rec_x]   dec idt_s
            A_s: x (no grad when frozen), fake_s

        The decodes driven by the frozen A_s's maps run apart from those driven by trained
        maps, so the norms compute map gradients only where they flow."""
        n = self.nets
        if not n.attention:
            return self._translate_constant_maps(x, t)
        out: dict[str, Tensor] = {}
        b = x.shape[0]
        g = self.opts.attention_synthesis_grad
        if self.att_source_frozen:
            with torch.no_grad():
                out["att_s_x"], out["seg_s_x"] = n.att_s(x)
        else:
            out["att_s_x"], out["seg_s_x"] = n.att_s(x)
        att_s_x = scale_gradient(out["att_s_x"], g)
        feat_t_in = n.syn_t.encode(torch.cat([x, t]))       # S_t's encodings of [x, t]
        out["fake_t"] = n.syn_t.decode(feat_t_in[:b], att_s_x)
        att_t, seg_t = n.att_t(torch.cat([t, out["fake_t"]]))
        (out["att_t_t"], out["att_t_fake"]), (out["seg_t_t"], out["seg_t_fake"]) = att_t.split(b), seg_t.split(b)
        feat_s_in = n.syn_s.encode(torch.cat([t, x, out["fake_t"]]))
        out["feat_t_by_s"], feat_x_by_s, out["feat_fake_t_by_s"] = feat_s_in.split(b)
        out["fake_s"], out["rec_x"] = n.syn_s.decode(
            torch.cat([out["feat_t_by_s"], out["feat_fake_t_by_s"]]),
            scale_gradient(att_t, g)).split(b)         # att_t = [maps of t, maps of fake_t]
        out["idt_s"] = n.syn_s.decode(feat_x_by_s, att_s_x)
        out["att_s_fake"], out["seg_s_fake"] = n.att_s(out["fake_s"])
        out["feat_fake_s_by_t"] = feat_fake_s = n.syn_t.encode(out["fake_s"])
        out["idt_t"], out["rec_t"] = n.syn_t.decode(
            torch.cat([feat_t_in[b:], feat_fake_s]),
            scale_gradient(torch.cat([out["att_t_t"], out["att_s_fake"]]), g)).split(b)
        out["feat_x_by_t"] = feat_t_in[:b]      # S_t's encoding of real source images
        return out

    def _translate_constant_maps(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """CycleGAN ablation: constant maps, so the passes batch further than SASAN's:
        S_t on [x, t], S_s on [t, x, fake_t], S_t on fake_s."""
        n = self.nets
        b = x.shape[0]
        out: dict[str, Tensor] = {}
        feat_t_in = n.syn_t.encode(torch.cat([x, t]))
        out["fake_t"], out["idt_t"] = n.syn_t.decode(feat_t_in, None).split(b)
        feat_s_in = n.syn_s.encode(torch.cat([t, x, out["fake_t"]]))
        out["fake_s"], out["idt_s"], out["rec_x"] = n.syn_s.decode(feat_s_in, None).split(b)
        out["feat_fake_s_by_t"] = n.syn_t.encode(out["fake_s"])
        out["rec_t"] = n.syn_t.decode(out["feat_fake_s_by_t"], None)
        out["feat_x_by_t"] = feat_t_in[:b]
        out["feat_t_by_s"], out["feat_fake_t_by_s"] = feat_s_in[:b], feat_s_in[2 * b:]
        return out

    # ------------------------------------------------------------------ losses
    def generator_losses(self, x: Tensor, y_x: Optional[Tensor], t: Tensor,
                         out: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(G terms, D fake halves). The D step would judge these same fakes (detached) with
        these same discriminator weights, so the fake halves of its image and segmentation
        terms ("D_image", "D_seg") are computed here from the G step's scores."""
        n, w, paired = self.nets, self.opts.weights, self.opts.paired
        terms: dict[str, Tensor] = {}
        d_fake: dict[str, Tensor] = {}
        if w.adversarial:
            score_t, score_s = n.disc_t(out["fake_t"]), n.disc_s(out["fake_s"])
            terms["adversarial"] = L.lsgan_generator_loss(score_t) + L.lsgan_generator_loss(score_s)
            d_fake["D_image"] = 0.5 * w.adversarial * (L.lsgan_fake_loss(score_s)
                                                             + L.lsgan_fake_loss(score_t))
        if w.cycle:
            terms["cycle"] = L.cycle_loss(out["rec_x"], x) + L.cycle_loss(out["rec_t"], t)
        if w.identity:
            terms["identity"] = L.identity_loss(out["idt_s"], x) + L.identity_loss(out["idt_t"], t)
        if paired and w.voxel:
            terms["voxel"] = L.voxel_l1_loss(out["fake_t"], t) + L.voxel_l1_loss(out["fake_s"], x)
        if n.feat_disc_s is not None and w.feature_adversarial:
            terms["feature_adversarial"] = (L.lsgan_generator_loss(n.feat_disc_s(out["feat_fake_t_by_s"]))
                                            + L.lsgan_generator_loss(n.feat_disc_t(out["feat_fake_s_by_t"])))
        if n.attention:
            if w.orthogonality:
                terms["orthogonality"] = (L.orthogonality_loss(out["att_t_t"])
                                          + L.orthogonality_loss(out["att_t_fake"]))
                if paired:
                    terms["orthogonality"] = terms["orthogonality"] + L.orthogonality_loss(out["att_s_x"])
            if w.attention_consistency:
                terms["attention_consistency"] = (
                    L.attention_consistency_loss(out["att_t_t"], out["att_s_fake"])
                    + L.attention_consistency_loss(out["att_t_fake"], out["att_s_x"]))
            if not paired:
                if n.seg_discs is not None and w.seg_adversarial:
                    scores = L.seg_discriminator_scores(n.seg_discs, [out["seg_s_fake"].softmax(1),
                                                                      out["seg_t_t"].softmax(1)])
                    terms["seg_adversarial"] = L.seg_scores_loss(scores, 1.0, n.num_classes)
                    d_fake["D_seg"] = L.seg_scores_loss(scores, 0.0, n.num_classes,
                                                        weight=0.5 * w.seg_adversarial)
                if w.aux_seg:
                    seg_t_fake = (out["seg_t_fake"] if self.opts.aux_seg_to_generator
                                  else n.att_t(out["fake_t"].detach())[1])
                    aux = L.seg_loss(seg_t_fake, y_x, dice_weight=w.dice_weight)
                    if not self.att_source_frozen:
                        aux = aux + L.seg_loss(out["seg_s_x"], y_x, dice_weight=w.dice_weight)
                    terms["aux_seg"] = aux
                if w.pseudo_seg:
                    terms["pseudo_seg"] = L.pseudo_label_loss(out["seg_t_t"], out["seg_s_fake"],
                                                              dice_weight=w.dice_weight)
        return terms, d_fake

    def discriminator_losses(self, x: Tensor, y_x: Optional[Tensor], t: Tensor,
                             fake_done: frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """The D step's terms. For the terms in ``fake_done`` the G step judged the fakes:
        only the real half is computed here (the fake half's gradients are in place)."""
        n, w, f = self.nets, self.opts.weights, self._fakes
        b = x.shape[0]   # real and fake in one batch per discriminator (per-sample norms)
        terms: dict[str, Tensor] = {}
        if "D_image" in fake_done:
            terms["D_image"] = 0.5 * w.adversarial * (L.lsgan_real_loss(n.disc_s(x)) + L.lsgan_real_loss(n.disc_t(t)))
        else:
            terms["D_image"] = 0.5 * w.adversarial * (
                L.lsgan_discriminator_loss(*n.disc_s(torch.cat([x, f["fake_s"]])).split(b))
                + L.lsgan_discriminator_loss(*n.disc_t(torch.cat([t, f["fake_t"]])).split(b)))
        if n.seg_discs is not None and "seg_s_fake" in f and not self.opts.paired:
            if self.opts.seg_real == "labels":
                real = L.one_hot(y_x, n.num_classes)
            else:
                real = f["seg_s_x"].softmax(1)
            fakes = [f["seg_s_fake"].softmax(1), f["seg_t_t"].softmax(1)]
            if "D_seg" in fake_done:        # real maps judged against both fakes
                real_scores = L.seg_discriminator_scores(n.seg_discs, [real])
                terms["D_seg"] = L.seg_scores_loss(real_scores, 1.0, n.num_classes,
                                                   weight=0.5 * w.seg_adversarial * len(fakes))
            else:
                terms["D_seg"] = 0.5 * w.seg_adversarial * L.seg_adversarial_discriminator_loss(
                    n.seg_discs, real, fakes)
        if n.feat_disc_s is not None:
            terms["D_feature"] = 0.5 * w.feature_adversarial * (
                L.lsgan_discriminator_loss(n.feat_disc_s(f["feat_t_by_s"]), n.feat_disc_s(f["feat_fake_t_by_s"]))
                + L.lsgan_discriminator_loss(n.feat_disc_t(f["feat_x_by_t"]), n.feat_disc_t(f["feat_fake_s_by_t"])))
        return terms

    def weighted_total(self, terms: dict[str, Tensor]) -> Tensor:
        w = self.opts.weights
        return sum(getattr(w, name) * value for name, value in terms.items())

    # ------------------------------------------------------------------ steps
    def step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        x, t = self.rt.batch(batch["x"]), self.rt.batch(batch["t"])
        y_x = batch.get("y_x")
        y_x = y_x.to(self.rt.device) if y_x is not None else None
        n = self.nets
        # the discriminators that judge the G step's fakes keep requires_grad: their fake
        # halves of the D loss come from that pass. The others are frozen for the G step.
        judged = {"D_image": [n.disc_s, n.disc_t], "D_seg": [n.seg_discs] if n.seg_discs is not None else []}
        frozen = [m for m in n.discriminator_modules() if not any(m is j for js in judged.values() for j in js)]

        set_requires_grad(frozen, False)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        with self.rt.autocast():
            out = self._translate(x, t)
            g_terms, d_fake = self.generator_losses(x, y_x, t, out)
            loss_g = self.weighted_total(g_terms)
        if d_fake:
            # D weight gradients of the fake halves: the same values and gradients as a D-step
            # pass over the detached fakes (D is not updated in between), without that pass
            d_inputs = [p for k in d_fake for m in judged[k] for p in m.parameters()]
            torch.autograd.backward(sum(d_fake.values()), inputs=d_inputs, retain_graph=True)
        loss_g.backward(inputs=self.g_params)        # generator gradients only
        if self.sync is not None:
            self.sync.gradients(self.g_params)
        self.opt_g.step()
        set_requires_grad(frozen, True)

        # discriminator step on detached fakes (real halves, and what the G step did not judge)
        keep = ("fake_s", "fake_t", "seg_s_fake", "seg_t_t", "seg_s_x",
                "feat_t_by_s", "feat_x_by_t", "feat_fake_t_by_s", "feat_fake_s_by_t")
        self._fakes = {k: out[k].detach() for k in keep if k in out}
        del out
        with self.rt.autocast():
            d_terms = self.discriminator_losses(x, y_x, t, frozenset(d_fake))
            loss_d = sum(d_terms.values())
        loss_d.backward()
        if self.sync is not None:
            self.sync.gradients(self.d_params)
        self.opt_d.step()
        if self.sync is not None:
            self.sync.buffers(self.nets)
        self._fakes = {}

        for k, v in d_fake.items():                  # log the whole D terms
            d_terms[k] = d_terms[k] + v.detach()
        loss_d = loss_d.detach() + sum(v.detach() for v in d_fake.values())
        logs = {f"G/{k}": float(v.detach()) for k, v in g_terms.items()}
        logs.update({f"D/{k[2:]}": float(v.detach()) for k, v in d_terms.items()})
        logs["G/total"], logs["D/total"] = float(loss_g.detach()), float(loss_d)
        return logs

    @torch.no_grad()
    def sample(self, x: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Forward pass for pictures: translations, reconstructions, attention maps."""
        with self.rt.autocast():
            out = self._translate(self.rt.batch(x), self.rt.batch(t))
        return {k: v.float().cpu() for k, v in out.items() if not k.startswith("feat")}


def make_optimizers(nets: SASANNetworks, lr: float, betas: tuple[float, float], weight_decay: float,
                    train_source_attention: bool, paired: bool) -> tuple[list, list, Any, Any]:
    g_modules = nets.generator_modules()
    if nets.att_s is not None and (train_source_attention or paired):
        g_modules = g_modules + [nets.att_s]
    g_params = [p for m in g_modules for p in m.parameters()]
    d_params = [p for m in nets.discriminator_modules() for p in m.parameters()]
    opt_g = torch.optim.Adam(g_params, lr=lr, betas=betas, weight_decay=weight_decay)
    opt_d = torch.optim.Adam(d_params, lr=lr, betas=betas, weight_decay=weight_decay)
    return g_params, d_params, opt_g, opt_d

"""SASAN normalisation and the SASAN residual block (METHOD.md section 2; paper eq. 1-3).

    h     = ReLU(conv3x3_{K->64}(m))          m: attention maps, nearest-resized to x
    gamma = conv3x3_{64->C}(h)                per pixel, per channel
    beta  = conv3x3_{64->C}(h)
    out   = InstanceNorm(x) * (1 + gamma) + beta
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Modulate(torch.autograd.Function):
    """out = n * (1 + gamma) + beta with (gamma, beta) = gb.chunk(2, 1), in one pass, and a
    backward that writes d(gb) into one buffer: autograd's addcmul + chunk backward makes
    five full-size passes (a scalar product, two products, a sum and the concatenation)
    where three suffice. These tensors are the size of the decoder's largest activations,
    and the ops are memory-bound."""

    @staticmethod
    def forward(ctx, n: Tensor, gb: Tensor) -> Tensor:
        gamma, beta = gb.chunk(2, dim=1)
        ctx.save_for_backward(n, gamma)
        return torch.addcmul(beta, n, gamma).add_(n)

    @staticmethod
    def backward(ctx, g: Tensor):
        n, gamma = ctx.saved_tensors
        c = n.shape[1]
        d_n = d_gb = None
        if ctx.needs_input_grad[1]:
            d_gb = g.new_empty(g.shape[0], 2 * c, *g.shape[2:])
            torch.mul(g, n, out=d_gb[:, :c])
            d_gb[:, c:].copy_(g)
        if ctx.needs_input_grad[0]:
            d_n = torch.addcmul(g, g, gamma)
        return d_n, d_gb


def modulate(normalized: Tensor, gamma_beta: Tensor) -> Tensor:
    """SASAN modulation, eq. (3): normalized * (1 + gamma) + beta, where gamma_beta is
    (B, 2C, H, W) = [gamma; beta] along channels (as the gamma/beta conv produces it)."""
    if gamma_beta.shape[1] != 2 * normalized.shape[1]:
        raise ValueError(f"gamma_beta needs {2 * normalized.shape[1]} channels, got {gamma_beta.shape[1]}")
    return _Modulate.apply(normalized, gamma_beta)


class SASANNorm(nn.Module):
    """Spatially adaptive instance normalisation driven by K attention maps.

    x: (B, C, H, W); maps: (B, K, H', W') with any H', W' (resized here, nearest).
    """

    def __init__(self, channels: int, k: int, hidden: int = 64):
        super().__init__()
        self.channels = channels
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(k, hidden, 3, padding=1), nn.ReLU(inplace=True))
        # gamma and beta come from one conv with 2C outputs: the same weights as two
        # separate convs, one kernel launch instead of two.
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)

    def forward(self, x: Tensor, maps: Tensor) -> Tensor:
        normalized = self.norm(x)                                       # eq. (1)
        if maps.shape[-2:] != x.shape[-2:]:
            maps = F.interpolate(maps, size=x.shape[-2:], mode="nearest")
        h = self.shared(maps)                                           # eq. (2)
        return modulate(normalized, self.gamma_beta(h))                 # eq. (3)


class SASANResBlock(nn.Module):
    """SASAN-norm -> LReLU -> conv3x3 (f_in -> min(f_in, f_out)) -> SASAN-norm -> LReLU ->
    conv3x3 (-> f_out); shortcut: identity if f_in == f_out else SASAN-norm -> conv1x1.
    (B, f_in, H, W) -> (B, f_out, H, W).

    The forward pass computes exactly that composition (``reference_forward``), rearranged
    to do less work; parameters and state dict are those of the plain modules:

    * the maps are resized once for the three norms;
    * norm_0 and norm_s normalise the same x (no affine): one instance norm serves both;
    * conv_s is linear (1x1, no bias), so conv_s(IN(x) * (1 + gamma_s) + beta_s) =
      conv_s(IN(x) * (1 + gamma_s)) + conv'(h_s), where conv' is the beta conv with conv_s
      folded in (f_in -> f_out output channels instead of f_in). For the decoder's two
      channel-halving blocks this removes a quarter of norm_s's gamma/beta conv, the
      largest layer of the network.
    """

    def __init__(self, f_in: int, f_out: int, k: int, hidden: int = 64):
        super().__init__()
        f_mid = min(f_in, f_out)
        self.norm_0 = SASANNorm(f_in, k, hidden)
        self.conv_0 = nn.Conv2d(f_in, f_mid, 3, padding=1)
        self.norm_1 = SASANNorm(f_mid, k, hidden)
        self.conv_1 = nn.Conv2d(f_mid, f_out, 3, padding=1)
        self.learned_shortcut = f_in != f_out
        if self.learned_shortcut:
            self.norm_s = SASANNorm(f_in, k, hidden)
            self.conv_s = nn.Conv2d(f_in, f_out, 1, bias=False)

    def reference_forward(self, x: Tensor, maps: Tensor) -> Tensor:
        """The block as written in METHOD.md, module by module (for tests and reading)."""
        shortcut = self.conv_s(self.norm_s(x, maps)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, maps), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, maps), 0.2))
        return shortcut + dx

    def forward(self, x: Tensor, maps: Tensor) -> Tensor:
        if maps.shape[-2:] != x.shape[-2:]:  # resize once for the three norms
            maps = F.interpolate(maps, size=x.shape[-2:], mode="nearest")
        normalized = self.norm_0.norm(x)
        if self.learned_shortcut:
            gb = self.norm_s.gamma_beta
            w_gamma, w_beta = gb.weight.chunk(2)
            b_gamma, b_beta = gb.bias.chunk(2)
            w_s = self.conv_s.weight.flatten(1)                                    # (f_out, f_in)
            w_fold = torch.einsum("oc,cikl->oikl", w_s, w_beta)
            out = gb._conv_forward(self.norm_s.shared(maps), torch.cat([w_gamma, w_fold]), torch.cat([b_gamma, w_s @ b_beta]))
            gamma_s, beta_s = out.split([w_gamma.shape[0], w_fold.shape[0]], dim=1)
            shortcut = self.conv_s(torch.addcmul(normalized, normalized, gamma_s)).add_(beta_s)
        else:
            shortcut = x
        dx = self.conv_0(F.leaky_relu(modulate(normalized, self.norm_0.gamma_beta(self.norm_0.shared(maps))), 0.2))
        dx = self.conv_1(F.leaky_relu(modulate(self.norm_1.norm(dx), self.norm_1.gamma_beta(self.norm_1.shared(maps))),
                                      0.2))
        return shortcut + dx

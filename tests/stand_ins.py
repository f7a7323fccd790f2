"""Stand-in networks whose outputs the tests can compute by hand."""

import torch
from torch import nn


class Scale(nn.Module):
    """A stand-in discriminator: D(p) = a * p, so LSGAN values are hand-computable."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, p):
        return self.a * p

"""Learning-rate schedule of the joint training (METHOD.md section 4)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def constant_then_linear(total_steps: int):
    """Factor 1 for the first half of the steps, then linearly down to 0 at ``total_steps``."""
    half = total_steps // 2
    decay = max(total_steps - half, 1)

    def factor(step: int) -> float:
        if step < half:
            return 1.0
        return max(0.0, 1.0 - (step - half) / decay)

    return factor


def make_scheduler(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, constant_then_linear(total_steps))

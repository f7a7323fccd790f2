"""Supervised segmentation phases: attention pre-training (METHOD.md 4.1) and the detached
U-Net segmenter (4.4) share this step logic."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from sasan import losses as L
from sasan.train.device import Runtime
from sasan.train.loop import Phase
from sasan.train.prefetch import Prefetcher
from sasan.train.sampling import StreamSampler, collate
from sasan.train.schedule import make_scheduler


def steps_for(epochs: float, n_items: int, batch_size: int, world_size: int = 1,
              max_steps: int | None = None) -> int:
    steps = max(1, math.ceil(epochs * n_items / (batch_size * world_size))) if epochs > 0 else 0
    return min(steps, max_steps) if max_steps else steps


def attention_pretrain_loss(model: nn.Module, image: Tensor, label: Tensor, dice_weight: float,
                            orth_weight: float) -> tuple[Tensor, dict[str, float]]:
    """seg_loss(A_s(x), y_x) + orth_weight * orthogonality(maps)."""
    maps, logits = model(image)
    seg = L.seg_loss(logits, label, dice_weight=dice_weight)
    orth = L.orthogonality_loss(maps)
    return seg + orth_weight * orth, {"seg": float(seg.detach()), "orthogonality": float(orth.detach())}


def segmenter_loss(model: nn.Module, image: Tensor, label: Tensor, dice_weight: float,
                   orth_weight: float = 0.0) -> tuple[Tensor, dict[str, float]]:
    """Class-weighted CE + dice_weight x soft Dice of the U-Net."""
    loss = L.seg_loss(model(image), label, dice_weight=dice_weight)
    return loss, {"seg": float(loss.detach())}


def supervised_phase(name: str, model: nn.Module, loss_fn: Callable[..., Any], dataset: Any, *,
                     steps: int, batch_size: int, lr: float, seed: int, runtime: Runtime,
                     checkpoint: Path, checkpoint_every: int, log_every: int, dice_weight: float,
                     orth_weight: float = 0.0, rank: int = 0, world_size: int = 1,
                     num_workers: int = 0, sync: Any = None,
                     lr_schedule: str = "linear") -> Phase:
    """``lr_schedule``: "constant", or "linear" (constant for the first half of ``steps``, then
    linearly to 0, as the joint phase). ``sync``: a data-parallel :class:`sasan.train.distributed.Synchronizer` (gradients
    averaged over ranks before each step, buffers after), or None for one process."""
    sampler = StreamSampler(len(dataset), seed, batch_size, rank, world_size)
    batches = Prefetcher(lambda step: collate(dataset, sampler.draw(step)), steps, num_workers)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, foreach=True)   # as make_optimizers
    scheduler = make_scheduler(optimizer, steps) if lr_schedule == "linear" else None

    def step_fn(step: int) -> dict[str, float]:
        model.train()
        batch = batches.get(step)
        image, label = runtime.batch(batch["image"]), batch["label"].to(runtime.device)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            loss, logs = loss_fn(model, image, label, dice_weight, orth_weight)
        loss.backward()
        if sync is not None:
            sync.gradients(params)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if sync is not None:
            sync.buffers(model)
        return {"loss": float(loss.detach()), **logs}

    return Phase(
        name=name, total_steps=steps, step_fn=step_fn,
        get_state=lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           **({"scheduler": scheduler.state_dict()} if scheduler is not None else {})},
        set_state=lambda s: (model.load_state_dict(s["model"]), optimizer.load_state_dict(s["optimizer"]),
                             scheduler.load_state_dict(s["scheduler"]) if scheduler is not None else None),
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, log_every=log_every,
    )

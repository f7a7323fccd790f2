"""Data-parallel training: one process per GPU (or several CPU processes), as torchrun
launches them (``torchrun --nproc_per_node N -m sasan train ...``).

Semantics (the same results as one process, see docs/kubeflow.md):

- ``batch_size`` in the config is **per rank**; the global batch of a step is
  ``batch_size x world_size``. The stateless samplers (:mod:`sasan.train.sampling`) give rank
  r the positions ``[(step * W + r) * B, ... + B)`` of the index stream, so the W local
  batches of a step are exactly the one batch of size ``W x B`` a single process would draw,
  and the number of steps per epoch is divided by W.
- Gradients are averaged over ranks after every backward pass, before the optimiser step, so
  each rank applies the gradient of the global batch mean (exact for losses that are means
  over samples with the same number of pixels: LSGAN, L1, SSIM, orthogonality; the
  batch-level class weights and soft Dice of ``seg_loss`` are computed per local batch).
- Initial weights are broadcast from rank 0; floating-point buffers (BatchNorm running
  statistics of the U-Net) are averaged after each step so every rank holds the same state.
- Only rank 0 writes checkpoints, logs and the bundle (``run_phase(is_main=...)``); every
  rank resumes from the same checkpoint file, so all ranks must see the same output folder
  (one pod with N GPUs does; several nodes need a shared volume or the s3:// sync of
  :mod:`sasan.storage` run on each node).

Why an explicit all-reduce instead of ``DistributedDataParallel``: the joint trainer does not
run one ``forward`` per backward. It calls part of a module (``syn_s.encode``, for the optional
feature discriminators), uses A_t and the synthesis modules several times per step, freezes the
discriminators during the generator step and the frozen A_s throughout, and alternates two
optimisers. DDP's reducer assumes one forward of the wrapped module per backward and
all-or-declared-unused parameters; with this structure it would need ``find_unused_parameters``
and ``no_sync`` around each half-step. Averaging the gradients of exactly the parameters an
optimiser is about to update is the same mathematics with none of those conditions. What it
gives up is overlapping communication with the backward pass, which matters little for networks
of this size (a few MB of gradients per step).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Mapping, Optional

import torch
import torch.distributed as dist
from torch import nn

from sasan.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None   # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info(env: Mapping[str, str]) -> DistInfo:
    """Rank, world size and local rank from torchrun's environment variables (defaults: one
    process). Raises ConfigError on inconsistent values."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ConfigError(f"torchrun environment: {err}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return DistInfo(rank, world, local)


def init_from_env(env: Optional[Mapping[str, str]] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's variables (read by the caller at the
    edge; ``os.environ`` when ``env`` is None). NCCL when CUDA is available (each rank on
    ``cuda:LOCAL_RANK``), gloo otherwise. With WORLD_SIZE 1 nothing is initialised."""
    env = os.environ if env is None else env
    info = env_info(env)
    if not info.enabled:
        return info
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={info.world_size} but {', '.join(missing)} not set: launch with torchrun")
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(info.local_rank)   # "cuda" now means this rank's GPU
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}",
                                rank=info.rank, world_size=info.world_size, timeout=timedelta(seconds=timeout_s))
    log.info("data-parallel: rank %d/%d (local %d), backend %s", info.rank, info.world_size,
             info.local_rank, backend)
    return DistInfo(info.rank, info.world_size, info.local_rank, backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class Synchronizer:
    """Keeps data-parallel replicas identical: broadcast at start, gradient averaging after
    each backward, buffer averaging after each step. Needs an initialised process group."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None):
        if not dist.is_initialized():
            raise RuntimeError("Synchronizer needs torch.distributed to be initialised (init_from_env)")
        self.group = group
        self.world_size = dist.get_world_size(group)

    def broadcast(self, module: nn.Module, src: int = 0) -> None:
        """Copy parameters and buffers of rank ``src`` to every rank (in place)."""
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src, group=self.group)

    def gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each ``p.grad`` by its mean over ranks. Parameters without a gradient (frozen
        or unused in this step: the same on every rank) are skipped."""
        grads = [p.grad for p in params if p.grad is not None]
        self._average(grads)

    def buffers(self, module: nn.Module) -> None:
        """Average the floating-point buffers (BatchNorm running mean/var) over ranks."""
        self._average([b for b in module.buffers() if b.is_floating_point()])

    def _average(self, tensors: list[torch.Tensor]) -> None:
        # one flat all-reduce per (device, dtype) instead of one call per tensor
        groups: dict[tuple, list[torch.Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        for group in groups.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            flat /= self.world_size
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n


def synchronizer(world_size: int) -> Optional[Synchronizer]:
    """A :class:`Synchronizer` when running data-parallel, else None."""
    return Synchronizer() if world_size > 1 else None

"""DistributedDataParallel plumbing: ``torchrun --nproc_per_node=N -m zootune tune CFG``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``; the trainer
then initialises the process group (NCCL on CUDA, gloo on CPU), gives each rank its slice of
every global batch, averages gradients with DDP, and lets only rank 0 write logs and
checkpoints. The lite temporal-ensemble gates are averaged over the global batch by the AdaAgg
layers themselves (they all-reduce when ``torch.distributed`` is initialised).

BatchNorm: on CUDA it becomes ``SyncBatchNorm`` (``train.sync_bn``), so batch statistics are
those of the global batch. PyTorch's SyncBatchNorm does not run on CPU, so a CPU (gloo) run
keeps per-rank BatchNorm and DDP broadcasts rank 0's running statistics every forward; such a
run matches a single-process run only for models without BatchNorm (GroupNorm, LayerNorm...).
Buffers are not broadcast when no plain BatchNorm is left, so equal state on every rank is
then a property of the code, not of the broadcast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", 0)), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)


def teardown_distributed(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate 1-D tensors of (possibly) different lengths from every rank, in rank order."""
    if not info.enabled:
        return t
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, t.detach().cpu())
    return torch.cat(parts).to(t.device)


def average_gradients(params, info: DistInfo) -> None:
    """Average the gradients of ``params`` over the ranks (for trainable modules outside the
    DDP-wrapped model, e.g. a method's extra modules)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world_size)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()

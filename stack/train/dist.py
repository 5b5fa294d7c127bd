"""Every rank / world-size decision of fine-tuning, in one place. Single process unless launched by torchrun.

Under ``torchrun --nproc_per_node N stack train NAME`` each process trains the same fold on a 1/N share of
the batches (DDP: gloo on CPU, nccl on CUDA); only rank 0 writes files or shows progress bars.

    setup(device)            # no-op without torchrun's RANK/WORLD_SIZE
    if is_main(): save(...)
    barrier()
"""

from __future__ import annotations

import os

import torch


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> None:
    """Join the process group torchrun describes (env://); nothing to do in a single process."""
    if world_size() > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def device_for(requested: str) -> torch.device:
    """auto: this rank's CUDA device when there is one, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local)


def cpu_threads(requested: int) -> int:
    """Torch threads for this process: ``requested``, else the usable cores shared among local ranks."""
    if requested > 0:
        return requested
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))
    return max(1, len(os.sched_getaffinity(0)) // max(local_world, 1))


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP-wrapped model for training when distributed, else the model itself."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def shard(batches: list) -> list:
    """This rank's batches; every rank gets the same count so DDP's collective calls line up."""
    n = world_size()
    if n == 1:
        return batches
    usable = len(batches) - len(batches) % n
    return batches[rank() : usable : n]


def barrier() -> None:
    if world_size() > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()


def mean(value: float, device: torch.device) -> float:
    """Average of a per-rank number over all ranks (the training loss shown and logged)."""
    if world_size() == 1 or not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.item() / world_size()

"""Every rank / world-size decision of fine-tuning, in one place. Single process unless launched by torchrun.

Under ``torchrun --nproc_per_node N stack fit NAME`` each process trains the same fold on a 1/N share of
the batches (DDP: gloo on CPU, nccl on CUDA); only rank 0 writes files or shows progress bars.

    setup(device)            # no-op without torchrun's RANK/WORLD_SIZE
    if is_main(): save(...)
    barrier()
"""

from __future__ import annotations

import torch

from stack.runtime import is_main, rank, world_size  # noqa: F401 (one place: torch-free, in stack.runtime)


def setup(device: torch.device) -> None:
    """Join the process group torchrun describes (env://); nothing to do in a single process."""
    if world_size() > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP-wrapped model for training when distributed, else the model itself."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def this_rank(batches: list) -> list:
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

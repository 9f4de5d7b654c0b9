"""Where a training process runs: one process, or one rank of many under ``torchrun`` (DDP or FSDP2).

Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1 in the environment) the run joins a process
group (nccl on CUDA, gloo on CPU) and replicates the model (``parallel="ddp"``) or shards it
(``parallel="fsdp"``, see :mod:`lambdaskip.training.sharded`). ``batch_size`` is the global batch: every rank
takes its own contiguous 1/N of each global batch. Without torchrun (or with one rank) it is one process.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Placement:
    """This process's rank, the number of ranks, its device, and whether the model is sharded with FSDP2
    (``parallel="fsdp"`` and more than one rank)."""
    rank: int
    world: int
    device: torch.device
    fsdp: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_placement(config) -> Placement:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1) and pick this rank's device.

    ``config`` (a :class:`~lambdaskip.training.TrainConfig`) gives ``device`` ("auto", "cpu" or "cuda"),
    ``parallel`` ("ddp" or "fsdp") and ``batch_size``, the global batch, which must divide evenly over the ranks.
    """
    device, batch_size = config.device, config.batch_size
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    where = torch.device("cpu")
    if want_cuda:
        where = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(where)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} (global) must be divisible by the {world} ranks")
    return Placement(rank, world, where, fsdp=world > 1 and config.parallel == "fsdp")


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, gathered from all ranks when FSDP sharded it (a DTensor; every rank must call this
    together), else itself. Duck-typed: importing DTensor takes seconds."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def all_sum(values: list[float], placement: Placement) -> list[float]:
    """``values`` summed over the ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=placement.device)
    if placement.world > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_rows(values: list[float], placement: Placement) -> list[list[float]]:
    """Every rank's ``values`` (one row per rank), gathered with all_gather."""
    tensor = torch.tensor(values, dtype=torch.float64, device=placement.device)
    if placement.world == 1:
        return [tensor.tolist()]
    gathered = [torch.empty_like(tensor) for _ in range(placement.world)]
    dist.all_gather(gathered, tensor)
    return [row.tolist() for row in gathered]


def leave_process_group(completed: bool = True) -> None:
    """Leave the process group if this process joined one.

    After a completed run the ranks first meet at a barrier, so no rank destroys the group while another
    is still inside a collective (rank 0 writes the files after the last one); after a failure they do not
    wait for each other (a failed rank would never reach the barrier).
    """
    if dist.is_available() and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def joined_process_group() -> bool:
    """Whether this process is one rank of several (launched by torchrun with ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_rank(code: int) -> None:
    """End a rank of a multi-process run with exit status ``code`` without finalizing the interpreter.

    Why: a gloo worker thread completes a collective (the waiting Python thread resumes) and only then drops
    its reference to the work, and with it the tensors the Python side handed over; dropping such a tensor
    takes the GIL. If that happens while the interpreter is finalizing, the thread is torn down inside a
    ``noexcept`` destructor: ``terminate called without an active exception`` and SIGABRT, at random, more
    often on a loaded machine (the worker is descheduled in that window). The gloo backend cannot be joined
    first: DistributedDataParallel keeps references to the process group that outlive the module (measured
    on torch 2.13: 10 references remain after the DDP module is deleted and the group destroyed), so the
    worker threads live until the process ends. Call this after :func:`leave_process_group`; the files were
    written atomically before, and stdout/stderr are flushed here.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

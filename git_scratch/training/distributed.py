"""torchrun support: the process group, where this process stands in it, and the few collectives that
train.py and batch.py use.

torchrun (`python -m torch.distributed.run`) starts one process per device and tells each one its place
through the WORLD_SIZE, RANK and LOCAL_RANK environment variables. A plain run has none of them; then
every function here gives the one-process answer (rank 0 of 1, barrier() does nothing, all_gather(x) is
[x]), so that callers need no `if` of their own.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


def launched() -> bool:
    """Whether torchrun started this process."""
    return all(k in os.environ for k in ENV)


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group, NCCL for CUDA and gloo otherwise, and return this rank's device:
    cuda:LOCAL_RANK on CUDA, else `device`. Outside torchrun: `device`, and nothing is joined."""
    if not launched():
        return device
    cuda = device.type == "cuda" and torch.cuda.is_available()  # no CUDA: the caller's own check reports it
    if cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)  # NB: "cuda" without an index now means this rank's GPU
    if not dist.is_initialized():
        # Before the group exists: its functions bind `group=group.WORLD` at import, and DDP (via torch._dynamo)
        # imports it later, pinning the group past teardown(): gloo's threads then abort at interpreter exit
        import torch.distributed.nn.functional  # noqa: F401
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(x: float) -> float:
    """x summed over the ranks, in float64 so that token counts stay exact."""
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor([x], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.item()


def all_gather(obj) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (any picklable object); [obj] in a plain run."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's obj (any picklable object), on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def teardown() -> None:
    """Leave the process group (torch warns at exit when a process never does)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _device() -> torch.device:
    # NCCL moves only CUDA tensors; gloo only CPU ones
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

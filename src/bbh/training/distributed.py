"""Data-parallel training across processes (``torchrun``): process group, gradient averaging, rank helpers.

Every rank holds the whole method, draws its own share of each global minibatch and its own posterior
noise (seed + rank), and after each backward pass the gradients are averaged over ranks
(:func:`average_gradients`): for a loss that is a mean over the batch, averaging the per-rank gradients of
equal shards is the gradient of the mean over the whole batch, so the update equals the single-process
one with the same global batch (tested with 2 CPU processes). Explicit all-reduce rather than
``DistributedDataParallel``: bbh's methods compute their loss outside ``forward``. The
:class:`~bbh.training.trainer.Trainer` falls back to dense gradients under data parallelism (factored
hypernet gradients are not ``.grad`` tensors, which is all :func:`average_gradients` sees).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Only rank 0 writes files."""
    return rank() == 0


def launched_with_torchrun() -> bool:
    """Whether torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> None:
    """Join the process group described by torchrun's environment (gloo on CPU, NCCL on CUDA)."""
    if not launched_with_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: torch.device) -> torch.device:
    """The CUDA device of this rank under torchrun (``cuda:LOCAL_RANK``), else ``device``."""
    if device.type == "cuda" and launched_with_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce and average ``.grad`` over ranks (one flattened buffer per dtype and device)."""
    n = world_size()
    if n == 1:
        return
    for p in params:
        if p.requires_grad and p.grad is None:  # every rank must join the same collective: zeros
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= n
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (collective; ``flag`` when not distributed).

    The Trainer uses it to stop all ranks at the same step when one of them received a signal.
    """
    if world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_objects(obj: object) -> list[object]:
    """``obj`` of every rank, in rank order (``[obj]`` when not distributed)."""
    if world_size() == 1:
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["any_rank", "average_gradients", "barrier", "broadcast_parameters", "gather_objects", "init_from_env",
           "is_main", "launched_with_torchrun", "local_device", "rank", "shutdown", "world_size"]

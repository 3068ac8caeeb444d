"""Multi-process training with ``torch.distributed``, started by ``torchrun``.

One process per GPU (or per CPU share, with the gloo backend). Every process holds the
whole model; each takes its shard of every global minibatch, and gradients (the VAE) or
sufficient statistics (EM, CAVI) are summed across processes. Without ``torchrun`` (no
``WORLD_SIZE`` in the environment) everything here is a no-op for a single process.
"""

import os

import torch
import torch.distributed as dist


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    """True on the process that writes files (rank 0)."""
    return rank() == 0


def init_from_environment(device):
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses NCCL for CUDA devices and gloo otherwise. Returns the device this process should
    use: with CUDA, the GPU numbered by ``LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shard(indices):
    """This process's share of a global minibatch: every ``world_size``-th index."""
    return indices[rank() :: world_size()]


def all_reduce_sum(tensor):
    """Sum ``tensor`` over processes in place (no-op for one process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_sum_many(*tensors):
    """Sum several tensors over processes with one collective; returns the sums.

    The tensors are packed into one flat float64 buffer (on the first tensor's device),
    summed, and unpacked into new tensors of the inputs' shapes and dtypes; ``None``
    entries pass through. For one process the inputs come back untouched.
    """
    if not is_distributed():
        return tensors
    present = [t for t in tensors if t is not None]
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    sums, pieces = [], iter(flat.split([t.numel() for t in present]))
    for t in tensors:
        sums.append(None if t is None else next(pieces).reshape(t.shape).to(t.dtype))
    return tuple(sums)


def all_gather(tensor):
    """Every process's ``tensor`` (the same shape on all), stacked on a new first axis."""
    if not is_distributed():
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if is_distributed():
        dist.barrier()

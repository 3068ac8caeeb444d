"""Data larger than memory: training rows read a minibatch at a time.

In memory (the fast path), the training set is one tensor on the device and a minibatch
is ``x_train[idx]``. Streamed, it stays on disk, as a memory-mapped ``.npy`` file
(:class:`MappedRows`) or an image folder (:class:`FolderRows`), and
:func:`minibatches` reads the same index lists through a ``torch.utils.data.DataLoader``
(worker processes, pinned memory on CUDA): the trainer draws one permutation per epoch
and cuts it into batches either way, so the two paths see the same minibatches in the
same order (and train to the same parameters, tested). :func:`choose_stream` decides
between them.
"""

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ppl_vae.data.images import channels_first, read_image
from ppl_vae.errors import DataError

STREAM_CHOICES = ("auto", True, False)
# Streaming is chosen when the data would take more than this share of the memory free.
MEMORY_SHARE = 0.5
DEFAULT_WORKERS = 2


class MappedRows:
    """Rows ``rows`` of a numpy array (a memory map: nothing is read until asked), flat and
    channel-major as (len(rows), D) tensors of the stored dtype.

    Parameters
    ----------
    array : np.ndarray or np.memmap
        Shape (N, ...), the stored layout.
    rows : np.ndarray of int
        The rows of this split (sorted).
    channels_last : bool
        Whether images are stored (N, H, W, C): each batch is moved to (N, C, H, W).
    """

    def __init__(self, array, rows, *, channels_last=False):
        self.array, self.rows, self.channels_last = array, np.asarray(rows), channels_last
        self.shape = torch.Size([len(self.rows), math.prod(array.shape[1:])])
        self.ndim, self.device = 2, torch.device("cpu")
        self.dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, idx):
        idx = _positions(idx, len(self)).numpy()
        where = self.rows[idx]
        order = np.argsort(where, kind="stable")  # a memory map reads forwards fastest
        block = np.empty((len(where), *self.array.shape[1:]), self.array.dtype)
        block[order] = self.array[where[order]]
        return torch.from_numpy(np.ascontiguousarray(channels_first(block,
                                                                    self.channels_last)))

    def load(self):
        """All rows in memory, as one tensor."""
        return self[np.arange(len(self))]


class FolderRows:
    """Images of a folder, read with Pillow a minibatch at a time: uint8 (n, C*H*W)."""

    def __init__(self, files, mode, size):
        self.files, self.mode, self.size = list(files), mode, tuple(size)
        channels = 1 if mode == "L" else 3
        self.shape = torch.Size([len(self.files), channels * self.size[0] * self.size[1]])
        self.ndim, self.device, self.dtype = 2, torch.device("cpu"), torch.uint8

    def __len__(self):
        return len(self.files)

    def __getitem__(self, idx):
        idx = _positions(idx, len(self)).tolist()
        return torch.from_numpy(np.stack([read_image(self.files[i], self.mode, self.size)
                                          .reshape(-1) for i in idx]))

    def load(self):
        return self[list(range(len(self)))]


def _positions(idx, n):
    """Row positions as a CPU tensor, from a slice, a list, an array or a tensor."""
    if isinstance(idx, slice):
        return torch.arange(n)[idx]
    return torch.as_tensor(idx).cpu().reshape(-1)


def is_streamed(x):
    return isinstance(x, MappedRows | FolderRows)


class _Batches(Dataset):
    # Item i of this "data set" is the whole i-th minibatch: the trainer's index lists.
    def __init__(self, rows, indices):
        self.rows, self.indices = rows, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.rows[self.indices[i]]


def minibatches(x, indices, device, *, workers=DEFAULT_WORKERS):
    """The rows ``x[idx]`` for each ``idx`` of ``indices``, in order, on ``device``.

    A tensor is indexed directly; streamed rows go through a DataLoader whose workers read
    ahead. Its generator is its own, so that streaming draws nothing from torch's global
    random state and leaves the training's noise as the in-memory path has it.
    """
    if not is_streamed(x):
        for idx in indices:
            yield x[idx]
        return
    loader = DataLoader(_Batches(x, [idx.cpu() for idx in indices]), batch_size=None,
                        shuffle=False, num_workers=workers if len(indices) > 1 else 0,
                        pin_memory=torch.device(device).type == "cuda",
                        generator=torch.Generator(), persistent_workers=False)
    for rows in loader:
        yield rows.to(device, non_blocking=True)


def choose_stream(nbytes, free_bytes, stream="auto"):
    """(stream?, the reason, for the user): stream when asked, or under ``"auto"`` when
    the training data would take more than :data:`MEMORY_SHARE` of the memory free."""
    if stream not in STREAM_CHOICES:
        raise DataError(f"data.stream must be 'auto', true or false; got {stream!r}")
    size = f"{nbytes / 2**20:,.0f} MiB of training data"
    if stream is not True and stream is not False:
        stream = nbytes > MEMORY_SHARE * free_bytes
        why = (f"{size}, {'over' if stream else 'within'} {MEMORY_SHARE:.0%} of the "
               f"{free_bytes / 2**20:,.0f} MiB free")
        return stream, f"{'streamed from disk' if stream else 'held in memory'} ({why})"
    return stream, (f"{'streamed from disk' if stream else 'held in memory'} ({size}, "
                    f"as data.stream = {str(stream).lower()} asks)")

"""Batch memory for DataLoader workers: shared-memory tensors, optionally reused in a ring.

A worker's batch reaches the training process through shared memory. Two costs hide there:

1. Torch only passes a storage by handle when the storage itself was allocated shared; a tensor
   made with `torch.from_numpy` over shared memory is *not* (its allocator is numpy's), so
   sending it copies the whole batch into a fresh segment. Batches are therefore allocated and
   returned as torch tensors (`new_tensor`), and filled through a numpy view.
2. A fresh segment per batch faults in fresh pages, in the worker when it writes and in the
   training process when it reads. On a VM that costs more than the copy itself (a 58 MB EnMAP
   batch: ~40 ms of page faults). `BatchRing` keeps `slots` buffers per (name, shape, dtype) and
   hands them out in turn, so each segment is faulted once and its mapping stays cached on both
   sides (torch caches received storages by segment while they are alive).

Reuse contract: a ring batch is overwritten `slots` batches of the same shape later. The
DataLoader keeps at most `prefetch_factor` batches per worker in flight, so with
`slots >= prefetch_factor + 2` the batch being consumed and the one before it are never
overwritten. Training (`to_device`, or pin-memory's copy on GPU nodes) meets this; code that
keeps batches for longer must not use a ring (`make_loader(reuse_buffers=False)`, the default).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import get_worker_info


def torch_dtype(dtype) -> torch.dtype:
    """A torch dtype, or the torch dtype of a numpy dtype (or its name)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.from_numpy(np.empty(0, dtype)).dtype


def new_tensor(shape: tuple, dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker its storage is allocated shared, so that
    sending it passes a handle instead of copying (see the module docstring)."""
    tdtype = torch_dtype(dtype)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=tdtype)
    storage = torch.UntypedStorage._new_shared(max(1, math.prod(shape) * tdtype.itemsize))
    return torch.empty(0, dtype=tdtype).set_(storage, 0, shape)


class BatchRing:
    """`slots` reused tensors per (name, shape, dtype), handed out in turn (see the contract
    above). slots=0: a new tensor every time."""

    def __init__(self, slots: int = 0):
        if slots < 0:
            raise ValueError(f"slots must be >= 0, got {slots}")
        self.slots = slots
        self._buffers: dict[tuple, list[torch.Tensor]] = {}
        self._next: dict[tuple, int] = {}

    def tensor(self, name: str, shape: tuple, dtype) -> torch.Tensor:
        """A (shape) tensor of `dtype`, uninitialised (or holding an older batch's values)."""
        if not self.slots:
            return new_tensor(shape, dtype)
        key = (name, tuple(shape), np.dtype(dtype).str)
        buffers = self._buffers.setdefault(key, [])
        i = self._next.get(key, 0)
        if i == len(buffers):
            buffers.append(new_tensor(shape, dtype))
        self._next[key] = (i + 1) % self.slots
        return buffers[i]

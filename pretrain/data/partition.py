"""Which shards a data-loader worker reads: pure functions, tested without processes.

Every global worker (rank r, worker w of W per rank; g = r * W + w of G = world * W) gets the
same number of shards per epoch, ceil(S / G), taken round-robin from a seeded per-epoch
permutation and wrapped around when S is not a multiple of G (or S < G). Equal counts keep
every rank's stream equally long, so no rank waits on a collective that others never reach;
the wrap-around repeats a few shards within an epoch instead of dropping any.
"""
from __future__ import annotations

import numpy as np


def epoch_permutation(n_shards: int, epoch: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n_shards)


def shards_for_worker(n_shards: int, rank: int, world: int, worker: int, workers: int,
                      epoch: int, seed: int) -> list[int]:
    """Shard indices read by global worker (rank, worker) in `epoch`."""
    if n_shards <= 0:
        raise ValueError("dataset has no shards")
    if not (0 <= rank < world and 0 <= worker < workers):
        raise ValueError(f"bad worker id rank={rank}/{world} worker={worker}/{workers}")
    total = world * workers
    g = rank * workers + worker
    per_worker = -(-n_shards // total)
    perm = epoch_permutation(n_shards, epoch, seed)
    return [int(perm[(g + k * total) % n_shards]) for k in range(per_worker)]

"""The global sample index of a prepared dataset: manifest shard order, then position in the
shard (the index of `ZarrSamples`, `ExactOnce` and curation keep-lists), and keep masks over it."""
from __future__ import annotations

import numpy as np


def sample_starts(records: list[dict]) -> list[int]:
    """Global index of each shard record's first sample (records in manifest order)."""
    starts, total = [], 0
    for r in records:
        starts.append(total)
        total += int(r["samples"])
    return starts


def pack_mask(mask: np.ndarray) -> bytes:
    """(N,) bool keep mask -> 1 bit per sample (for checkpoints, broadcasts and worker pickles)."""
    return np.packbits(np.asarray(mask, bool)).tobytes()


def unpack_mask(packed: bytes, n: int) -> np.ndarray:
    """Inverse of pack_mask: (n,) bool."""
    return np.unpackbits(np.frombuffer(packed, np.uint8), count=n).astype(bool)

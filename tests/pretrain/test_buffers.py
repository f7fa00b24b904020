"""Batch memory of DataLoader workers: shared storages passed by handle, and the reuse ring."""
import itertools
import os

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from pretrain.data.augment import AugmentSpec
from pretrain.data.buffers import BatchRing
from pretrain.data.webdataset import ShardStream, close_loader, make_loader
from tests.conftest import prep_ssl4eo


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(prep_ssl4eo(tmp_path_factory.mktemp("buffers"), target_shard_mb=0.1))


def test_ring_hands_out_each_buffer_again_after_slots_calls():
    ring = BatchRing(3)
    a = [ring.tensor("stored", (2, 4), "uint16") for _ in range(7)]
    assert len({id(t) for t in a[:3]}) == 3                     # three distinct buffers...
    assert a[3] is a[0] and a[4] is a[1] and a[6] is a[0]        # ...handed out in turn
    assert ring.tensor("valid", (2, 4), bool) is not a[0]        # names, shapes and dtypes have their own
    assert ring.tensor("stored", (3, 4), "uint16").shape == (3, 4)
    assert ring.tensor("stored", (2, 4), "int16").dtype == torch.int16
    fresh = BatchRing(0)
    assert fresh.tensor("x", (2,), "float32") is not fresh.tensor("x", (2,), "float32")
    with pytest.raises(ValueError, match="slots must be >= 0"):
        BatchRing(-1)


class SharedInWorker(IterableDataset):
    """Reports, from inside the worker, whether each batch tensor's storage is shared: only a
    shared storage is sent by handle; any other is copied into a new segment on the way out."""

    def __init__(self, stream):
        self.stream = stream

    def __iter__(self):
        for b in self.stream:
            yield {k: v.is_shared() for k, v in b.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("spec", [AugmentSpec(), AugmentSpec(crop_scale=[0.5, 1.0], out_size=16)],
                         ids=["stored-integers", "float-crop"])
@pytest.mark.parametrize("slots", [0, 6])
def test_worker_batches_leave_by_handle_not_by_copy(dataset, spec, slots):
    stream = ShardStream(dataset, batch_size=4, rank=0, world=1, seed=0, shuffle_buffer=4, augment_spec=spec,
                         ring_slots=slots)
    loader = DataLoader(SharedInWorker(stream), batch_size=None, num_workers=1, multiprocessing_context="spawn")
    it = iter(loader)
    flags = next(it)
    close_loader(it)
    assert len(flags) >= 6 and all(flags.values()), flags


def _storage_inode(t: torch.Tensor) -> int:
    fd, _ = t.untyped_storage()._share_fd_cpu_()
    return os.fstat(fd).st_ino


def _digest(b: dict) -> tuple:
    return (tuple(b["key"]), int(b["stored"].to(torch.int64).sum()), int(b["valid"].sum()),
            float(b["affine"].sum()), float(b["times"].sum()))


def test_reused_buffers_give_the_same_batches_and_keep_the_previous_one_intact(dataset):
    runs = {}
    for reuse in (False, True):
        it = iter(make_loader(dataset, batch_size=4, rank=0, world=1, seed=1, num_workers=2, shuffle_buffer=4,
                              reuse_buffers=reuse))
        digests, segments, previous = [], set(), None
        for b in itertools.islice(it, 24):
            if previous is not None:          # the contract: still valid while the next one is drawn
                assert _digest(previous[0]) == previous[1]
            d = _digest(b)
            digests.append(d)
            segments.add(_storage_inode(b["stored"]))
            previous = (b, d)
        close_loader(it)
        runs[reuse] = digests, segments
    assert runs[True][0] == runs[False][0]                 # the same batches, value for value
    assert len(runs[True][1]) <= 2 * 6                     # 2 workers x PREFETCH + 2 slots
    assert len(runs[False][1]) == 24                       # a new segment for every batch

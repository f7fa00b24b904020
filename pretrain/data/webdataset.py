"""Streaming loader over prepared shards (WebDataset tars or Zarr groups): split by rank and
worker, seeded shuffling, batches per sensor.

Each worker streams its shards (see partition.py) epoch after epoch, without end: training
runs for a number of steps, so every rank always has a next batch and no rank can hang in a
collective waiting for another. Samples are decoded, normalised with the manifest's
statistics, shuffled in a seeded buffer, and batched per (sensor, shape) so a batch never
mixes band sets. Shards are opened through fsspec, so any fsspec URL works.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import random
import sys
import time
from typing import Iterator

import fsspec
import numcodecs.blosc
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep import manifest as manifest_mod
from data_prep.sample import decode, physical
from data_prep.tario import iter_tar_samples
from data_prep.zarr_io import iter_zarr_shard
from pretrain.data.assemble import Assembler, epoch_days
from pretrain.data.augment import AugmentSpec, augment, sample_generator
from pretrain.data.buffers import BatchRing, new_tensor
from pretrain.data.index import pack_mask, sample_starts, unpack_mask
from pretrain.data.normalize import normalization_table, normalize, stored_affine
from pretrain.data.partition import shards_for_worker

log = logging.getLogger(__name__)


def to_tensors(sample: dict, norm: dict, stored: bool = False) -> dict:
    """Decoded sample -> tensors (one sample, no batch dim).

    stored=False: `image` (T,C,H,W) float32 normalised, invalid pixels 0.
    stored=True: `stored` (T,C,H,W) the stored integers (2 bytes per value for S2/EnMAP) and
    `affine` (2,C) float32 = (scale/std, (offset-mean)/std), so that normalised = stored * a + b;
    `normalize_batch` applies it later, on the accelerator, instead of in the loader worker.
    """
    stats = norm[sample["sensor"]]
    if list(sample["bands"]) != stats["bands"]:
        raise ValueError(f"sample {sample['key']}: bands {sample['bands']} differ from the manifest's {stats['bands']}")
    out = {
        "key": sample["key"],
        "sensor": sample["sensor"],
        "valid": torch.from_numpy(np.ascontiguousarray(sample["valid"])),      # (T, H, W)
        "wavelengths_nm": torch.tensor(sample["wavelengths_nm"], dtype=torch.float32),  # (C,)
        "gsd_m": torch.tensor(float(sample["gsd_m"])),
        "times": torch.tensor([epoch_days(t) for t in sample["times"]], dtype=torch.float64),  # (T,) days since 1970
        "lonlat": torch.tensor(sample["lonlat"], dtype=torch.float32),         # (2,)
        **({"landcover": torch.tensor(sample["landcover"]["fractions"], dtype=torch.float32)}   # (K,)
           if sample.get("landcover") else {}),
    }
    if stored:
        out["stored"] = torch.from_numpy(np.ascontiguousarray(sample["image"]))
        out["affine"] = torch.from_numpy(stored_affine(sample["scale"], sample["offset"], stats))
    else:
        out["image"] = torch.from_numpy(normalize(physical(sample), sample["valid"], stats["mean"], stats["std"]))
    return out


def normalize_batch(batch: dict, dtype: torch.dtype = torch.float32) -> dict:
    """Batches shipped as stored integers -> `image` (B,T,C,H,W) normalised (invalid pixels 0),
    computed where the tensors are (the accelerator, in training). Other batches pass through."""
    if "stored" not in batch:
        return batch
    out = dict(batch)
    stored, affine = out.pop("stored"), out.pop("affine")                   # (B,T,C,H,W), (B,2,C)
    a = affine[:, 0, None, :, None, None]
    b = affine[:, 1, None, :, None, None]
    image = stored.to(torch.float32) * a + b
    out["image"] = torch.where(out["valid"][:, :, None], image, torch.zeros((), device=image.device)).to(dtype)
    return out


def collate(samples: list[dict]) -> dict:
    """Samples of one sensor and shape -> batch: image (B,T,C,H,W) (or stored (B,T,C,H,W) +
    affine (B,2,C), see `normalize_batch`), valid (B,T,H,W), wavelengths_nm (B,C), gsd_m (B,),
    times (B,T), lonlat (B,2), optional landcover (B,K), key (list), sensor (str)."""
    keys = ["valid", "wavelengths_nm", "gsd_m", "times", "lonlat"]
    keys += ["stored", "affine"] if "stored" in samples[0] else ["image"]
    if all("landcover" in s for s in samples):
        keys.append("landcover")                 # (B, K) class fractions, when shards carry them
    out = {}
    for k in keys:
        parts = [s[k] for s in samples]
        # stacked straight into shared memory in a worker: sending it then passes a handle
        out[k] = torch.stack(parts, out=new_tensor((len(parts), *parts[0].shape), parts[0].dtype))
    out["key"] = [s["key"] for s in samples]
    out["sensor"] = samples[0]["sensor"]
    return out


class Item:
    """One decoded sample waiting in a shuffle buffer (its arrays are views of the read payload)."""

    __slots__ = ("key", "group", "epoch", "sample")

    def __init__(self, key: str, epoch: int, sample: dict):
        self.key, self.epoch, self.sample = key, epoch, sample
        self.group = (sample["sensor"], sample["image"].shape)     # batches never mix these


def batches_before(consumed: int, worker: int, workers: int) -> int:
    """How many of a rank's first `consumed` batches came from `worker`: the DataLoader takes
    batches from its workers round-robin (worker w gives batches w, w+W, w+2W, ...)."""
    return len(range(worker, consumed, workers))


class ShardStream(IterableDataset):
    """Endless stream of batches for one rank (its workers split its shards further).

    The stream is a pure function of (seed, rank, world, workers, dataset): exact resume skips
    the batches already consumed (`skip_batches`, counted for the whole rank), replaying the
    shard order and the seeded shuffle without decoding the skipped samples.
    """

    def __init__(self, dataset_url: str, batch_size: int, rank: int, world: int, seed: int,
                 shuffle_buffer: int = 256, start_epoch: int = 0, skip_batches: int = 0,
                 augment_spec: AugmentSpec | None = None, keep: np.ndarray | None = None, ring_slots: int = 0):
        """keep: optional (N,) bool mask over global sample indices (manifest shard order, then
        position), e.g. a curation keep-list; only those samples are streamed.
        ring_slots: reuse that many batch buffers per shape (buffers.BatchRing and its contract);
        0: every batch gets new memory."""
        self.url = dataset_url
        self.manifest = manifest_mod.read(dataset_url)
        self.urls = manifest_mod.shard_urls(dataset_url, self.manifest)
        self.records = self.manifest["shards"]
        self.norm = normalization_table(self.manifest)
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.shuffle_buffer, self.start_epoch, self.skip_batches = shuffle_buffer, start_epoch, skip_batches
        self.augment = augment_spec
        self.ring_slots = ring_slots
        self._assembler: Assembler | None = None
        counts = [int(r["samples"]) for r in self.records]
        self.starts, self.total = sample_starts(self.records), sum(counts)
        self._keep_packed = None
        self.shards = list(range(len(self.urls)))      # shards holding at least one streamed sample
        if keep is not None:
            keep = np.asarray(keep, bool)
            if keep.shape != (self.total,):
                raise ValueError(f"{dataset_url}: keep mask has shape {keep.shape}, the dataset has {self.total} samples")
            if not keep.any():
                raise ValueError(f"{dataset_url}: the keep mask selects no sample")
            self._keep_packed = pack_mask(keep)        # 1 bit per sample to the workers
            self.shards = [i for i, (a, n) in enumerate(zip(self.starts, counts)) if keep[a:a + n].any()]
        self._keep: np.ndarray | None = None

    def _kept(self, shard: int, position: int) -> bool:
        if self._keep_packed is None:
            return True
        if self._keep is None:
            self._keep = unpack_mask(self._keep_packed, self.total)
        return bool(self._keep[self.starts[shard] + position])

    def _items(self, worker: int, workers: int) -> Iterator[Item]:
        epoch = self.start_epoch
        while True:
            for j in shards_for_worker(len(self.shards), self.rank, self.world, worker, workers, epoch, self.seed):
                i = self.shards[j]
                if self.records[i].get("format") == "zarr":
                    for p, (key, sample) in enumerate(iter_zarr_shard(self.url, self.records[i]["path"])):
                        if self._kept(i, p):
                            yield Item(key, epoch, sample)
                    continue
                with fsspec.open(self.urls[i], "rb") as f:
                    for p, (key, files) in enumerate(iter_tar_samples(f, self.urls[i])):
                        if self._kept(i, p):
                            yield Item(key, epoch, decode(files, key))     # views, no pixel copy
            epoch += 1

    def _batch(self, items: list[Item]) -> dict:
        # Integers leave the worker unless an augmentation needs floats (resample, noise): half
        # the bytes to copy, and the normalisation runs on the accelerator (normalize_batch).
        spec = self.augment
        if spec is None or not (spec.crop or spec.out_size or spec.noise_std):
            if self._assembler is None:
                self._assembler = Assembler(self.norm, spec, self.seed, BatchRing(self.ring_slots))
            return self._assembler([it.sample for it in items], [it.epoch for it in items])
        # a pure function of (seed, epoch, key): the same whatever the worker count or order
        return collate([augment(to_tensors(it.sample, self.norm), spec,
                                sample_generator(self.seed, it.key, epoch=it.epoch)) for it in items])

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader always starts its round-robin at worker 0, so after `skip_batches`
        # batches worker i plays the role of worker (i + skip) % W: the next batch comes from
        # whichever worker would have produced it in the uninterrupted run.
        worker = (worker + self.skip_batches) % workers
        skip = batches_before(self.skip_batches, worker, workers)
        rng = random.Random(f"{self.seed}-{self.rank}-{worker}-{self.start_epoch}")
        buffer: list[Item] = []
        groups: dict[tuple, list[Item]] = {}
        for item in self._items(worker, workers):
            buffer.append(item)
            if len(buffer) < self.shuffle_buffer:
                continue
            pick = buffer.pop(rng.randrange(len(buffer)))
            group = groups.setdefault(pick.group, [])
            group.append(pick)
            if len(group) == self.batch_size:
                if skip:
                    skip -= 1                  # consumed before the restart: replayed, not decoded
                else:
                    yield self._batch(group)
                group.clear()


PREFETCH = 4        # batches in flight per DataLoader worker


def make_loader(dataset_url: str, batch_size: int, rank: int, world: int, seed: int, num_workers: int,
                shuffle_buffer: int, start_method: str = "spawn", start_epoch: int = 0,
                skip_batches: int = 0, augment_spec: AugmentSpec | None = None,
                keep: np.ndarray | None = None, ignore_signals: bool = False,
                reuse_buffers: bool = False) -> DataLoader:
    """The rank's endless DataLoader over a ShardStream. ignore_signals: workers ignore SIGTERM and
    SIGUSR1 (training: the main process decides when to stop; see engine.StopSignals).
    reuse_buffers: batches live in a ring of PREFETCH + 2 reused buffers (buffers.py): a batch
    stays valid while the next one is drawn, not longer (training consumes batches in turn)."""
    stream = ShardStream(dataset_url, batch_size, rank, world, seed, shuffle_buffer, start_epoch, skip_batches,
                         augment_spec, keep, ring_slots=PREFETCH + 2 if reuse_buffers else 0)
    kwargs = {}
    if num_workers > 0:
        kwargs = {"multiprocessing_context": start_method, "persistent_workers": True, "prefetch_factor": PREFETCH,
                  "worker_init_fn": functools.partial(worker_init, ignore_signals=ignore_signals)}
    return DataLoader(stream, batch_size=None, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), **kwargs)


def worker_init(worker_id: int = 0, ignore_signals: bool = False) -> None:
    """DataLoader worker_init_fn. A finished worker leaves through os._exit: a full interpreter
    shutdown in a spawned torch worker can abort in C++ static destructors ("terminate called
    without an active exception", SIGABRT), which the main process reports as a failed worker."""
    if ignore_signals:
        from pretrain.engine import ignore_stop_signals
        ignore_stop_signals()
    # workers are the unit of parallelism: a Blosc thread pool per worker only oversubscribes
    numcodecs.blosc.set_nthreads(1)
    atexit.register(_exit_now)


def _exit_now() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def close_loader(it, grace_s: float = 10.0) -> None:
    """Stop a DataLoader iterator's workers now, not at interpreter exit.

    Our workers ignore SIGTERM (see engine.ignore_stop_signals), so the fallbacks torch and
    multiprocessing use at exit (terminate, then join without a timeout) could wait forever on
    a worker that missed its shutdown message; a worker still alive after `grace_s` is killed."""
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is None:          # num_workers=0: nothing to stop
        return
    try:
        shutdown()
    except RuntimeError as err:   # torch's SIGCHLD check: a worker died while being stopped
        log.debug("loader shutdown: %s", err)
    deadline = time.monotonic() + grace_s
    for w in getattr(it, "_workers", []):
        w.join(timeout=max(0.0, deadline - time.monotonic()))
        if w.is_alive():
            w.kill()
            w.join()

"""Streaming loader over prepared shards (WebDataset tars or Zarr groups): split by rank and
worker, seeded shuffling, batches per sensor.

Each worker streams its shards (see partition.py) epoch after epoch, without end: training
runs for a number of steps, so every rank always has a next batch and no rank can hang in a
collective waiting for another. Samples are decoded, normalised with the manifest's
statistics, shuffled in a seeded buffer, and batched per (sensor, shape) so a batch never
mixes band sets. Shards are opened through fsspec, so any fsspec URL works.
"""
from __future__ import annotations

import random
from datetime import datetime
from typing import Iterator

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep import manifest as manifest_mod
from data_prep.sample import decode, physical
from data_prep.tario import iter_tar_samples
from data_prep.zarr_io import iter_zarr_shard
from pretrain.data.normalize import normalization_table, normalize
from pretrain.data.partition import shards_for_worker


def _epoch_days(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").timestamp() / 86400.0


def to_tensors(sample: dict, norm: dict) -> dict:
    """Decoded sample -> model-ready tensors (one sample, no batch dim)."""
    stats = norm[sample["sensor"]]
    if list(sample["bands"]) != stats["bands"]:
        raise ValueError(f"sample {sample['key']}: bands {sample['bands']} differ from the manifest's {stats['bands']}")
    x = normalize(physical(sample), sample["valid"], stats["mean"], stats["std"])
    return {
        "key": sample["key"],
        "sensor": sample["sensor"],
        "image": torch.from_numpy(x),                                          # (T, C, H, W)
        "valid": torch.from_numpy(np.ascontiguousarray(sample["valid"])),      # (T, H, W)
        "wavelengths_nm": torch.tensor(sample["wavelengths_nm"], dtype=torch.float32),  # (C,)
        "gsd_m": torch.tensor(float(sample["gsd_m"])),
        "times": torch.tensor([_epoch_days(t) for t in sample["times"]], dtype=torch.float64),  # (T,) days since 1970
        "lonlat": torch.tensor(sample["lonlat"], dtype=torch.float32),         # (2,)
        **({"landcover": torch.tensor(sample["landcover"]["fractions"], dtype=torch.float32)}   # (K,)
           if sample.get("landcover") else {}),
    }


def collate(samples: list[dict]) -> dict:
    """Samples of one sensor and shape -> batch: image (B,T,C,H,W), valid (B,T,H,W),
    wavelengths_nm (B,C), gsd_m (B,), times (B,T), lonlat (B,2), optional landcover (B,K),
    key (list), sensor (str)."""
    keys = ["image", "valid", "wavelengths_nm", "gsd_m", "times", "lonlat"]
    if all("landcover" in s for s in samples):
        keys.append("landcover")                 # (B, K) class fractions, when shards carry them
    out = {k: torch.stack([s[k] for s in samples]) for k in keys}
    out["key"] = [s["key"] for s in samples]
    out["sensor"] = samples[0]["sensor"]
    return out


class ShardStream(IterableDataset):
    """Endless stream of batches for one rank (its workers split its shards further)."""

    def __init__(self, dataset_url: str, batch_size: int, rank: int, world: int, seed: int,
                 shuffle_buffer: int = 256, start_epoch: int = 0):
        self.url = dataset_url
        self.manifest = manifest_mod.read(dataset_url)
        self.urls = manifest_mod.shard_urls(dataset_url, self.manifest)
        self.records = self.manifest["shards"]
        self.norm = normalization_table(self.manifest)
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.shuffle_buffer, self.start_epoch = shuffle_buffer, start_epoch

    def _samples(self, worker: int, workers: int) -> Iterator[dict]:
        epoch = self.start_epoch
        while True:
            for i in shards_for_worker(len(self.urls), self.rank, self.world, worker, workers, epoch, self.seed):
                if self.records[i].get("format") == "zarr":
                    for _key, sample in iter_zarr_shard(self.url, self.records[i]["path"]):
                        yield to_tensors(sample, self.norm)
                    continue
                with fsspec.open(self.urls[i], "rb") as f:
                    for key, files in iter_tar_samples(f, self.urls[i]):
                        yield to_tensors(decode(files, key), self.norm)
            epoch += 1

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(f"{self.seed}-{self.rank}-{worker}-{self.start_epoch}")
        buffer: list[dict] = []
        groups: dict[tuple, list[dict]] = {}
        for sample in self._samples(worker, workers):
            buffer.append(sample)
            if len(buffer) < self.shuffle_buffer:
                continue
            pick = buffer.pop(rng.randrange(len(buffer)))
            group = groups.setdefault((pick["sensor"], tuple(pick["image"].shape)), [])
            group.append(pick)
            if len(group) == self.batch_size:
                yield collate(group)
                group.clear()


def make_loader(dataset_url: str, batch_size: int, rank: int, world: int, seed: int, num_workers: int,
                shuffle_buffer: int, start_method: str = "spawn", start_epoch: int = 0) -> DataLoader:
    stream = ShardStream(dataset_url, batch_size, rank, world, seed, shuffle_buffer, start_epoch)
    kwargs = {}
    if num_workers > 0:
        kwargs = {"multiprocessing_context": start_method, "persistent_workers": True, "prefetch_factor": 4}
    return DataLoader(stream, batch_size=None, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available(), **kwargs)

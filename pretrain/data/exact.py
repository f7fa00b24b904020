"""Exact-once iteration for evaluation, over WebDataset tars or Zarr groups.

Training streams are endless and wrap around (partition.py); evaluation needs every sample of
the dataset exactly once over all ranks, while every rank still runs the same number of steps
(a rank that stops early would hang the others in a collective). `exact_once_plan` (pure)
decides, for every rank, its list of batches; `ExactOnce` reads them.

Plan
----
- **Streams**: a batch holds one sensor and one sample shape. Shard records carry no shape, so
  the shard NAME decides: the prep engine names shards `<sensor>-<shape tag>-p<part>-w<worker>-
  <index>` (+ `.tar` for WebDataset), the shape tag being a hash of (T, C, H, W). The stream of a
  record is its path's basename up to `-p<part>-w<worker>-<index>`, i.e. `<sensor>-<shape tag>`,
  so shards of the same sensor and shape written by different parts/workers batch together. A
  name outside that pattern falls back to the basename with a trailing `-<digits>` index removed,
  and else to the whole basename (that shard alone); shards are homogeneous, so this is safe.
- **Batches**: streams in order of first appearance in manifest["shards"]; inside a stream, its
  records in manifest order and positions 0..n-1, cut into batches of `batch_size` (a batch may
  span two shards of the same stream). The global batch list is split into `world` contiguous,
  balanced runs (rank r takes batches [ceil(r*N/world), ceil((r+1)*N/world)): run lengths differ
  by at most one, the shorter runs are the last ranks'), so each shard is read by few ranks.
- **Padding**: every batch has exactly `batch_size` entries and every rank exactly
  ceil(N / world) batches. Filler entries are `(-1, g)`: a copy of the real sample with global
  index g (order of manifest["shards"], then position: the same index as ZarrSamples). A stream's
  last, partial batch is filled with copies of its own first sample (same sensor and shape); a
  rank with fewer batches gets whole filler batches repeating its first sample (sample 0 of the
  dataset if it has none). Batches carry `pad` (B,) bool, True for filler slots: metrics must
  drop them (e.g. `loss[~batch["pad"]]`), so no sample is ever counted twice.

Entries are `(shard index, position)` for real samples, with shard index = index in
manifest["shards"].

Workers
-------
With DataLoader workers, worker w of W takes the rank's batches w, w+W, w+2W, ... A DataLoader
over an IterableDataset asks its workers for items round-robin and returns them in request
order, so the batches come out in plan order (0, 1, 2, ...); workers that run out first are the
last ones in the final round, which keeps that order. Each worker opens a tar shard once and
scans it forward to the positions it needs (closed after its last needed position); Zarr groups
are opened once per worker and read by position (random access).
"""
from __future__ import annotations

import re
from typing import Iterator

import fsspec
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_prep import manifest as manifest_mod
from data_prep.sample import decode
from data_prep.tario import iter_tar_samples
from data_prep.zarr_io import ShardReader, read_zarr_sample
from pretrain.data.index import sample_starts
from pretrain.data.normalize import normalization_table
from pretrain.data.webdataset import collate, to_tensors, worker_init
from pretrain.data.zarr_dataset import dataset_root

PAD = -1                                       # shard index of a filler entry (-1, global index)
_ENGINE_NAME = re.compile(r"^(?P<stream>.+?)-p\d+-w\d+-\d+$")
_INDEXED_NAME = re.compile(r"^(?P<stream>.+)-\d+$")

Entry = tuple[int, int]


def stream_of(path: str) -> str:
    """Batch stream of a shard record path (sensor + shape tag for engine-named shards)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name.endswith(".tar"):
        name = name[:-4]
    for pattern in (_ENGINE_NAME, _INDEXED_NAME):
        m = pattern.match(name)
        if m:
            return m.group("stream")
    return name


def exact_once_plan(records: list[dict], world: int, batch_size: int,
                    select: set[int] | None = None) -> list[list[list[Entry]]]:
    """plan[rank] = that rank's batches; a batch = `batch_size` entries (shard index, position),
    fillers (-1, global index). See the module docstring. `select`: only these global sample
    indices (a subset, e.g. for curation embeddings); None = all."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts, total = [], 0
    streams: dict[str, list[int]] = {}
    for s, rec in enumerate(records):
        n = int(rec["samples"])
        if n < 0:
            raise ValueError(f"shard record {rec.get('path')}: negative sample count {n}")
        starts.append(total)
        total += n
        streams.setdefault(stream_of(rec["path"]), []).append(s)

    batches: list[list[Entry]] = []
    for shard_ids in streams.values():
        entries = [(s, p) for s in shard_ids for p in range(int(records[s]["samples"]))
                   if select is None or starts[s] + p in select]
        for a in range(0, len(entries), batch_size):
            batch = entries[a:a + batch_size]
            if len(batch) < batch_size:
                s0, p0 = batch[0]
                batch = batch + [(PAD, starts[s0] + p0)] * (batch_size - len(batch))
            batches.append(batch)

    n = len(batches)
    per_rank = -(-n // world)
    plan = []
    for r in range(world):
        mine = batches[-(-r * n // world):-(-(r + 1) * n // world)]
        if len(mine) < per_rank:
            if mine:
                s0, p0 = mine[0][0]
                filler = starts[s0] + p0
            else:
                filler = 0
            mine = mine + [[(PAD, filler)] * batch_size for _ in range(per_rank - len(mine))]
        plan.append(mine)
    return plan


class _TarCursor:
    """Forward reader over one tar shard: sample at position p, reopening only to go back."""

    def __init__(self, url: str):
        self.url, self._file, self._it, self.pos = url, None, None, 0

    def get(self, p: int) -> tuple[str, dict]:
        if self._it is None or p < self.pos:
            self.close()
            self._file = fsspec.open(self.url, "rb").open()
            self._it, self.pos = iter_tar_samples(self._file, self.url), 0
        for key, files in self._it:
            self.pos += 1
            if self.pos - 1 == p:
                return key, files
        raise ValueError(f"{self.url}: shard ends before sample position {p} (the manifest says it holds more)")

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
        if self._file is not None:
            self._file.close()
        self._file, self._it, self.pos = None, None, 0


class ExactOnce(IterableDataset):
    """Every sample of the dataset once over all ranks, as collated batches plus `pad` (B,) bool
    (True = filler slot, ignore in metrics) and `index` (B,) int64 (global sample index; for a
    filler, the index of the sample it copies). len() = this rank's batch count, equal on all
    ranks. Use with DataLoader(ds, batch_size=None, num_workers=W, ...)."""

    def __init__(self, dataset_url: str, rank: int, world: int, batch_size: int, select: set[int] | None = None):
        if not 0 <= rank < world:
            raise ValueError(f"bad rank {rank} for world size {world}")
        self.url = dataset_root(dataset_url)
        manifest = manifest_mod.read(str(dataset_url))
        self.records = [{k: r.get(k) for k in ("path", "format", "samples", "keys")} for r in manifest["shards"]]
        self.urls = manifest_mod.shard_urls(self.url, manifest)
        self.norm = normalization_table(manifest)
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.plan = exact_once_plan(self.records, world, batch_size, select)[rank]
        self.starts = sample_starts(self.records)
        self.samples = sum(int(r["samples"]) for r in self.records)

    def __len__(self) -> int:
        return len(self.plan)

    def _locate(self, g: int) -> tuple[int, int]:
        for s in range(len(self.records) - 1, -1, -1):
            if self.starts[s] <= g and int(self.records[s]["samples"]) > g - self.starts[s]:
                return s, g - self.starts[s]
        raise IndexError(f"{self.url}: sample index {g} out of range for {self.samples} samples")

    def batch_ids(self, worker: int, workers: int) -> list[int]:
        """Indices into this rank's plan read by DataLoader worker `worker` of `workers`."""
        return list(range(worker, len(self.plan), workers))

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        ids = self.batch_ids(worker, workers)
        last: dict[int, int] = {}                # shard -> last position this worker reads
        for b in ids:
            for s, p in self.plan[b]:
                if s != PAD:
                    last[s] = max(last.get(s, -1), p)
        cursors: dict[int, _TarCursor] = {}
        groups: dict = {}
        fillers: dict[int, dict] = {}            # global index -> tensors (filler copies)

        def read(s: int, p: int, *, keep_open: bool) -> dict:
            rec = self.records[s]
            if rec.get("format") == "zarr":
                if s not in groups:
                    groups[s] = ShardReader(self.url, rec["path"])
                sample = read_zarr_sample(self.url, rec["path"], p, reader=groups[s])
            else:
                cursor = cursors.get(s) if keep_open else None
                if cursor is None:
                    cursor = _TarCursor(self.urls[s])
                    if keep_open:
                        cursors[s] = cursor
                try:
                    key, files = cursor.get(p)
                finally:
                    if not keep_open:
                        cursor.close()
                    elif p >= last.get(s, -1):       # this worker needs nothing further from s
                        cursor.close()
                        del cursors[s]
                sample = decode(files, key)
            keys = rec.get("keys")
            if keys is not None and keys[p] != sample["key"]:
                raise ValueError(f"{self.urls[s]}: sample {p} has key {sample['key']}, the manifest says {keys[p]}")
            return to_tensors(sample, self.norm)

        try:
            for b in ids:
                batch = self.plan[b]
                got: dict[int, dict] = {}
                for s, p in batch:
                    if s != PAD:
                        got[self.starts[s] + p] = read(s, p, keep_open=True)
                samples, pad, index = [], [], []
                for s, p in batch:
                    if s == PAD:
                        g = p
                        if g not in got and g not in fillers:
                            fillers[g] = read(*self._locate(g), keep_open=False)
                        samples.append(got[g] if g in got else fillers[g])
                    else:
                        g = self.starts[s] + p
                        samples.append(got[g])
                    pad.append(s == PAD)
                    index.append(g)
                out = collate(samples)
                out["pad"] = torch.tensor(pad, dtype=torch.bool)
                out["index"] = torch.tensor(index, dtype=torch.int64)
                yield out
        finally:
            for cursor in cursors.values():
                cursor.close()


def make_eval_loader(dataset_url: str, batch_size: int, rank: int, world: int, num_workers: int = 0,
                     start_method: str = "spawn", select: set[int] | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader giving every sample of the dataset (or of `select`, global indices) exactly
    once over all ranks (evaluation, embedding the dataset for curation): batches as `ExactOnce`
    yields them, the same count on every rank, filler slots marked in `pad`."""
    kwargs = {"multiprocessing_context": start_method, "worker_init_fn": worker_init} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(ExactOnce(dataset_url, rank, world, batch_size, select), batch_size=None,
                                       num_workers=num_workers, **kwargs)

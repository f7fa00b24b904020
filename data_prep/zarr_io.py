"""Reading the Zarr v3 form of a prepared dataset (written by data_prep.writers.zarr_store).

Layout (see ZarrShardWriter for the writing side):
  <dataset>/store.zarr/                   root group, attrs {"format": "eofm-zarr", "format_version": 1}
  <dataset>/store.zarr/<prefix>-<index>/  one group per sealed writer shard (its record path),
                                          attrs {"samples": N, "sensor": ..., "image_dtype": ...}
      image  (N, T, C, H, W) stored integers, chunk (1, T, C, H, W), zarr shard (S, T, C, H, W)
      valid  (N, T, H, W) bool,               chunk (1, T, H, W),    zarr shard (S, T, H, W)
      meta   (N,) UTF-8 strings: the sample's `.json` member (data_prep.sample.meta_json)
      key    (N,) UTF-8 strings: the sample keys
A sample read back here is exactly what data_prep.sample.decode gives for the same sample
read from a WebDataset tar: same keys, dtypes, shapes and metadata.

Checksum of a group (`group_digest`): sha256 over its files sorted by relative POSIX path;
for each file the digest takes `<relative path>` + NUL + sha256(file contents) (32 raw bytes).
`bytes` is the sum of the files' sizes.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterator

import fsspec
import numpy as np
import zarr

from data_prep import zarr_shards
from data_prep.sample import SampleError, check

STORE = "store.zarr"
FORMAT = "eofm-zarr"
FORMAT_VERSION = 1
ROOT_ATTRS = {"format": FORMAT, "format_version": FORMAT_VERSION}
ARRAYS = ("image", "valid", "meta", "key")


def group_digest(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, int]:
    """(sha256 hex, total bytes) of every file under the group folder `path` on `fs`."""
    base = fs._strip_protocol(path).rstrip("/")
    found = fs.find(base, detail=True)
    entries = []
    for name, info in found.items():
        name = fs._strip_protocol(name)
        if not name.startswith(base + "/") or info.get("type") == "directory":
            continue
        entries.append((name[len(base) + 1:], name, int(info["size"])))
    entries.sort()
    outer = hashlib.sha256()
    total = 0
    for rel, name, size in entries:
        inner = hashlib.sha256()
        with fs.open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(rel.encode("utf-8") + b"\0")
        outer.update(inner.digest())
        total += size
    return outer.hexdigest(), total


def _url(dataset_url: str, rel_path: str) -> str:
    return f"{dataset_url.rstrip('/')}/{rel_path.strip('/')}"


def open_zarr_shard(dataset_url: str, rel_path: str, storage_options: dict | None = None) -> zarr.Group:
    """Open one shard group read-only (local path or any fsspec URL) and check its arrays."""
    url = _url(dataset_url, rel_path)
    kwargs = {"storage_options": storage_options} if storage_options and "://" in url else {}
    try:
        group = zarr.open_group(url, mode="r", **kwargs)
    except (OSError, KeyError, ValueError, zarr.errors.BaseZarrError) as err:
        raise ValueError(f"{rel_path}: not a readable zarr shard group: {err}") from None
    missing = [a for a in ARRAYS if a not in group]
    if missing:
        raise ValueError(f"{rel_path}: zarr shard group lacks array(s) {', '.join(missing)}")
    n = group["image"].shape[0]
    lengths = {a: group[a].shape[0] for a in ARRAYS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{rel_path}: arrays disagree on the sample count: {lengths}")
    if group.attrs.get("samples", n) != n:
        raise ValueError(f"{rel_path}: attrs say {group.attrs.get('samples')} samples, arrays hold {n}")
    return group


def make_sample(key: str, image: np.ndarray, valid: np.ndarray, meta: str) -> dict:
    """Stored pieces -> sample dict, built exactly as data_prep.sample.decode builds it."""
    try:
        meta = json.loads(meta)
    except ValueError as err:
        raise SampleError(f"sample {key}: cannot decode: {err}") from None
    if not isinstance(meta, dict):
        raise SampleError(f"sample {key}: cannot decode: metadata is not a JSON object")
    sample = {"key": key, "image": image, "valid": valid, **meta}
    check(sample)
    return sample


def _step(arr) -> int:
    shards = getattr(arr, "shards", None)
    return int((shards or arr.chunks)[0])


def iter_zarr_raw(dataset_url: str, rel_path: str, storage_options: dict | None = None
                  ) -> Iterator[tuple[str, np.ndarray, np.ndarray, str]]:
    """Yield (key, image, valid, meta JSON string) in stored order, one zarr shard read at a time.
    eofm's own sharded layout is read directly (data_prep.zarr_shards); other layouts via zarr."""
    r = ShardReader(dataset_url, rel_path, storage_options)
    for a in range(0, r.n, r.step):
        b = min(r.n, a + r.step)
        imgs, vals = r.block("image", a, b), r.block("valid", a, b)
        keys, metas = r.strings("key", a, b), r.strings("meta", a, b)
        for i in range(b - a):
            yield keys[i], imgs[i], vals[i], metas[i]


def iter_zarr_shard(dataset_url: str, rel_path: str,
                    storage_options: dict | None = None) -> Iterator[tuple[str, dict]]:
    """Yield (key, sample) in stored order; samples equal data_prep.sample.decode's for the tar form."""
    for key, image, valid, meta in iter_zarr_raw(dataset_url, rel_path, storage_options):
        yield key, make_sample(key, image, valid, meta)


class ShardReader:
    """Reads one shard group: samples by index (`sample`), or whole zarr shards in order (`block`,
    `strings`; iter_zarr_raw). eofm's own layout is read directly (data_prep.zarr_shards: cached
    shard indexes, one range read per array and sample or one read per zarr shard; the metadata
    strings one chunk at a time, the last chunk kept); other layouts through zarr."""

    def __init__(self, dataset_url: str, rel_path: str, storage_options: dict | None = None):
        self.rel_path = rel_path
        self.group = open_zarr_shard(dataset_url, rel_path, storage_options)
        self.n = self.group["image"].shape[0]
        self.step = max(1, _step(self.group["image"]))     # samples per zarr shard
        url = _url(dataset_url, rel_path)
        self.fs = fsspec.core.url_to_fs(url, **(storage_options or {}))[0]
        self._pixels: dict = {}
        self._strings: dict = {}
        for a in ("image", "valid"):
            p = zarr_shards.plan(f"{url}/{a}", self.group[a].metadata.to_dict())
            self._pixels[a] = zarr_shards.SampleReader(p, self.fs) if p is not None else None
        for a in ("meta", "key"):
            self._strings[a] = zarr_shards.plan_strings(f"{url}/{a}", self.group[a].metadata.to_dict())
        self._chunk: dict[str, tuple[int, list[str]]] = {}

    def strings(self, a: str, lo: int, hi: int) -> list[str]:
        """Items lo..hi-1 of string array `a` ("meta" or "key")."""
        p = self._strings[a]
        if p is None:
            return [str(x) for x in self.group[a][lo:hi]]
        out: list[str] = []
        for j in range(lo // p.per_chunk, (hi - 1) // p.per_chunk + 1):
            cached = self._chunk.get(a)
            if cached is None or cached[0] != j:
                cached = self._chunk[a] = (j, zarr_shards.read_strings(p, j, self.fs))
            first = j * p.per_chunk
            out += cached[1][max(lo, first) - first:min(hi, first + p.per_chunk) - first]
        return out

    def block(self, a: str, lo: int, hi: int) -> list[np.ndarray]:
        """Samples lo..hi-1 of pixel array `a`, each in its own memory (lo..hi: one zarr shard)."""
        r = self._pixels[a]
        if r is not None and r.plan.per_shard == self.step and lo % self.step == 0:
            return zarr_shards.read_shard(r.plan, lo // self.step, self.fs)[:hi - lo]
        return [x.copy() for x in self.group[a][lo:hi]]

    def _array(self, a: str, i: int) -> np.ndarray:
        r = self._pixels[a]
        return r.read(i) if r is not None else np.asarray(self.group[a][i])

    def sample(self, index: int) -> dict:
        """Sample number `index` of the group (negative counts from the end)."""
        n = self.n
        if not -n <= index < n:
            raise IndexError(f"{self.rel_path}: sample index {index} out of range for {n} samples")
        index %= n
        return make_sample(self.strings("key", index, index + 1)[0], self._array("image", index),
                           self._array("valid", index), self.strings("meta", index, index + 1)[0])


def read_zarr_sample(dataset_url: str, rel_path: str, index: int,
                     storage_options: dict | None = None, reader: ShardReader | None = None) -> dict:
    """Random access: sample number `index` of the shard (pass a ShardReader, kept per group, to
    avoid re-opening the group and re-reading shard indexes for every sample)."""
    reader = reader if reader is not None else ShardReader(dataset_url, rel_path, storage_options)
    return reader.sample(index)

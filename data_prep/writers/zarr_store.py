"""Zarr v3 shards: one group per writer shard in one store, published atomically.

Same interface and transaction semantics as data_prep.writers.webdataset.ShardWriter.

Layout (dataset folder `out_url`):
  store.zarr/zarr.json            root group, attrs {"format": "eofm-zarr", "format_version": 1},
                                  created idempotently by the first seal of any writer
  store.zarr/<prefix>-<index:06d>/  one sealed writer shard (= the record's `path`), attrs
                                  {"samples": N, "sensor": ..., "image_dtype": ...}, arrays:
    image (N, T, C, H, W) stored ints  chunks (1, T, C, H, W)  shards (S, T, C, H, W)
    valid (N, T, H, W) bool            chunks (1, T, H, W)     shards (S, T, H, W)
    meta  (N,) UTF-8 strings           chunks (S,)  (no sharding) the `.json` member of the sample
    key   (N,) UTF-8 strings           chunks (S,)  (no sharding)
  All chunks are compressed with Blosc (lz4 by default, or zstd; output.zarr_compression), clevel 5,
  byte shuffle (zarr's BloscCodec); `none` stores them raw.
  One chunk per sample inside the sharding codec keeps random access per sample cheap while the
  stored objects (zarr shards) stay a few MB to tens of MB: S = min(MAX_SHARD_SAMPLES,
  SHARD_BYTES // raw bytes of one sample), at least 1 (S2 12x64x64 uint16 + mask: S = 163, ~16 MiB
  raw per zarr shard). N is not padded: the last zarr shard of a group is partial (it simply holds
  fewer inner chunks); readers must use the arrays' shape, never N rounded up to S. Inner chunks
  equal to the fill value (all-0 image, all-False mask) are not stored (zarr's default
  write_empty_chunks=False); they read back as exactly those values.

Writing: samples are buffered in preallocated (S, ...) arrays; as soon as S samples are buffered
they are written as one whole zarr shard into a local temporary store (arrays resized), so no
zarr shard is ever written twice or partially (no read-modify-write, zarr-python#3421), except
the last, partial one written once at seal. Each writer owns its whole group, so no two processes
ever write the same zarr shard. A rollback that reaches back into already-written zarr shards
reads the kept part of the last one back into the buffer and deletes it (arrays shrunk to a
multiple of S).
Memory bound: the preallocated buffer of S samples (<= SHARD_BYTES raw, or one sample when a
sample is larger) plus zarr's encoded copy of one zarr shard while it is written: about
2 x SHARD_BYTES (~32-35 MiB; measured peak 34 MiB writing real S2 12x64x64 chips, S = 163), plus
the keys of the open group (for its record) and the metadata strings of the buffered samples.

Sealing: commit() seals the open group once its size reaches target_bytes; the size counts the
files already written to the temporary store (compressed) plus the raw bytes of the buffered
samples. Groups are sealed only between products, as for tar shards.

Atomic publish: a local output is built in `<out>/.tmp/<name>-<random>` (same filesystem) and
`os.rename`d to `store.zarr/<name>`; an fsspec output is built in a local temp dir, uploaded to
`store.zarr/<name>.part` and moved (`fs.mv(..., recursive=True)`) to `store.zarr/<name>`.
Nothing partial ever exists under a final name; abort() or a crash leaves only temporary names
(`<out>/.tmp/`, `*.part`) which a later run may delete.

Record: {"path": "store.zarr/<name>", "format": "zarr", "samples", "bytes", "sha256", "keys"}
with sha256/bytes from data_prep.zarr_io.group_digest (sorted relative paths + file contents).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import BloscCodec

from data_prep import sample as sample_mod
from data_prep.writers.base import ShardLifecycle
from data_prep.zarr_io import ARRAYS, ROOT_ATTRS, STORE, group_digest

SHARD_BYTES = 16 * 2**20          # raw bytes aimed at per zarr shard
MAX_SHARD_SAMPLES = 1024          # caps S for tiny samples (index size, meta chunk size)
TMP = ".tmp"


def compressors(name: str = "lz4") -> list:
    """Chunk codecs for `output.zarr_compression`. Measured on 202-band EnMAP int16 chips, one
    core: zstd-5 2.24x smaller, 2.06 ms decode per 1.65 MB chip; lz4-5 1.62x, 0.92 ms."""
    if name == "none":
        return []
    if name not in ("lz4", "zstd"):
        raise ValueError(f"zarr compression {name!r} unknown (lz4, zstd, none)")
    return [BloscCodec(cname=name, clevel=5, shuffle="shuffle")]


def shard_samples(sample_bytes: int, shard_bytes: int = SHARD_BYTES) -> int:
    """S, the samples per zarr shard, for samples of `sample_bytes` raw bytes."""
    return int(max(1, min(MAX_SHARD_SAMPLES, shard_bytes // max(1, sample_bytes))))


class ZarrShardWriter(ShardLifecycle):
    FORMAT = "zarr"

    def __init__(self, out_url: str, prefix: str, target_bytes: int, start_index: int = 0, *,
                 samples_per_shard: int | None = None, compression: str = "lz4"):
        """`samples_per_shard` fixes S (tests); by default S comes from the first sample's size.
        `compression`: lz4, zstd or none (see `compressors`)."""
        compressors(compression)                       # fail early on an unknown name
        self.compression = compression
        self.fs, self.root = fsspec.core.url_to_fs(out_url)
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        self.prefix = prefix
        self.target = int(target_bytes)
        self.index = start_index
        self.records: list[dict] = []
        self.S = samples_per_shard
        if self.S is not None and self.S < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.S}")
        self._spec = None           # (sensor, (T, C, H, W), dtype) of every sample of this writer
        self._img = self._val = None  # (S, ...) buffers, allocated at the first sample, reused
        self._open = False
        self._reset()

    # ---- product transaction -------------------------------------------------------
    def begin(self) -> None:
        if not self._open:
            self._reset()
            self._open = True
        self._mark = len(self._keys)

    def add(self, sample: dict) -> None:
        if not self._open:
            raise RuntimeError("ZarrShardWriter.add() called outside begin()/commit()")
        sample_mod.check(sample)
        key, image, valid = sample["key"], sample["image"], sample["valid"]
        spec = (sample["sensor"], tuple(image.shape), np.dtype(image.dtype))
        if self._spec is None:
            self._spec = spec
            if self.S is None:
                self.S = shard_samples(image.nbytes + valid.size)
        elif spec != self._spec:
            raise ValueError(f"sample {key}: sensor/shape/dtype {spec[0]} {spec[1]} {spec[2]} does not match "
                             f"this writer's {self._spec[0]} {self._spec[1]} {self._spec[2]}")
        if self._img is None:
            t, c, h, w = self._spec[1]
            self._img = np.empty((self.S, t, c, h, w), self._spec[2])
            self._val = np.empty((self.S, t, h, w), bool)
        i = len(self._metas)
        self._img[i] = image
        self._val[i] = valid.astype(bool)
        self._metas.append(sample_mod.meta_json(sample).decode("utf-8"))
        self._keys.append(key)
        if len(self._metas) == self.S:
            self._flush()

    def rollback(self) -> None:
        if not self._open:
            return
        mark = self._mark
        if mark >= self._written:
            del self._metas[mark - self._written:]
        else:
            start = (mark // self.S) * self.S        # keep whole zarr shards only
            n = mark - start
            if n:
                self._img[:n] = self._group["image"][start:mark]
                self._val[:n] = self._group["valid"][start:mark]
            self._metas = [str(m) for m in self._group["meta"][start:mark]] if n else []
            self._resize(start)
            self._written = start
            self._disk = _tree_bytes(self._tmp)
        del self._keys[mark:]

    def _is_open(self) -> bool:
        return self._open

    # ---- internals -------------------------------------------------------------------
    def _reset(self) -> None:
        self._keys: list[str] = []      # every sample of the open group (written + buffered)
        self._metas: list[str] = []     # buffered samples (not yet written)
        self._written = 0               # samples written to the temp store (a multiple of S until seal)
        self._mark = 0
        self._tmp = None                # local temp folder of the open group (made at first flush)
        self._group = None
        self._disk = 0

    def _name(self) -> str:
        return f"{self.prefix}-{self.index:06d}"

    def _size(self) -> int:
        n = len(self._metas)
        if not n:
            return self._disk
        return self._disk + self._img[:n].nbytes + self._val[:n].nbytes + sum(map(len, self._metas))

    def _create(self) -> None:
        if self.local:
            base = f"{self.root}/{TMP}"
            self._tmp = f"{base}/{self._name()}-{uuid.uuid4().hex[:8]}"
            for _ in range(10):               # another writer may remove an empty .tmp meanwhile
                os.makedirs(base, exist_ok=True)
                try:
                    os.mkdir(self._tmp)
                    break
                except FileNotFoundError:
                    continue
            else:
                os.mkdir(self._tmp)
        else:
            self._tmp = tempfile.mkdtemp(prefix="eofm-zarr-")
        sensor, (t, c, h, w), dtype = self._spec
        S = self.S
        g = zarr.open_group(zarr.storage.LocalStore(self._tmp), mode="w",
                            attributes={"sensor": sensor, "image_dtype": dtype.name})
        g.create_array("image", shape=(0, t, c, h, w), dtype=dtype, chunks=(1, t, c, h, w),
                       shards=(S, t, c, h, w), compressors=compressors(self.compression), fill_value=0)
        g.create_array("valid", shape=(0, t, h, w), dtype=bool, chunks=(1, t, h, w),
                       shards=(S, t, h, w), compressors=compressors(self.compression), fill_value=False)
        g.create_array("meta", shape=(0,), dtype=str, chunks=(S,), compressors=compressors(self.compression))
        g.create_array("key", shape=(0,), dtype=str, chunks=(S,), compressors=compressors(self.compression))
        self._group = g

    def _resize(self, n: int) -> None:
        g = self._group
        for name in ARRAYS:
            arr = g[name]
            arr.resize((n, *arr.shape[1:]))

    def _flush(self) -> None:
        """Write the buffered samples as one zarr shard (whole, or the last partial one at seal)."""
        n = len(self._metas)
        if not n:
            return
        if self._group is None:
            self._create()
        a, b = self._written, self._written + n
        self._resize(b)
        g = self._group
        g["image"][a:b] = self._img[:n]
        g["valid"][a:b] = self._val[:n]
        g["meta"][a:b] = np.array(self._metas, dtype=object)
        g["key"][a:b] = np.array(self._keys[a:b], dtype=object)
        self._written = b
        self._metas = []
        self._disk = _tree_bytes(self._tmp)

    def _ensure_root(self) -> None:
        """Create store.zarr/zarr.json (root group) if missing; refuse a foreign store."""
        store = f"{self.root}/{STORE}"
        meta = f"{store}/zarr.json"
        if self.fs.exists(meta):
            with self.fs.open(meta, "rb") as f:
                try:
                    doc = json.loads(f.read())
                except ValueError:
                    doc = {}
            attrs = doc.get("attributes") or {}
            if doc.get("node_type") != "group" or attrs.get("format") != ROOT_ATTRS["format"]:
                raise ValueError(f"{meta}: not an eofm-zarr store (attrs {attrs})")
            return
        self.fs.makedirs(store, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="eofm-zarr-root-")
        try:
            zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", attributes=dict(ROOT_ATTRS))
            if self.local:
                part = f"{meta}.{uuid.uuid4().hex[:8]}.part"
                shutil.copyfile(f"{tmp}/zarr.json", part)
                os.replace(part, meta)         # identical content if two writers race
            else:
                self.fs.put_file(f"{tmp}/zarr.json", f"{meta}.part")
                self.fs.mv(f"{meta}.part", meta)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _seal(self) -> dict:
        self._flush()
        n = self._written
        self._group.update_attributes({"samples": n})
        _prune_empty_dirs(self._tmp)           # left by shrinking arrays in a rollback
        digest, size = group_digest(LocalFileSystem(), self._tmp)
        self._ensure_root()
        rel = f"{STORE}/{self._name()}"
        final = f"{self.root}/{rel}"
        if self.fs.exists(final):
            raise FileExistsError(f"{final}: a sealed zarr shard of that name already exists")
        if self.local:
            os.rename(self._tmp, final)
            self._drop_tmp_root()
        else:
            part = f"{final}.part"
            if self.fs.exists(part):
                self.fs.rm(part, recursive=True)      # left by a crashed upload
            for dirpath, _, files in os.walk(self._tmp):
                for fname in sorted(files):
                    local = os.path.join(dirpath, fname)
                    relf = os.path.relpath(local, self._tmp).replace(os.sep, "/")
                    self.fs.makedirs(f"{part}/{relf}".rsplit("/", 1)[0], exist_ok=True)
                    self.fs.put_file(local, f"{part}/{relf}")
            self.fs.mv(part, final, recursive=True)  # readers never see a partial group
            shutil.rmtree(self._tmp, ignore_errors=True)
        rec = {"path": rel, "format": self.FORMAT, "samples": n, "bytes": size, "sha256": digest,
               "keys": list(self._keys)}
        self.records.append(rec)
        self.index += 1
        self._open = False
        self._reset()
        return rec

    def _discard(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            if self.local:
                self._drop_tmp_root()
        self._open = False
        self._reset()

    def _drop_tmp_root(self) -> None:
        try:
            os.rmdir(f"{self.root}/{TMP}")     # only if empty: other writers may be using it
        except OSError:
            pass


def _tree_bytes(top: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(top) for f in files)


def _prune_empty_dirs(top: str) -> None:
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        if dirpath != top and not os.listdir(dirpath):
            os.rmdir(dirpath)

"""Direct reader for the sharded arrays eofm writes (image, valid): one file read per zarr shard,
then one Blosc decode per sample into its own array.

Why: zarr-python 3 decodes each inner chunk of a shard through its async codec pipeline, which
costs more per 12-band 128x128 chip than reading and decompressing it does. Our stores use one
fixed layout (data_prep.writers.zarr_store): shards along the sample axis, inner chunks of one
sample, codecs `bytes` (+ `blosc`), shard index `bytes` + `crc32c` at the end of the file. That
layout is the Zarr v3 sharding spec, so it can be read from the spec directly. `plan()` accepts
an array only when its metadata is exactly that layout; anything else (another writer, another
codec) gets None and is read through zarr, so this is a fast path, never a second format.

Shard file (spec "sharding_indexed", index_location end): chunk payloads, then the index:
S x (offset, nbytes) little-endian uint64, followed by the crc32c of those 16*S bytes.
An inner chunk never written has offset = nbytes = 2**64 - 1 and reads as the fill value.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass

import fsspec
import google_crc32c
import numcodecs
import numcodecs.blosc
import numpy as np
from fsspec.implementations.local import LocalFileSystem

EMPTY = 2**64 - 1
_VLEN = numcodecs.VLenUTF8()


_scratch = threading.local()


def _read(fs: fsspec.AbstractFileSystem, path: str) -> memoryview:
    """The whole file. Local files are read into a per-thread buffer reused from shard to shard:
    a fresh 10-40 MB bytes object per shard costs more in page faults than the read itself
    (EnMAP shard of 10 MB: 6.0 ms read() vs 1.8 ms readinto() a reused buffer). The view is
    valid until the next call in the same thread; decoded samples never point into it."""
    if not isinstance(fs, LocalFileSystem):
        return memoryview(fs.cat_file(path))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = getattr(_scratch, "buf", None)
        if buf is None or len(buf) < size:
            buf = _scratch.buf = bytearray(max(size, 2 * len(buf or b"")))
        view = memoryview(buf)[:size]
        got = f.readinto(view)
    if got != size:
        raise ValueError(f"{path}: read {got} of {size} bytes (file changed while reading)")
    return view


@dataclass(frozen=True)
class ShardPlan:
    url: str               # the array's folder (local path or fsspec URL)
    shape: tuple           # (N, *sample)
    per_shard: int         # samples per zarr shard (S)
    dtype: np.dtype
    blosc: bool            # inner chunks Blosc-compressed (else raw little-endian bytes)
    fill: object

    def shard_url(self, k: int) -> str:
        return f"{self.url}/c/{k}" + "/0" * (len(self.shape) - 1)


def plan(url: str, meta: dict) -> ShardPlan | None:
    """meta: the array's zarr.json as a dict. A ShardPlan when it is eofm's sharded layout (see
    the module docstring), else None (read through zarr)."""
    try:
        shape, outer = list(meta["shape"]), list(meta["chunk_grid"]["configuration"]["chunk_shape"])
        enc = meta["chunk_key_encoding"]
        (shard,) = meta["codecs"]
        cfg = shard["configuration"]
        inner, codecs, index = list(cfg["chunk_shape"]), list(cfg["codecs"]), list(cfg["index_codecs"])
    except (KeyError, TypeError, ValueError):
        return None
    if (meta.get("zarr_format") != 3 or meta["chunk_grid"].get("name") != "regular"
            or enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/"
            or shard.get("name") != "sharding_indexed" or cfg.get("index_location", "end") != "end"
            or meta.get("storage_transformers") or len(shape) < 2
            or inner != [1, *shape[1:]] or outer[1:] != shape[1:]
            or [c.get("name") for c in index] != ["bytes", "crc32c"]
            or index[0].get("configuration", {}).get("endian", "little") != "little"):
        return None
    names = [c.get("name") for c in codecs]
    if names not in (["bytes"], ["bytes", "blosc"]):
        return None
    if codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    try:
        dtype = np.dtype(str(meta["data_type"])).newbyteorder("<")
    except TypeError:
        return None
    if dtype.kind not in "biuf":
        return None
    return ShardPlan(url.rstrip("/"), tuple(shape), int(outer[0]), dtype, names == ["bytes", "blosc"],
                     meta.get("fill_value", 0))


def _fs_path(url: str, fs: fsspec.AbstractFileSystem | None) -> tuple[fsspec.AbstractFileSystem, str]:
    if fs is None:
        return fsspec.core.url_to_fs(url)
    return fs, fs._strip_protocol(url)


def _table(p: ShardPlan, url: str, tail) -> np.ndarray:
    """The (S, 2) (offset, nbytes) table from a shard's last 16*S + 4 bytes, crc32c checked."""
    size = 16 * p.per_shard
    if len(tail) < size + 4:
        raise ValueError(f"{url}: zarr shard of {len(tail)} bytes is shorter than its index ({size + 4} bytes)")
    index = bytes(tail[len(tail) - size - 4:len(tail) - 4])
    if google_crc32c.value(index) != int.from_bytes(tail[-4:], "little"):
        raise ValueError(f"{url}: zarr shard index fails its crc32c check (damaged file)")
    return np.frombuffer(index, "<u8").reshape(p.per_shard, 2)


def _decode(p: ShardPlan, url: str, i: int, chunk) -> np.ndarray:
    """Inner chunk i's bytes -> one sample (p.shape[1:]) in its own memory."""
    sample = p.shape[1:]
    nbytes = math.prod(sample) * p.dtype.itemsize
    arr = np.empty(sample, p.dtype)
    if p.blosc:
        if len(chunk) < 16 or int.from_bytes(chunk[4:8], "little") != nbytes:
            raise ValueError(f"{url}: chunk {i} is not a Blosc frame of one sample ({nbytes} bytes)")
        try:
            numcodecs.blosc.decompress(chunk, arr)
        except RuntimeError as err:
            raise ValueError(f"{url}: chunk {i} does not decompress: {err}") from None
    elif len(chunk) != nbytes:
        raise ValueError(f"{url}: chunk {i} holds {len(chunk)} bytes, a sample needs {nbytes}")
    else:
        arr[...] = np.frombuffer(chunk, p.dtype).reshape(sample)
    return arr


def _is_empty(off: int, n: int) -> bool:
    return off == EMPTY and n == EMPTY


def read_shard(p: ShardPlan, k: int, fs: fsspec.AbstractFileSystem | None = None) -> list[np.ndarray]:
    """The samples of zarr shard k: a list of arrays of shape p.shape[1:], each its own memory.
    Raises ValueError naming the file when the shard is damaged."""
    url = p.shard_url(k)
    count = min(p.per_shard, p.shape[0] - k * p.per_shard)
    fs, path = _fs_path(url, fs)
    try:
        data = _read(fs, path)
    except FileNotFoundError:           # a shard never written holds fill values only
        return [np.full(p.shape[1:], p.fill, p.dtype) for _ in range(count)]
    table = _table(p, url, data)
    end = len(data) - 16 * p.per_shard - 4
    out = []
    for i in range(count):
        off, n = int(table[i, 0]), int(table[i, 1])
        if _is_empty(off, n):
            out.append(np.full(p.shape[1:], p.fill, p.dtype))
            continue
        if off + n > end:
            raise ValueError(f"{url}: zarr shard index points past the chunk data (chunk {i})")
        out.append(_decode(p, url, i, data[off:off + n]))
    return out


class SampleReader:
    """Random access to single samples of one sharded array: two range reads for the first sample
    of a zarr shard (its index, then the chunk), one for the next ones (indexes are cached)."""

    def __init__(self, p: ShardPlan, fs: fsspec.AbstractFileSystem | None = None):
        self.plan = p
        self.fs = fs if fs is not None else fsspec.core.url_to_fs(p.url)[0]
        self._tables: dict[int, np.ndarray | None] = {}

    def _shard(self, k: int) -> tuple[str, np.ndarray | None]:
        url = self.plan.shard_url(k)
        if k not in self._tables:
            try:
                tail = self.fs.cat_file(self.fs._strip_protocol(url), start=-(16 * self.plan.per_shard + 4))
            except FileNotFoundError:
                self._tables[k] = None
            else:
                self._tables[k] = _table(self.plan, url, tail)
        return url, self._tables[k]

    def read(self, index: int) -> np.ndarray:
        """Sample `index` (0 <= index < N): an array of shape plan.shape[1:] in its own memory."""
        p = self.plan
        if not 0 <= index < p.shape[0]:
            raise IndexError(f"{p.url}: sample index {index} out of range for {p.shape[0]} samples")
        k, i = divmod(index, p.per_shard)
        url, table = self._shard(k)
        off, n = (EMPTY, EMPTY) if table is None else (int(table[i, 0]), int(table[i, 1]))
        if _is_empty(off, n):
            return np.full(p.shape[1:], p.fill, p.dtype)
        chunk = self.fs.cat_file(self.fs._strip_protocol(url), start=off, end=off + n)
        if len(chunk) != n:
            raise ValueError(f"{url}: zarr shard index points past the chunk data (chunk {i})")
        return _decode(p, url, i, chunk)


@dataclass(frozen=True)
class StringPlan:
    url: str
    n: int
    per_chunk: int
    blosc: bool

    def chunk_url(self, j: int) -> str:
        return f"{self.url}/c/{j}"


def plan_strings(url: str, meta: dict) -> StringPlan | None:
    """A 1-D UTF-8 string array stored unsharded with codecs vlen-utf8 (+ blosc), as eofm
    writes `meta` and `key`; None otherwise (read through zarr)."""
    try:
        (n,), (s,) = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        names = [c.get("name") for c in meta["codecs"]]
        enc = meta["chunk_key_encoding"]
    except (KeyError, TypeError, ValueError):
        return None
    if (meta.get("zarr_format") != 3 or str(meta.get("data_type")) != "string"
            or meta["chunk_grid"].get("name") != "regular" or meta.get("storage_transformers")
            or enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/"
            or names not in (["vlen-utf8"], ["vlen-utf8", "blosc"])):
        return None
    return StringPlan(url.rstrip("/"), int(n), int(s), names == ["vlen-utf8", "blosc"])


def read_strings(p: StringPlan, j: int, fs: fsspec.AbstractFileSystem | None = None) -> list[str]:
    """The strings of chunk j (per_chunk of them; zarr pads the last chunk with "")."""
    url = p.chunk_url(j)
    fs, path = _fs_path(url, fs)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError:
        return [""] * p.per_chunk
    try:
        if p.blosc:
            data = numcodecs.blosc.decompress(data)
        out = list(_VLEN.decode(data))
    except (RuntimeError, ValueError, IndexError) as err:
        raise ValueError(f"{url}: string chunk does not decode: {err}") from None
    if len(out) != p.per_chunk:
        raise ValueError(f"{url}: string chunk holds {len(out)} items, expected {p.per_chunk}")
    return out

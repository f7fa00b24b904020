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
import numcodecs.blosc
import numpy as np
from fsspec.implementations.local import LocalFileSystem

EMPTY = 2**64 - 1


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


def read_shard(p: ShardPlan, k: int, fs: fsspec.AbstractFileSystem | None = None) -> list[np.ndarray]:
    """The samples of zarr shard k: a list of arrays of shape p.shape[1:], each its own memory.
    Raises ValueError naming the file when the shard index is damaged."""
    url = p.shard_url(k)
    count = min(p.per_shard, p.shape[0] - k * p.per_shard)
    sample = p.shape[1:]
    if fs is None:
        fs, path = fsspec.core.url_to_fs(url)
    else:
        path = fs._strip_protocol(url)
    try:
        data = _read(fs, path)
    except FileNotFoundError:           # a shard never written holds fill values only
        return [np.full(sample, p.fill, p.dtype) for _ in range(count)]
    size = 16 * p.per_shard
    if len(data) < size + 4:
        raise ValueError(f"{url}: zarr shard of {len(data)} bytes is shorter than its index ({size + 4} bytes)")
    index = bytes(data[len(data) - size - 4:len(data) - 4])    # 16*S bytes
    crc = int.from_bytes(data[-4:], "little")
    if google_crc32c.value(index) != crc:
        raise ValueError(f"{url}: zarr shard index fails its crc32c check (damaged file)")
    table = np.frombuffer(index, "<u8").reshape(p.per_shard, 2)
    nbytes = math.prod(sample) * p.dtype.itemsize
    view = data
    out = []
    for i in range(count):
        off, n = int(table[i, 0]), int(table[i, 1])
        if off == EMPTY and n == EMPTY:
            out.append(np.full(sample, p.fill, p.dtype))
            continue
        if off + n > len(data) - size - 4:
            raise ValueError(f"{url}: zarr shard index points past the chunk data (chunk {i})")
        arr = np.empty(sample, p.dtype)
        chunk = view[off:off + n]
        if p.blosc:
            if n < 16 or int.from_bytes(chunk[4:8], "little") != nbytes:
                raise ValueError(f"{url}: chunk {i} is not a Blosc frame of one sample ({nbytes} bytes)")
            try:
                numcodecs.blosc.decompress(chunk, arr)
            except RuntimeError as err:
                raise ValueError(f"{url}: chunk {i} does not decompress: {err}") from None
        elif n != nbytes:
            raise ValueError(f"{url}: chunk {i} holds {n} bytes, a sample needs {nbytes}")
        else:
            arr[...] = np.frombuffer(chunk, p.dtype).reshape(sample)
        out.append(arr)
    return out

"""WebDataset tar shards, written atomically, with per-product rollback.

A shard is built under a temporary name and only appears under its final name (local path or
any fsspec URL) once complete, so a crash never leaves a partial shard: locally it is built in
`<out>/.tmp/` and renamed; for remote outputs it is built in a local temp file, uploaded to
`<final>.part` and moved. A product's samples are added between `begin()` and `commit()`; if
the product fails half-way, `rollback()` truncates the open shard back to where that product
started. Shards are sealed only between products, once they reach the target size: a shard is
at least the target and at most the target plus one product. Tar headers have fixed owner and
mtime so the same input gives byte-identical shards (and the same sha256) on every run and node.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile

import fsspec

from data_prep import sample as sample_mod
from data_prep.writers.base import ShardLifecycle

BLOCK = 512
TMP_DIR = ".tmp"


def _write_member(f, digest, name: str, parts: list) -> None:
    """Header, payload buffers and padding written (and hashed) one by one: no copy of a
    multi-MB payload."""
    size = sum(len(p) for p in parts)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    for part in (info.tobuf(format=tarfile.USTAR_FORMAT), *parts, b"\0" * ((-size) % BLOCK)):
        f.write(part)
        digest.update(part)


def is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


class ShardWriter(ShardLifecycle):
    FORMAT = "webdataset"

    def __init__(self, out_url: str, prefix: str, target_bytes: int, start_index: int = 0):
        self.fs, self.root = fsspec.core.url_to_fs(out_url)
        self.local = is_local(self.fs)
        self.prefix = prefix
        self.target = int(target_bytes)
        self.index = start_index
        self.records: list[dict] = []
        self._file = None
        self._keys: list[str] = []
        self._mark = (0, 0)

    # ---- product transaction -------------------------------------------------------
    def begin(self) -> None:
        if self._file is None:
            if self.local:
                tmp_dir = f"{self.root}/{TMP_DIR}"
                os.makedirs(tmp_dir, exist_ok=True)
                fd, self._tmp = tempfile.mkstemp(prefix=f"{self.prefix}-", suffix=".tar.part", dir=tmp_dir)
            else:
                fd, self._tmp = tempfile.mkstemp(prefix="eofm-shard-", suffix=".tar.part")
            self._file = os.fdopen(fd, "w+b")
            self._keys = []
            self._digest = hashlib.sha256()
        # hashing as we write avoids reading the shard back; a copy of the hash state is the
        # rollback point, like the file offset
        self._mark = (self._file.tell(), len(self._keys), self._digest.copy())

    def add(self, sample: dict) -> None:
        key = sample["key"]
        for ext, parts in sample_mod.encode_parts(sample).items():
            _write_member(self._file, self._digest, f"{key}.{ext}", parts)
        self._keys.append(key)

    def rollback(self) -> None:
        pos, count, digest = self._mark
        self._file.seek(pos)
        self._file.truncate()
        del self._keys[count:]
        self._digest = digest.copy()

    def _is_open(self) -> bool:
        return self._file is not None

    def _size(self) -> int:
        return self._file.tell()

    # ---- internals -------------------------------------------------------------------
    def _discard(self) -> None:
        self._file.close()
        os.unlink(self._tmp)
        self._file = None

    def _seal(self) -> dict:
        end = b"\0" * (2 * BLOCK)
        self._file.write(end)
        self._digest.update(end)
        digest = self._digest
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell()
        self._file.close()
        self._file = None
        rel = f"shards/{self.prefix}-{self.index:06d}.tar"
        final = f"{self.root}/{rel}"
        self.fs.makedirs(f"{self.root}/shards", exist_ok=True)
        if self.local:
            os.replace(self._tmp, final)        # same filesystem: atomic
        else:
            self.fs.put_file(self._tmp, final + ".part")
            self.fs.mv(final + ".part", final)  # readers never see a partial shard
            os.unlink(self._tmp)
        record = {"path": rel, "format": self.FORMAT, "samples": len(self._keys), "bytes": size,
                  "sha256": digest.hexdigest(), "keys": list(self._keys)}
        self.records.append(record)
        self.index += 1
        return record

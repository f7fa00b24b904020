"""WebDataset tar shards, written atomically, with per-product rollback.

A shard is built in a local temporary file and only appears under its final name (local
path or any fsspec URL) once complete, so a crash never leaves a partial shard. A product's
samples are added between `begin()` and `commit()`; if the product fails half-way,
`rollback()` truncates the open shard back to where that product started. Shards are sealed
only between products, once they reach the target size: a shard is at least the target and
at most the target plus one product. Tar headers have fixed owner and mtime so the same
input gives byte-identical shards (and the same sha256) on every run and node.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile

import fsspec

from data_prep import sample as sample_mod

BLOCK = 512


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    pad = (-len(data)) % BLOCK
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * pad


class ShardWriter:
    def __init__(self, out_url: str, prefix: str, target_bytes: int, start_index: int = 0):
        self.fs, self.root = fsspec.core.url_to_fs(out_url)
        self.prefix = prefix
        self.target = int(target_bytes)
        self.index = start_index
        self.records: list[dict] = []
        self._file = None
        self._count = 0
        self._mark = (0, 0)

    # ---- product transaction -------------------------------------------------------
    def begin(self) -> None:
        if self._file is None:
            fd, self._tmp = tempfile.mkstemp(prefix="eofm-shard-", suffix=".tar.tmp")
            self._file = os.fdopen(fd, "w+b")
            self._count = 0
        self._mark = (self._file.tell(), self._count)

    def add(self, sample: dict) -> None:
        files = sample_mod.encode(sample)
        key = sample["key"]
        for ext, data in files.items():
            self._file.write(_member(f"{key}.{ext}", data))
        self._count += 1

    def rollback(self) -> None:
        pos, count = self._mark
        self._file.seek(pos)
        self._file.truncate()
        self._count = count

    def commit(self) -> None:
        if self._file is not None and self._file.tell() >= self.target:
            self._seal()

    def close(self) -> list[dict]:
        """Seal the last shard (if it holds samples); returns all shard records."""
        if self._file is not None:
            if self._count:
                self._seal()
            else:
                self._discard()
        return self.records

    def abort(self) -> None:
        if self._file is not None:
            self._discard()

    # ---- internals -------------------------------------------------------------------
    def _discard(self) -> None:
        self._file.close()
        os.unlink(self._tmp)
        self._file = None

    def _seal(self) -> None:
        self._file.write(b"\0" * (2 * BLOCK))
        self._file.flush()
        os.fsync(self._file.fileno())
        size = self._file.tell()
        self._file.seek(0)
        digest = hashlib.sha256()
        for chunk in iter(lambda: self._file.read(1 << 20), b""):
            digest.update(chunk)
        self._file.close()
        self._file = None
        rel = f"shards/{self.prefix}-{self.index:06d}.tar"
        final = f"{self.root}/{rel}"
        part = final + ".part"
        self.fs.makedirs(f"{self.root}/shards", exist_ok=True)
        self.fs.put_file(self._tmp, part)
        self.fs.mv(part, final)            # rename: readers never see a partial shard
        os.unlink(self._tmp)
        self.records.append({"path": rel, "samples": self._count, "bytes": size, "sha256": digest.hexdigest()})
        self.index += 1

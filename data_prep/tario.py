"""Reading WebDataset tar shards: group members by key (the name up to the first dot)."""
from __future__ import annotations

import tarfile
from typing import IO, Iterator

BUFSIZE = 256 << 10   # measured: 10 KB (default) 0.68 ms, 256 KB 0.36 ms, 4 MB 2.97 ms per 1.6 MB sample


def iter_tar_samples(fileobj: IO[bytes], name: str = "shard") -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) for consecutive members sharing a key."""
    key, files = None, {}
    try:
        # a larger stream buffer: the default (10 KB) turns one multi-MB payload into hundreds of reads,
        # a much larger one is re-sliced (copied) on every read
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=BUFSIZE) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                k, _, ext = base.partition(".")
                if k != key and files:
                    yield key, files
                    files = {}
                key = k
                files[ext] = tar.extractfile(member).read()
    except tarfile.TarError as err:
        raise ValueError(f"{name}: not a readable tar shard: {err}") from None
    if files:
        yield key, files

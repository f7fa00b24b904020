"""Reading WebDataset tar shards: group members by key (the name up to the first dot)."""
from __future__ import annotations

import tarfile
from typing import IO, Iterator


def iter_tar_samples(fileobj: IO[bytes], name: str = "shard") -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) for consecutive members sharing a key."""
    key, files = None, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
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

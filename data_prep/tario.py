"""Reading WebDataset tar shards: group members by key (the name up to the first dot).

A small streaming tar reader instead of `tarfile`: shards are read millions of times in
training, and `tarfile`'s per-member machinery (TarInfo objects, a stream re-sliced on every
read) cost ~0.4 ms per sample, about a third of a loader worker's time for 12-band 128 px chips.
It reads each 512-byte header, checks its checksum, and reads each payload with one
`readinto` into a fresh bytearray (writable, so `np.frombuffer` views of it need no copy).
It understands ustar/POSIX members, PAX extended headers (`path`, `size`) and GNU long names;
other entry types (directories, links, devices) are skipped.
"""
from __future__ import annotations

from typing import IO, Iterator

BLOCK = 512
_FILE_TYPES = (b"0", b"\0", b"7")


class TarFormatError(ValueError):
    """A shard is not a readable tar stream; the message names the shard and the offset."""


def _number(field: bytes, name: str, offset: int) -> int:
    if field[:1] in (b"\x80", b"\xff"):                      # GNU base-256 for large sizes
        n = int.from_bytes(field[1:], "big")
        return -n if field[:1] == b"\xff" else n
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"{name}: bad number {field!r} in the tar header at byte {offset}") from None


def _read_exact(f: IO[bytes], size: int, name: str, offset: int) -> bytearray:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = f.readinto(view[got:]) if hasattr(f, "readinto") else None
        if n is None:                                         # streams without readinto
            chunk = f.read(size - got)
            n = len(chunk)
            view[got:got + n] = chunk
        if not n:
            raise TarFormatError(f"{name}: truncated tar: member at byte {offset} needs {size} bytes, "
                                 f"the stream ends after {got}")
        got += n
    return buf


def _pax(data: bytes) -> dict[str, str]:
    """PAX records 'LEN key=value\\n' -> dict."""
    out, i = {}, 0
    while i < len(data):
        space = data.index(b" ", i)
        length = int(data[i:space])
        key, _, value = data[space + 1:i + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        i += length
    return out


def iter_members(f: IO[bytes], name: str = "shard") -> Iterator[tuple[str, bytearray]]:
    """Yield (member name, payload) for every regular file of a tar stream, in order."""
    offset, long_name, pax = 0, None, {}
    while True:
        header = f.read(BLOCK)
        if not header or header == bytes(BLOCK):              # end of archive (or of the stream)
            return
        if len(header) < BLOCK:
            raise TarFormatError(f"{name}: truncated tar header at byte {offset}")
        stored = _number(header[148:156], name, offset)
        if stored != sum(header[:148]) + 256 + sum(header[156:]):      # chksum field counted as spaces
            raise TarFormatError(f"{name}: tar header checksum mismatch at byte {offset} (corrupt shard?)")
        kind = header[156:157]
        size = _number(header[124:136], name, offset)
        if "size" in pax:
            size = int(pax["size"])
        payload = _read_exact(f, size, name, offset) if size else bytearray()
        pad = -size % BLOCK
        if pad and len(f.read(pad)) != pad:
            raise TarFormatError(f"{name}: truncated tar: padding of the member at byte {offset} is missing")
        offset += BLOCK + size + pad
        if kind == b"L":                                      # GNU long name for the next member
            long_name = bytes(payload).rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind in (b"x", b"g"):                              # PAX extended header for the next member
            if kind == b"x":
                pax = _pax(bytes(payload))
            continue
        if kind in _FILE_TYPES:
            if long_name is not None:
                member = long_name
            elif "path" in pax:
                member = pax["path"]
            else:
                base = header[:100].split(b"\0", 1)[0]
                prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
                member = (prefix + b"/" + base if prefix else base).decode("utf-8", "surrogateescape")
            yield member, payload
        long_name, pax = None, {}


def iter_tar_samples(fileobj: IO[bytes], name: str = "shard") -> Iterator[tuple[str, dict[str, bytearray]]]:
    """Yield (key, {extension: payload}) for consecutive members sharing a key."""
    key, files = None, {}
    for member, payload in iter_members(fileobj, name):
        base = member.rsplit("/", 1)[-1]
        k, _, ext = base.partition(".")
        if k != key and files:
            yield key, files
            files = {}
        key = k
        files[ext] = payload
    if files:
        yield key, files

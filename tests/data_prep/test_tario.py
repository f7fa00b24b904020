"""The streaming tar reader: formats written by other tools, and clear errors for bad shards."""
import io
import tarfile

import pytest

from data_prep.tario import TarFormatError, iter_members, iter_tar_samples


def _tar(members: dict, fmt=tarfile.USTAR_FORMAT, extra_dir=False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if extra_dir:
            info = tarfile.TarInfo("d")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_what_tarfile_writes(fmt):
    # longer than the 100-byte name field: a GNU long name or PAX path; ustar uses its prefix field
    long = ("p" * 120 if fmt == tarfile.USTAR_FORMAT else "x" * 150 + "/deep") + "/a.image.npy"
    members = {"a.json": b"{}", long: b"\x01" * 1000, "b.json": b"", "b.valid.npy": bytes(513)}
    got = list(iter_members(io.BytesIO(_tar(members, fmt, extra_dir=True))))
    assert [n for n, _ in got] == list(members) and [bytes(d) for _, d in got] == list(members.values())
    samples = list(iter_tar_samples(io.BytesIO(_tar(members, fmt))))
    assert [k for k, _ in samples] == ["a", "b"] and set(samples[1][1]) == {"json", "valid.npy"}


def test_payloads_are_writable_buffers():
    (_, data), = iter_members(io.BytesIO(_tar({"a.bin": b"abc"})))
    assert isinstance(data, bytearray)


def test_corrupt_header_is_named():
    raw = bytearray(_tar({"a.json": b"{}", "b.json": b"[]"}))
    raw[1024 + 10] ^= 0xFF                      # inside the second member's name
    with pytest.raises(TarFormatError, match=r"shard7: tar header checksum mismatch at byte 1024"):
        list(iter_members(io.BytesIO(bytes(raw)), "shard7"))


def test_truncated_shard_is_named():
    raw = _tar({"a.json": b"{}", "b.image.npy": b"z" * 4000})
    with pytest.raises(TarFormatError, match=r"s\.tar: truncated tar"):
        list(iter_members(io.BytesIO(raw[:1024 + 2000]), "s.tar"))


def test_not_a_tar_is_named():
    with pytest.raises(TarFormatError, match="s.tar"):
        list(iter_members(io.BytesIO(b"hello world" * 100), "s.tar"))

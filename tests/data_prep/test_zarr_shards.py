"""The direct reader of eofm's sharded zarr arrays against zarr-python reading the same files."""
import json
import shutil

import numpy as np
import pytest
import zarr

from data_prep import zarr_shards
from data_prep.writers.zarr_store import ZarrShardWriter
from data_prep.zarr_io import iter_zarr_raw
from tests.data_prep.test_zarr_store import _sar, _write


def _plan(group_dir, name):
    return zarr_shards.plan(str(group_dir / name), json.loads((group_dir / name / "zarr.json").read_text()))


def _all(p, n_shards):
    return [a for k in range(n_shards) for a in zarr_shards.read_shard(p, k)]


@pytest.mark.parametrize("compression", [None, "zstd", "none"])
def test_reads_what_zarr_reads_for_every_writer_layout(tmp_path, compression):
    kwargs = {"compression": compression} if compression else {}
    w = ZarrShardWriter(str(tmp_path), "x", 10**9, samples_per_shard=4, **kwargs)
    rec = _write(w, [[_sar(f"k{i}", i) for i in range(10)]])[0]      # shards of 4, 4, 2 samples
    base = tmp_path / rec["path"]
    g = zarr.open_group(str(base), mode="r")
    for name in ("image", "valid"):
        p = _plan(base, name)
        assert p is not None and p.per_shard == 4 and p.blosc == (compression != "none")
        got = _all(p, 3)
        assert len(got) == 10
        want = g[name][:]
        for i, a in enumerate(got):
            assert a.dtype == want.dtype and a.shape == want.shape[1:]
            np.testing.assert_array_equal(a, want[i])
            assert a.flags.owndata                     # each sample owns its memory (shuffle buffers keep it)
    # the stream goes through the direct reader and yields the same as zarr's own slicing
    for i, (key, image, valid, meta) in enumerate(iter_zarr_raw(str(tmp_path), rec["path"])):
        assert key == f"k{i}"
        np.testing.assert_array_equal(image, g["image"][i])
        np.testing.assert_array_equal(valid, g["valid"][i])


def _array(path, **kw):
    data = np.arange(6 * 2 * 3 * 3, dtype=np.int16).reshape(6, 2, 3, 3)
    kw.setdefault("compressors", [zarr.codecs.BloscCodec(cname="lz4", shuffle="shuffle")])   # as eofm writes
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, fill_value=0, **kw)
    arr[:] = data
    return arr


@pytest.mark.parametrize("kw", [
    {"chunks": (2, 2, 3, 3)},                                         # no sharding
    {"chunks": (2, 2, 3, 3), "shards": (4, 2, 3, 3)},                 # inner chunks of two samples
    {"chunks": (1, 2, 3, 3), "shards": (2, 2, 3, 3),
     "compressors": [zarr.codecs.ZstdCodec()]},                       # a codec other than blosc
    {"chunks": (1, 1, 3, 3), "shards": (2, 2, 3, 3)},                 # sample split across chunks
])
def test_other_layouts_are_left_to_zarr(tmp_path, kw):
    arr = _array(tmp_path / "a", **kw)
    assert zarr_shards.plan(str(tmp_path / "a"), arr.metadata.to_dict()) is None


def test_our_layout_from_zarr_metadata_or_the_json_file(tmp_path):
    arr = _array(tmp_path / "a", chunks=(1, 2, 3, 3), shards=(4, 2, 3, 3))
    from_meta = zarr_shards.plan(str(tmp_path / "a"), arr.metadata.to_dict())
    from_file = zarr_shards.plan(str(tmp_path / "a"), json.loads((tmp_path / "a" / "zarr.json").read_text()))
    assert from_meta == from_file and from_meta.per_shard == 4
    np.testing.assert_array_equal(np.stack(_all(from_meta, 2)), arr[:])


def test_a_missing_shard_reads_as_fill_values_like_zarr(tmp_path):
    arr = _array(tmp_path / "a", chunks=(1, 2, 3, 3), shards=(4, 2, 3, 3))
    shutil.rmtree(tmp_path / "a" / "c" / "1")
    p = zarr_shards.plan(str(tmp_path / "a"), arr.metadata.to_dict())
    np.testing.assert_array_equal(np.stack(_all(p, 2)), zarr.open_array(str(tmp_path / "a"), mode="r")[:])
    assert not np.stack(_all(p, 2))[4:].any()


def _shard_file(tmp_path):
    arr = _array(tmp_path / "a", chunks=(1, 2, 3, 3), shards=(4, 2, 3, 3))
    p = zarr_shards.plan(str(tmp_path / "a"), arr.metadata.to_dict())
    return p, tmp_path / "a" / "c" / "0" / "0" / "0" / "0"


def test_a_damaged_index_is_named(tmp_path):
    p, f = _shard_file(tmp_path)
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF                                # inside the 16*S-byte index
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"c/0/0/0/0: zarr shard index fails its crc32c"):
        zarr_shards.read_shard(p, 0)


def test_a_truncated_shard_is_named(tmp_path):
    p, f = _shard_file(tmp_path)
    f.write_bytes(f.read_bytes()[:30])
    with pytest.raises(ValueError, match=r"c/0/0/0/0: zarr shard of 30 bytes is shorter than its index"):
        zarr_shards.read_shard(p, 0)


def test_a_damaged_chunk_is_named(tmp_path):
    p, f = _shard_file(tmp_path)
    data = bytearray(f.read_bytes())
    table = np.frombuffer(bytes(data[-(16 * 4 + 4):-4]), "<u8").reshape(4, 2)
    off = int(table[1, 0])
    data[off + 4:off + 8] = (12345).to_bytes(4, "little")     # the Blosc header's uncompressed size
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"c/0/0/0/0: chunk 1 is not a Blosc frame of one sample"):
        zarr_shards.read_shard(p, 0)

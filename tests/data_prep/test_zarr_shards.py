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


def test_single_sample_reads_match_zarr_including_fill_and_partial_shards(tmp_path):
    arr = _array(tmp_path / "a", chunks=(1, 2, 3, 3), shards=(4, 2, 3, 3))       # shards of 4, 2 samples
    arr[1] = 0                                       # all fill: zarr may leave the inner chunk out
    want = zarr.open_array(str(tmp_path / "a"), mode="r")[:]
    reader = zarr_shards.SampleReader(zarr_shards.plan(str(tmp_path / "a"), arr.metadata.to_dict()))
    for i in (5, 0, 3, 1, 4, 2):                     # any order; shard indexes are read once and kept
        np.testing.assert_array_equal(reader.read(i), want[i])
    assert sorted(reader._tables) == [0, 1]
    with pytest.raises(IndexError, match="sample index 6 out of range for 6 samples"):
        reader.read(6)
    shutil.rmtree(tmp_path / "a" / "c" / "1")        # a missing shard reads as fill values
    fresh = zarr_shards.SampleReader(reader.plan)
    assert not fresh.read(5).any()


def test_string_chunks_match_zarr_and_other_string_layouts_are_left_to_it(tmp_path):
    w = ZarrShardWriter(str(tmp_path), "x", 10**9, samples_per_shard=4)
    rec = _write(w, [[_sar(f"k{i}", i) for i in range(10)]])[0]
    base = tmp_path / rec["path"]
    g = zarr.open_group(str(base), mode="r")
    for name in ("meta", "key"):
        p = zarr_shards.plan_strings(str(base / name), g[name].metadata.to_dict())
        assert p is not None and p.per_chunk == 4
        got = [s for j in range(3) for s in zarr_shards.read_strings(p, j)][:10]
        assert got == [str(x) for x in g[name][:]]
    other = zarr.create_array(str(tmp_path / "s"), shape=(4,), dtype=str, chunks=(2,), compressors=[zarr.codecs.ZstdCodec()])
    assert zarr_shards.plan_strings(str(tmp_path / "s"), other.metadata.to_dict()) is None
    p = zarr_shards.plan_strings(str(base / "meta"), g["meta"].metadata.to_dict())
    (base / "meta" / "c" / "1").write_bytes(b"not a blosc frame")
    with pytest.raises(ValueError, match=r"meta/c/1: string chunk does not decode"):
        zarr_shards.read_strings(p, 1)


def test_random_access_reader_gives_the_streamed_samples(tmp_path):
    from data_prep.zarr_io import ShardReader, iter_zarr_shard
    w = ZarrShardWriter(str(tmp_path), "x", 10**9, samples_per_shard=4)
    rec = _write(w, [[_sar(f"k{i}", i) for i in range(10)]])[0]
    streamed = dict(iter_zarr_shard(str(tmp_path), rec["path"]))
    reader = ShardReader(str(tmp_path), rec["path"])
    for i in (9, 0, 5, 4, -1):
        s = reader.sample(i)
        want = streamed[s["key"]]
        assert s["key"] == f"k{i % 10}" and s.keys() == want.keys()
        for k in s:
            if isinstance(s[k], np.ndarray):
                np.testing.assert_array_equal(s[k], want[k])
            else:
                assert s[k] == want[k]
    with pytest.raises(IndexError, match="sample index 10 out of range for 10 samples"):
        reader.sample(10)

import hashlib
import tarfile

import numpy as np
import pytest

from data_prep.sample import SampleError, decode, encode
from data_prep.tario import iter_tar_samples
from data_prep.writers.webdataset import ShardWriter


def _sample(key, fill=1):
    return {"key": key, "image": np.full((1, 2, 4, 4), fill, np.uint16), "valid": np.ones((1, 4, 4), bool),
            "sensor": "s", "bands": ["a", "b"], "wavelengths_nm": [500.0, 600.0], "gsd_m": 10.0,
            "times": ["2020-01-01T00:00:00Z"], "lonlat": [1.0, 2.0], "crs": "EPSG:32633",
            "transform": [10, 0, 0, 0, -10, 0], "product_ids": ["p"], "scale": [1e-4, 1e-4],
            "offset": [0.0, 0.0], "units": "surface reflectance", "dtype": "uint16"}


def test_encode_decode_round_trip():
    s = _sample("k1", 7)
    back = decode(encode(s), "k1")
    np.testing.assert_array_equal(back["image"], s["image"])
    assert back["bands"] == ["a", "b"] and back["key"] == "k1"


def test_contract_violations_are_named():
    s = _sample("bad")
    s["image"] = s["image"].astype(np.float32)
    with pytest.raises(SampleError, match="stored as integers"):
        encode(s)
    s = _sample("bad")
    s["wavelengths_nm"] = [1.0]
    with pytest.raises(SampleError, match="wavelengths_nm has 1 entries for 2 bands"):
        encode(s)


def test_rollback_drops_a_failed_product_and_shards_are_atomic(tmp_path):
    w = ShardWriter(str(tmp_path), "x", target_bytes=1)   # seal after every product
    w.begin(); w.add(_sample("a")); w.commit()
    w.begin(); w.add(_sample("b")); w.add(_sample("c")); w.rollback()    # product failed half-way
    w.begin(); w.add(_sample("d")); w.commit()
    w.close()
    records = w.records
    assert [r["keys"] for r in records] == [["a"], ["d"]] and {r["format"] for r in records} == {"webdataset"}
    assert [r["samples"] for r in records] == [1, 1]
    keys = []
    for r in records:
        path = tmp_path / r["path"]
        assert path.stat().st_size == r["bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == r["sha256"]
        with open(path, "rb") as f:
            keys += [k for k, _ in iter_tar_samples(f)]
        assert tarfile.is_tarfile(path)
    assert keys == ["a", "d"]
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and (p.name.endswith(".part") or p.parent.name == ".tmp")]
    assert not leftovers


def test_same_samples_give_byte_identical_shards(tmp_path):
    digests = []
    for run in ("one", "two"):
        w = ShardWriter(str(tmp_path / run), "x", target_bytes=10**9)
        w.begin(); w.add(_sample("a")); w.add(_sample("b", 3)); w.commit()
        digests.append(w.close()[0]["sha256"])   # close() returns the records it sealed
    assert digests[0] == digests[1]


def test_fsspec_memory_url():
    w = ShardWriter("memory://eofm-test-writer", "x", target_bytes=1)
    w.begin(); w.add(_sample("a"))
    assert len(w.commit()) == 1 and w.close() == []       # sealed by commit (target reached)
    rec = w.records[0]
    import fsspec
    with fsspec.open(f"memory://eofm-test-writer/{rec['path']}", "rb") as f:
        assert [k for k, _ in iter_tar_samples(f)] == ["a"]

"""Zarr v3 shard writer: round trip, equality with the tar form, transactions, layout, atomicity."""
import json
import os

import fsspec
import numpy as np
import pytest
import zarr

from data_prep import manifest
from data_prep.sample import decode
from data_prep.stats import DatasetStats
from data_prep.tario import iter_tar_samples
from data_prep.verify import verify
from data_prep.writers import WRITERS
from data_prep.writers.webdataset import ShardWriter
from data_prep.writers.zarr_store import ZarrShardWriter, shard_samples
from data_prep.zarr_io import iter_zarr_shard, read_zarr_sample


def _s2(key, seed, t=1, c=12, hw=32):
    rng = np.random.default_rng(seed)
    return {"key": key, "image": rng.integers(0, 10000, (t, c, hw, hw), dtype=np.uint16),
            "valid": rng.random((t, hw, hw)) > 0.1, "sensor": "sentinel2_l2a",
            "bands": [f"B{i:02d}" for i in range(c)], "wavelengths_nm": [443.0 + 50 * i for i in range(c)],
            "gsd_m": 10.0, "times": [f"2020-01-{d + 1:02d}T10:00:00Z" for d in range(t)],
            "lonlat": [12.5, 41.9], "crs": "EPSG:32633", "transform": [10.0, 0.0, 300000.0, 0.0, -10.0, 4600000.0],
            "product_ids": [f"S2A_{seed}_{d}" for d in range(t)], "scale": [1e-4] * c, "offset": [-0.1] * c,
            "units": "surface reflectance", "dtype": "uint16", "note": "é ünïcode"}


def _sar(key, seed):
    """T=3 int16 series (S1-like dB * 100, negative values)."""
    rng = np.random.default_rng(seed)
    return {"key": key, "image": rng.integers(-3000, 500, (3, 2, 16, 16), dtype=np.int16),
            "valid": rng.random((3, 16, 16)) > 0.2, "sensor": "sentinel1", "bands": ["VV", "VH"],
            "wavelengths_nm": [40000.0, 42000.0], "gsd_m": 10.0,
            "times": ["2021-05-01T05:00:00Z", "2021-05-13T05:00:00Z", "2021-05-25T05:00:00Z"],
            "lonlat": [5.0, 52.0], "crs": "EPSG:32631", "transform": [10.0, 0.0, 0.0, 0.0, -10.0, 0.0],
            "product_ids": ["a", "b", "c"], "scale": [0.01, 0.01], "offset": [0.0, 0.0], "units": "dB",
            "dtype": "int16"}


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k] and type(a[k]) is type(b[k]), k


def _write(writer, products):
    """products: list of lists of samples, each list one committed product."""
    for samples in products:
        writer.begin()
        for s in samples:
            writer.add(s)
        writer.commit()
    writer.close()
    return writer.records


def _read_all(url, records):
    return [kv for r in records for kv in iter_zarr_shard(url, r["path"])]


@pytest.mark.parametrize("make", [_s2, _sar, lambda k, s: _s2(k, s, t=3, c=4, hw=8)])
def test_round_trip_equals_tar_form(tmp_path, make):
    samples = [make(f"k{i}", i) for i in range(5)]
    recs = _write(ZarrShardWriter(str(tmp_path / "z"), "x", 10**9, samples_per_shard=2), [samples[:3], samples[3:]])
    assert len(recs) == 1 and recs[0]["format"] == "zarr" and recs[0]["samples"] == 5
    assert recs[0]["keys"] == [s["key"] for s in samples] and recs[0]["path"] == "store.zarr/x-000000"
    got = _read_all(str(tmp_path / "z"), recs)
    tw = ShardWriter(str(tmp_path / "t"), "x", 10**9)
    _write(tw, [samples])
    with open(tmp_path / "t" / tw.records[0]["path"], "rb") as f:
        from_tar = [decode(files, key) for key, files in iter_tar_samples(f)]
    assert [k for k, _ in got] == [s["key"] for s in samples]
    for (key, z), t, s in zip(got, from_tar, samples):
        _assert_same(z, t)
        for k in ("image", "valid"):
            np.testing.assert_array_equal(z[k], s[k])
    for i in (0, 4, -1):
        _assert_same(read_zarr_sample(str(tmp_path / "z"), recs[0]["path"], i), from_tar[i])
    with pytest.raises(IndexError):
        read_zarr_sample(str(tmp_path / "z"), recs[0]["path"], 5)


def test_rollback_within_buffer_and_across_written_zarr_shards(tmp_path):
    w = ZarrShardWriter(str(tmp_path), "x", 10**9, samples_per_shard=2)
    s = [_s2(f"k{i}", i, c=2, hw=8) for i in range(12)]
    w.begin(); [w.add(x) for x in s[0:3]]; w.commit()             # shard [0,2) written, k2 buffered
    w.begin(); [w.add(x) for x in s[3:8]]; w.rollback()           # reaches back into written shards
    w.begin(); w.add(s[8]); w.commit()
    w.begin(); w.add(s[9]); w.rollback()                          # only the buffer
    w.begin(); [w.add(x) for x in s[10:12]]; w.commit()
    recs = w.close()
    assert recs == w.records and len(recs) == 1
    keys = ["k0", "k1", "k2", "k8", "k10", "k11"]
    assert recs[0]["keys"] == keys and recs[0]["samples"] == 6
    got = _read_all(str(tmp_path), recs)
    assert [k for k, _ in got] == keys
    for k, z in got:
        _assert_same(z, s[int(k[1:])])
    assert not (tmp_path / ".tmp").exists()
    assert verify_digest(tmp_path, recs[0])


def verify_digest(root, rec):
    from data_prep.zarr_io import group_digest
    fs = fsspec.filesystem("file")
    return group_digest(fs, str(root / rec["path"])) == (rec["sha256"], rec["bytes"])


def test_seals_at_target_size_and_commit_returns_new_records(tmp_path):
    per = _s2("a", 0, c=4, hw=16)["image"].nbytes
    w = ZarrShardWriter(str(tmp_path), "s2", target_bytes=3 * per, start_index=7, samples_per_shard=2)
    sealed = []
    for p in range(5):                                             # 5 products of 2 samples
        w.begin()
        for j in range(2):
            w.add(_s2(f"p{p}_{j}", 10 * p + j, c=4, hw=16))
        sealed += w.commit()
    sealed += w.close()
    assert sealed == w.records and len(sealed) >= 2
    assert [r["path"] for r in sealed] == [f"store.zarr/s2-{7 + i:06d}" for i in range(len(sealed))]
    assert sum(r["samples"] for r in sealed) == 10
    assert [k for r in sealed for k in r["keys"]] == [f"p{p}_{j}" for p in range(5) for j in range(2)]
    for r in sealed:
        assert r["samples"] % 2 == 0                               # sealed only between products
        g = zarr.open_group(str(tmp_path / r["path"]), mode="r")
        assert dict(g.attrs) == {"samples": r["samples"], "sensor": "sentinel2_l2a", "image_dtype": "uint16"}
        assert [k for k, _ in iter_zarr_shard(str(tmp_path), r["path"])] == r["keys"]
        assert verify_digest(tmp_path, r)
    root = zarr.open_group(str(tmp_path / "store.zarr"), mode="r")
    assert dict(root.attrs) == {"format": "eofm-zarr", "format_version": 1}
    assert sorted(root.group_keys()) == [r["path"].split("/")[1] for r in sealed]
    assert w.close() == [] and w.commit() == []


@pytest.mark.parametrize("compression", [None, "zstd", "none"])
def test_on_disk_layout_sharding_and_blosc(tmp_path, compression):
    kwargs = {"compression": compression} if compression else {}
    w = ZarrShardWriter(str(tmp_path), "x", 10**9, samples_per_shard=4, **kwargs)
    rec = _write(w, [[_sar(f"k{i}", i) for i in range(6)]])[0]
    base = tmp_path / rec["path"]
    for name, chunk in (("image", [1, 3, 2, 16, 16]), ("valid", [1, 3, 16, 16])):
        meta = json.loads((base / name / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["shape"] == [6] + chunk[1:]
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4] + chunk[1:]   # zarr shard: S samples
        (codec,) = meta["codecs"]
        assert codec["name"] == "sharding_indexed"
        assert codec["configuration"]["chunk_shape"] == chunk                       # one chunk per sample
        blosc = [c for c in codec["configuration"]["codecs"] if c["name"] == "blosc"]
        if compression == "none":
            assert not blosc                                                       # stored raw
        else:                                                                      # lz4 by default
            assert blosc and blosc[0]["configuration"]["cname"] == (compression or "lz4")
            assert blosc[0]["configuration"]["clevel"] == 5 and blosc[0]["configuration"]["shuffle"] == "shuffle"
        assert sorted(os.listdir(base / name / "c")) == ["0", "1"]                   # 2 shard objects, last partial
    assert json.loads((base / "image" / "zarr.json").read_text())["data_type"] == "int16"
    for name in ("meta", "key"):
        meta = json.loads((base / name / "zarr.json").read_text())
        assert meta["data_type"] == "string" and meta["shape"] == [6]
    g = zarr.open_group(str(base), mode="r")
    assert g["image"].shards == (4, 3, 2, 16, 16) and g["image"].chunks == (1, 3, 2, 16, 16)
    assert json.loads(str(g["meta"][0])) == json.loads(json.dumps({k: v for k, v in _sar("k0", 0).items()
                                                                   if k not in ("key", "image", "valid")}))
    assert shard_samples(12 * 64 * 64 * 2 + 64 * 64) == 163 and shard_samples(10**9) == 1
    assert shard_samples(16) == 1024


def test_nothing_final_before_sealing_and_abort_leaves_no_group(tmp_path):
    w = ZarrShardWriter(str(tmp_path), "x", 10**9, samples_per_shard=2)
    w.begin()
    for i in range(5):                                             # two zarr shards written to the temp store
        w.add(_s2(f"k{i}", i, c=2, hw=8))
    assert not (tmp_path / "store.zarr" / "x-000000").exists()
    assert list((tmp_path / ".tmp").iterdir())                     # work in progress is under .tmp only
    w.commit()
    assert not (tmp_path / "store.zarr" / "x-000000").exists()
    w.abort()
    assert not (tmp_path / "store.zarr" / "x-000000").exists()
    assert not (tmp_path / ".tmp").exists() or not list((tmp_path / ".tmp").iterdir())
    assert w.records == []


def test_rejects_mismatched_samples_naming_the_key(tmp_path):
    w = ZarrShardWriter(str(tmp_path), "x", 10**9)
    w.begin(); w.add(_s2("a", 0, c=2, hw=8))
    with pytest.raises(ValueError, match="sample b"):
        w.add(_s2("b", 1, c=2, hw=16))
    other = _s2("c", 2, c=2, hw=8)
    other["sensor"] = "landsat_oli"
    with pytest.raises(ValueError, match="sample c"):
        w.add(other)
    other = _s2("d", 3, c=2, hw=8)
    other["image"] = other["image"].astype(np.int16)
    with pytest.raises(ValueError, match="sample d"):
        w.add(other)
    w.commit()
    assert w.close()[0]["keys"] == ["a"]


def test_same_samples_give_the_same_digest(tmp_path):
    digests = []
    for run in ("one", "two"):
        recs = _write(ZarrShardWriter(str(tmp_path / run), "x", 10**9, samples_per_shard=2),
                      [[_s2(f"k{i}", i, c=3, hw=8) for i in range(3)]])
        digests.append((recs[0]["sha256"], recs[0]["bytes"]))
    assert digests[0] == digests[1]


def test_fsspec_memory_url():
    url = "memory://eofm-test-zarr-writer"
    samples = [_sar(f"k{i}", i) for i in range(3)]
    fs = fsspec.filesystem("memory")
    if fs.exists("/eofm-test-zarr-writer"):
        fs.rm("/eofm-test-zarr-writer", recursive=True)
    w = WRITERS["zarr"](url, "x", target_bytes=1, samples_per_shard=2)
    recs = _write(w, [samples[:2], samples[2:]])
    assert [r["samples"] for r in recs] == [2, 1]
    assert fs.exists("/eofm-test-zarr-writer/store.zarr/zarr.json")
    assert not [p for p in fs.find("/eofm-test-zarr-writer") if ".part" in p]
    got = _read_all(url, recs)
    for (k, z), s in zip(got, samples):
        assert k == s["key"]
        _assert_same(z, s | {"valid": s["valid"].astype(bool)})
    _assert_same(read_zarr_sample(url, recs[1]["path"], 0), samples[2])
    from data_prep.zarr_io import group_digest
    assert group_digest(fs, f"/eofm-test-zarr-writer/{recs[0]['path']}") == (recs[0]["sha256"], recs[0]["bytes"])


def _dataset(out, samples):
    w = ZarrShardWriter(str(out), "x", target_bytes=1, samples_per_shard=2)
    shards = _write(w, [samples[:3], samples[3:]])
    stats = DatasetStats()
    for s in samples:
        stats.add_sample(s)
    summary = stats.summary()
    s0 = samples[0]
    sensors = {s0["sensor"]: {"bands": s0["bands"], "wavelengths_nm": s0["wavelengths_nm"], "gsd_m": s0["gsd_m"],
                              "units": s0["units"], "stats": {b: summary[s0["sensor"]][b] for b in s0["bands"]}}}
    products = [{"path": "p", "outcome": "written", "chips": len(samples)}]
    manifest.write(str(out), manifest.build({"test": True}, products, shards, sensors))
    return shards


def test_verify_zarr_dataset_and_detects_a_modified_chunk(tmp_path):
    out = tmp_path / "ds"
    shards = _dataset(out, [_s2(f"k{i}", i, c=3, hw=16) for i in range(5)])
    assert len(shards) == 2
    assert verify(str(out), progress=False) == []
    chunk = out / shards[0]["path"] / "image" / "c" / "0" / "0" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[40] ^= 0xFF                                               # flip one byte of compressed pixels
    chunk.write_bytes(bytes(data))
    problems = verify(str(out), progress=False)
    assert any(shards[0]["path"] in p and "sha256 differs" in p for p in problems)
    assert not any(shards[1]["path"] in p for p in problems)


def test_verify_reports_a_missing_group(tmp_path):
    out = tmp_path / "ds"
    shards = _dataset(out, [_s2(f"k{i}", i, c=2, hw=8) for i in range(4)])
    import shutil
    shutil.rmtree(out / shards[1]["path"])
    problems = verify(str(out), progress=False)
    assert f"{shards[1]['path']}: missing" in problems


def test_unknown_compression_is_refused(tmp_path):
    with pytest.raises(ValueError, match="zarr compression 'brotli' unknown"):
        ZarrShardWriter(str(tmp_path), "x", 10**9, compression="brotli")

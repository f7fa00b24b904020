"""`eofm-prep verify`: re-read a dataset and check it against its manifest."""
from __future__ import annotations

import hashlib
import math

import fsspec
from tqdm import tqdm

from data_prep import manifest
from data_prep.sample import SampleError, decode
from data_prep.stats import DatasetStats
from data_prep.tario import iter_tar_samples
from data_prep.zarr_io import group_digest, iter_zarr_raw, make_sample


def verify(url: str, progress: bool = True) -> list[str]:
    """Returns a list of problems (empty = the dataset matches its manifest)."""
    m = manifest.read(url)
    fs, root = fsspec.core.url_to_fs(url)
    problems: list[str] = []
    stats = DatasetStats()
    keys: set[str] = set()
    for rec in tqdm(m["shards"], desc="verify", unit="shard", disable=not progress):
        fmt = rec.get("format", "webdataset")
        if fmt == "zarr":
            _verify_zarr(url, fs, root, rec, problems, stats, keys)
        elif fmt == "webdataset":
            _verify_tar(fs, root, rec, problems, stats, keys)
        else:
            problems.append(f"{rec['path']}: unknown shard format {fmt!r}")
    summary = stats.summary()
    for sensor, info in m["sensors"].items():
        for band, expected in info["stats"].items():
            got = summary.get(sensor, {}).get(band)
            if got is None or expected is None:
                if got != expected:
                    problems.append(f"stats {sensor}/{band}: recomputed {got}, manifest {expected}")
                continue
            for field in ("count", "mean", "std", "min", "max", "p1", "p99"):
                a, b = got[field], expected[field]
                if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9):
                    problems.append(f"stats {sensor}/{band}.{field}: recomputed {a}, manifest {b}")
    return problems


def _add(rec: dict, key: str, sample: dict, problems: list[str], stats: DatasetStats, keys: set[str]) -> None:
    if key in keys:
        problems.append(f"{rec['path']}: duplicate key {key}")
    keys.add(key)
    stats.add_sample(sample)


def _verify_tar(fs, root: str, rec: dict, problems: list[str], stats: DatasetStats, keys: set[str]) -> None:
    path = f"{root}/{rec['path']}"
    if not fs.exists(path):
        problems.append(f"{rec['path']}: missing")
        return
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != rec["sha256"]:
        problems.append(f"{rec['path']}: sha256 differs from the manifest (file changed or corrupt)")
    size = fs.size(path)
    if size != rec["bytes"]:
        problems.append(f"{rec['path']}: {size} bytes, manifest says {rec['bytes']}")
    n = 0
    try:
        with fs.open(path, "rb") as f:
            for key, files in iter_tar_samples(f, rec["path"]):
                try:
                    sample = decode(files, key)
                except SampleError as err:
                    problems.append(f"{rec['path']}: {err}")
                    continue
                _add(rec, key, sample, problems, stats, keys)
                n += 1
    except ValueError as err:
        problems.append(str(err))
    if n != rec["samples"]:
        problems.append(f"{rec['path']}: {n} samples, manifest says {rec['samples']}")


def _verify_zarr(url: str, fs, root: str, rec: dict, problems: list[str], stats: DatasetStats,
                 keys: set[str]) -> None:
    """A zarr record: one group of store.zarr (see data_prep.zarr_io for the layout and digest)."""
    path = f"{root}/{rec['path']}"
    base = url.rstrip("/")
    if base.endswith(".json"):                # verify was given the manifest file itself
        base = base.rsplit("/", 1)[0]
    if not fs.exists(f"{path}/zarr.json"):
        problems.append(f"{rec['path']}: missing")
        return
    sha, size = group_digest(fs, path)
    if sha != rec["sha256"]:
        problems.append(f"{rec['path']}: sha256 differs from the manifest (files changed or corrupt)")
    if size != rec["bytes"]:
        problems.append(f"{rec['path']}: {size} bytes, manifest says {rec['bytes']}")
    n = 0
    try:
        for key, image, valid, meta in iter_zarr_raw(base, rec["path"]):
            try:
                sample = make_sample(key, image, valid, meta)
            except SampleError as err:
                problems.append(f"{rec['path']}: {err}")
                continue
            _add(rec, key, sample, problems, stats, keys)
            n += 1
    except Exception as err:                  # unreadable group or chunk (codec errors vary)
        problems.append(f"{rec['path']}: cannot read zarr shard: {type(err).__name__}: {err}")
    if n != rec["samples"]:
        problems.append(f"{rec['path']}: {n} samples, manifest says {rec['samples']}")

"""Exact-once evaluation iteration (plan, tar and Zarr reading, 2 real ranks) and ZarrSamples."""
from __future__ import annotations

import json
import pickle
import random

import fsspec
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from data_prep import manifest as manifest_mod
from data_prep.cli import main as prep
from data_prep.sample import decode
from data_prep.tario import iter_tar_samples
from pretrain.data import exact as exact_mod
from pretrain.data.exact import PAD, ExactOnce, exact_once_plan, make_eval_loader, stream_of
from pretrain.data.normalize import normalization_table
from pretrain.data.webdataset import to_tensors
from pretrain.data.zarr_dataset import ZarrSamples
from tests.conftest import SSL4EO_S2A, prep_recipe
from tests.fixtures import run_ranks

# ---------------------------------------------------------------------------------------------
# the plan, as a pure function
# ---------------------------------------------------------------------------------------------

STREAMS = [("sentinel2l2a", "96fcef"), ("sentinel2l2a", "0a1b2c"), ("sentinel1", "96fcef"), ("landsatoli", "77aa00")]


def make_records(counts: list[int], seed: int, fmt: str = "webdataset") -> tuple[list[dict], list[str]]:
    """Engine-named records with the given sample counts, streams, parts and workers mixed;
    also returns each record's true sensor+shape stream."""
    rng = random.Random(seed)
    records, truth, next_index = [], [], {}
    for n in counts:
        sensor, tag = rng.choice(STREAMS)
        part, worker = rng.randrange(3), rng.randrange(2)
        prefix = f"{sensor}-{tag}-p{part:03d}-w{worker:02d}"
        idx = next_index[prefix] = next_index.get(prefix, -1) + 1
        path = f"shards/{prefix}-{idx:06d}.tar" if fmt == "webdataset" else f"store.zarr/{prefix}-{idx:06d}"
        records.append({"path": path, "format": fmt, "samples": n, "keys": [f"{prefix}-{idx}-{j}" for j in range(n)]})
        truth.append(f"{sensor}-{tag}")
    return records, truth


def check_plan(records: list[dict], truth: list[str], world: int, batch: int) -> list:
    plan = exact_once_plan(records, world, batch)
    starts = np.cumsum([0] + [r["samples"] for r in records])
    total = int(starts[-1])

    def shard_of(g):                                         # global index -> record
        return int(np.searchsorted(starts, g, side="right") - 1)

    assert len(plan) == world
    n_batches = {len(p) for p in plan}
    assert len(n_batches) == 1, f"ranks have different batch counts: {[len(p) for p in plan]}"
    real = []
    for rank_batches in plan:
        for b in rank_batches:
            assert len(b) == batch
            streams = set()
            for s, p in b:
                if s == PAD:                                 # filler: a real sample by global index
                    assert 0 <= p < total
                    streams.add(truth[shard_of(p)])
                else:
                    assert 0 <= s < len(records) and 0 <= p < records[s]["samples"]
                    real.append((s, p))
                    streams.add(truth[s])
            assert len(streams) == 1, f"batch mixes sensor/shape streams {streams}"
            assert any(s != PAD for s, _ in b) or len({p for _, p in b}) == 1
    expected = [(s, p) for s, r in enumerate(records) for p in range(r["samples"])]
    assert len(real) == len(set(real)) == total                # no duplicates
    assert set(real) == set(expected)                         # nothing missing
    n_streams = len({truth[s] for s, r in enumerate(records) if r["samples"]})
    # batches only padded at the end of a stream, and at most ceil(real batches / world) per rank
    real_batches = sum(any(s != PAD for s, _ in b) for p in plan for b in p)
    assert real_batches <= total // batch + n_streams
    assert n_batches.pop() == -(-real_batches // world)
    per_rank_real = [sum(any(s != PAD for s, _ in b) for b in p) for p in plan]
    assert max(per_rank_real) - min(per_rank_real) <= 1     # balanced
    return plan


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 8, 24])
@pytest.mark.parametrize("counts", [
    [64, 64], [100], [1], [5, 0, 7, 0, 0, 3], [0, 0], [], [13, 24, 24, 2, 1, 50, 9],
    [7] * 11, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5],
], ids=lambda c: "x".join(map(str, c)) or "none")
def test_plan_grid(world, batch, counts):
    for seed in range(3):
        records, truth = make_records(counts, seed + len(counts))
        check_plan(records, truth, world, batch)
        assert exact_once_plan(records, world, batch) == exact_once_plan(records, world, batch)


def test_plan_random_datasets():
    rng = random.Random(7)
    for trial in range(60):
        counts = [rng.choice([0, 1, 2, 5, 17, 64, 100]) for _ in range(rng.randrange(0, 9))]
        records, truth = make_records(counts, trial, rng.choice(["webdataset", "zarr"]))
        check_plan(records, truth, rng.randrange(1, 6), rng.randrange(1, 40))


def test_plan_pads_are_marked_and_fill_from_the_same_stream():
    records = [{"path": "shards/sentinel2l2a-96fcef-p000-w00-000000.tar", "samples": 5},
               {"path": "shards/sentinel1-123456-p000-w00-000000.tar", "samples": 2}]
    plan = exact_once_plan(records, world=3, batch_size=4)
    # stream 1: [0..3], [4 + 3 fillers of sample 4]; stream 2: [0, 1 + 2 fillers of global sample 5]
    assert plan[0] == [[(0, 0), (0, 1), (0, 2), (0, 3)]]
    assert plan[1] == [[(0, 4), (PAD, 4), (PAD, 4), (PAD, 4)]]
    assert plan[2] == [[(1, 0), (1, 1), (PAD, 5), (PAD, 5)]]
    plan = exact_once_plan(records, world=4, batch_size=4)
    assert plan[3] == [[(PAD, 0)] * 4]                         # a rank with no data: one filler batch
    assert exact_once_plan([], 2, 4) == [[], []]
    assert exact_once_plan([{"path": "shards/a-000000.tar", "samples": 0}], 3, 4) == [[], [], []]


def test_plan_merges_parts_and_workers_of_one_sensor_and_shape():
    # the prefix up to -p<part> (sensor + shape tag) is the stream: 3 x 5 samples of one stream
    # written by different parts and workers make 2 full batches of 8 (not 3 padded ones)
    records = [{"path": f"shards/sentinel2l2a-96fcef-p{p:03d}-w{w:02d}-000000.tar", "samples": 5}
               for p, w in ((0, 0), (0, 1), (1, 0))]
    plan = exact_once_plan(records, world=1, batch_size=8)
    assert [sum(s != PAD for s, _ in b) for b in plan[0]] == [8, 7]
    assert plan[0][0] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2)]
    # a different shape tag or sensor is another stream
    records.append({"path": "shards/sentinel2l2a-0a1b2c-p000-w00-000000.tar", "samples": 5})
    assert len(exact_once_plan(records, world=1, batch_size=8)[0]) == 3


def test_stream_of_names():
    assert stream_of("shards/sentinel2l2a-96fcef-p000-w00-000012.tar") == "sentinel2l2a-96fcef"
    assert stream_of("store.zarr/sentinel2l2a-96fcef-p003-w11-000000") == "sentinel2l2a-96fcef"
    assert stream_of("store.zarr/sentinel2l2a-96fcef-p003-w11-000000/") == "sentinel2l2a-96fcef"
    assert stream_of("shards/enmap-abc123-p12345-w100-1234567.tar") == "enmap-abc123"
    assert stream_of("shards/custom-name-000004.tar") == "custom-name"      # trailing index removed
    assert stream_of("shards/oddname.tar") == "oddname"                      # a stream of its own


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="world"):
        exact_once_plan([], 0, 4)
    with pytest.raises(ValueError, match="batch_size"):
        exact_once_plan([], 1, 0)


# ---------------------------------------------------------------------------------------------
# real datasets: the same recipe as WebDataset tars and as Zarr (2 products x 64 chips = 128)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exact")
    out = {}
    for fmt in ("webdataset", "zarr"):
        p = prep_recipe(tmp, [SSL4EO_S2A], tmp / fmt, size=32, target_shard_mb=0.5)   # sealed per product
        r = yaml.safe_load(p.read_text())
        r["output"]["format"] = fmt
        p.write_text(yaml.safe_dump(r))
        assert prep(["run", str(p), "--quiet", "--workers", "1"]) == 0
        out[fmt] = str(tmp / fmt)
    m = manifest_mod.read(out["webdataset"])
    assert m["samples"] == 128 and len(m["shards"]) == 2
    return out


def manifest_keys(url: str) -> list[str]:
    return [k for r in manifest_mod.read(url)["shards"] for k in r["keys"]]


def tar_samples(url: str) -> dict:
    """key -> to_tensors(decode(...)) for every sample of a tar dataset, streamed."""
    m = manifest_mod.read(url)
    norm, out = normalization_table(m), {}
    for shard in manifest_mod.shard_urls(url, m):
        with fsspec.open(shard, "rb") as f:
            for key, files in iter_tar_samples(f, shard):
                out[key] = to_tensors(decode(files, key), norm)
    return out


def equal_sample(a: dict, b: dict) -> bool:
    return (a["key"] == b["key"] and a["sensor"] == b["sensor"]
            and all(torch.equal(a[k], b[k]) for k in ("image", "valid", "wavelengths_nm", "gsd_m", "times", "lonlat")))


@pytest.mark.parametrize("fmt", ["webdataset", "zarr"])
def test_exact_once_in_process(datasets, fmt, monkeypatch):
    url = datasets[fmt]
    truth = tar_samples(datasets["webdataset"])
    opened = []
    real_open = exact_mod.fsspec.open
    monkeypatch.setattr(exact_mod.fsspec, "open", lambda u, *a, **k: opened.append(u) or real_open(u, *a, **k))
    all_keys = manifest_keys(url)
    for world, batch in ((1, 24), (3, 48), (4, 40)):
        seen, counts = [], []
        for rank in range(world):
            ds = ExactOnce(url, rank, world, batch)
            batches = list(ds)
            counts.append(len(batches))
            assert len(batches) == len(ds)
            for b in batches:
                assert b["image"].shape == (batch, 1, 12, 32, 32) and b["pad"].shape == (batch,)
                assert b["pad"].dtype == torch.bool and b["index"].dtype == torch.int64
                for j, (key, pad, g) in enumerate(zip(b["key"], b["pad"].tolist(), b["index"].tolist())):
                    assert all_keys[g] == key                        # fillers copy a real sample
                    if not pad:
                        seen.append(key)
                    if j < 3:
                        assert torch.equal(b["image"][j], truth[key]["image"])
        assert len(set(counts)) == 1
        assert len(seen) == len(set(seen)) == 128 and set(seen) == set(all_keys)
    if fmt == "webdataset":      # each rank opens each shard it needs once (fillers come from its batch)
        assert len(opened) == 2 + (1 + 2 + 1) + (1 + 2 + 1 + 1)
    else:
        assert opened == []                                  # zarr: no tar opened


def test_exact_once_dataloader_workers_keep_plan_order(datasets):
    ds = ExactOnce(datasets["webdataset"], rank=0, world=1, batch_size=20)     # 7 batches, 2 workers
    assert ds.batch_ids(0, 2) == [0, 2, 4, 6] and ds.batch_ids(1, 2) == [1, 3, 5]
    direct = [b["key"] for b in ds]
    loader = make_eval_loader(datasets["webdataset"], batch_size=20, rank=0, world=1, num_workers=2)
    via_workers = [(b["key"], b["pad"].tolist()) for b in loader]
    assert [k for k, _ in via_workers] == direct
    assert sum(not p for _, pads in via_workers for p in pads) == 128


RANK_SCRIPT = r"""
import datetime, json, sys
import torch, torch.distributed as dist
from pretrain.data.exact import ExactOnce
rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
report = {}
for spec in sys.argv[5:]:
    name, url, batch = spec.split("=", 2)
    ds = ExactOnce(url, rank, world, int(batch))
    n, keys, pads, real = 0, [], 0, torch.zeros(1, dtype=torch.int64)
    for b in ds:
        n += 1
        real_b = (~b["pad"]).sum().reshape(1)
        dist.all_reduce(real_b)                  # one collective per batch, as evaluation does
        real += int((~b["pad"]).sum())
        keys += [k for k, p in zip(b["key"], b["pad"].tolist()) if not p]
        pads += int(b["pad"].sum())
    counts = [None] * world
    dist.all_gather_object(counts, n)
    total = real.clone()
    dist.all_reduce(total)
    report[name] = {"batches": n, "all_batches": counts, "keys": keys, "pads": pads, "total": int(total)}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(report, f)
dist.barrier()
dist.destroy_process_group()
"""


def test_two_real_ranks_exact_once(datasets, tmp_path):
    world = 2
    specs = [f"tar={datasets['webdataset']}=48", f"zarr={datasets['zarr']}=24"]   # 128 = 2*48+32; 5*24+8
    run_ranks(RANK_SCRIPT, world, tmp_path, str(tmp_path), *specs, timeout=150)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for name, url, batch in (("tar", datasets["webdataset"], 48), ("zarr", datasets["zarr"], 24)):
        counts = [rep[name]["batches"] for rep in reports]
        assert counts[0] == counts[1] and all(rep[name]["all_batches"] == counts for rep in reports)
        keys = [k for rep in reports for k in rep[name]["keys"]]
        all_keys = manifest_keys(url)
        assert len(keys) == len(set(keys)) == len(all_keys) == 128 and set(keys) == set(all_keys)
        assert all(rep[name]["total"] == 128 for rep in reports)
        pads = sum(rep[name]["pads"] for rep in reports)
        assert pads == world * counts[0] * batch - 128 > 0         # padding happened, and was marked


# ---------------------------------------------------------------------------------------------
# ZarrSamples
# ---------------------------------------------------------------------------------------------

def test_zarr_samples_match_the_streamed_tar_twin(datasets):
    ds = ZarrSamples(datasets["zarr"])
    truth = tar_samples(datasets["webdataset"])
    assert len(ds) == 128 == len(truth)
    keys = ds.keys()
    assert keys == manifest_keys(datasets["zarr"]) and set(keys) == set(truth)
    for i in range(len(ds)):
        assert ds.key(i) == keys[i] and ds.index_of(keys[i]) == i
        s, p = ds.locate(i)
        assert ds.global_index(s, p) == i
    for i in list(range(0, 128, 9)) + [63, 64, 127]:
        assert equal_sample(ds[i], truth[ds.key(i)])
    assert equal_sample(ds[-1], truth[keys[-1]])
    with pytest.raises(IndexError):
        ds[128]
    with pytest.raises(KeyError, match="no sample with key"):
        ds.index_of("nope")


def test_zarr_samples_refuses_tar_datasets(datasets):
    with pytest.raises(ValueError, match="output.format=zarr") as err:
        ZarrSamples(datasets["webdataset"])
    assert datasets["webdataset"] in str(err.value)


def test_zarr_samples_pickles_and_spawns(datasets):
    ds = ZarrSamples(datasets["zarr"])
    clone = pickle.loads(pickle.dumps(ds))                    # before use: nothing unpicklable held
    assert len(clone) == 128 and clone.key(5) == ds.key(5)
    first = ds[3]
    assert ds._groups                                         # groups now open and cached ...
    again = pickle.loads(pickle.dumps(ds))                    # ... and dropped when pickled
    assert again._groups is None and equal_sample(again[3], first)
    loader = DataLoader(ds, batch_size=16, num_workers=2, multiprocessing_context="spawn")
    keys = [k for b in loader for k in b["key"]]
    assert keys == ds.keys()


def test_plan_with_a_selection_reads_only_those_samples():
    records = [{"path": "s2-abc-p0-w0-0.tar", "samples": 10}, {"path": "s2-abc-p0-w0-1.tar", "samples": 10}]
    select = {0, 3, 12, 19}
    plan = exact_once_plan(records, world=2, batch_size=2, select=select)
    starts = [0, 10]
    got = [starts[s] + p for rank in plan for batch in rank for s, p in batch if s != PAD]
    assert sorted(got) == sorted(select) and len(plan[0]) == len(plan[1]) == 1

"""Random access by sample index over a prepared Zarr dataset (ZarrSamples, the exact-once
evaluation loader, curation): eofm's direct reader against zarr-python reading the same samples.

  python bench/zarr_random_access.py /tmp/lb/s2_128_zarr /tmp/lb/enmap_64_zarr [--samples 128] [--out F]

Both sides read the same random indices, one sample at a time, in one process (one core),
alternating over --rounds: `ShardReader.sample` (what ZarrSamples.raw does: cached shard
indexes, one range read per array, metadata strings one chunk at a time) versus the four
zarr-python reads `group[a][i]` for image, valid, meta and key. Datasets come from
bench/loader_throughput.py --workdir.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import manifest as manifest_mod  # noqa: E402
from data_prep.zarr_io import ShardReader, make_sample, open_zarr_shard  # noqa: E402


def _zarr_python(group, i: int) -> dict:
    return make_sample(str(group["key"][i]), np.asarray(group["image"][i]), np.asarray(group["valid"][i]),
                       str(group["meta"][i]))


def rate(dataset: str, picks: list[tuple[int, int]], direct: bool) -> float:
    records = manifest_mod.read(dataset)["shards"]
    open_ = (lambda path: ShardReader(dataset, path)) if direct else (lambda path: open_zarr_shard(dataset, path))
    readers: dict[int, object] = {}
    t0 = time.perf_counter()
    for s, p in picks:
        if s not in readers:
            readers[s] = open_(records[s]["path"])
        sample = readers[s].sample(p) if direct else _zarr_python(readers[s], p)
        assert sample["image"].ndim == 4
    return len(picks) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import numcodecs.blosc
    numcodecs.blosc.set_nthreads(1)
    result = {}
    for ds in args.datasets:
        counts = [int(r["samples"]) for r in manifest_mod.read(ds)["shards"]]
        rng = np.random.default_rng(0)
        every = [(s, p) for s, n in enumerate(counts) for p in range(n)]
        picks = [every[i] for i in rng.permutation(len(every))[:args.samples]]
        runs = {"direct": [], "zarr_python": []}
        for _ in range(args.rounds):
            runs["direct"].append(rate(ds, picks, True))
            runs["zarr_python"].append(rate(ds, picks, False))
        med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
        result[Path(ds).name] = {"samples_per_s": med, "rounds": {k: [round(x, 1) for x in v] for k, v in runs.items()},
                                 "speedup": round(med["direct"] / med["zarr_python"], 2), "samples": len(picks)}
        print(Path(ds).name, result[Path(ds).name], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

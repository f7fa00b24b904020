"""Training-data loader throughput: samples per second per worker, from prepared shards.

  python -m venv /tmp/tgvenv && /tmp/tgvenv/bin/pip install torchgeo     # a separate environment
  python bench/loader_throughput.py [--samples 512] [--rounds 3] [--torchgeo-python /tmp/tgvenv/bin/python]
                                    [--workdir DIR] [--out docs/bench_loader.json]

Workloads (real pixels from ../shared/data/real):
- s2_128:    Sentinel-2 L2A, 12 bands, 128x128 chips (Major-TOM cells repeated 2x2: 2136 px products)
- enmap_64:  EnMAP-like, 224 bands, 64x64 chips (HySpecNet spectra tiled to 1024 px)
each prepared as WebDataset tars, as a Zarr store (Blosc lz4, the default) and as a Zarr store
without compression (`zarr_raw`), then streamed by eofm's loader as training runs it
(`make_loader(reuse_buffers=True)`, in this process and through ONE DataLoader worker process:
read, decode, shuffle buffer, default augmentations, batches of 32 shipped as stored integers +
per-sample affine in reused shared-memory buffers, every page of each batch touched once;
the normalisation itself runs on the accelerator in training and is timed separately here on
one CPU core), alternating in each round with torchgeo reading the same source GeoTIFFs on the
fly (bench/torchgeo_onthefly.py, run in the torchgeo environment).
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


# dataset variants: name -> (output.format, output.zarr_compression)
FORMATS = {"webdataset": ("webdataset", None), "zarr": ("zarr", None), "zarr_raw": ("zarr", "none")}


def prepare(products: list[Path], out: Path, chip: int, variant: str) -> Path:
    fmt, compression = FORMATS[variant]
    recipe = {"sources": [{"kind": "auto", "paths": [str(p) for p in products]}],
              "chips": {"size": chip, "stride": chip, "min_valid_fraction": 0.0},
              "output": {"path": str(out), "format": fmt, "target_shard_mb": 64,
                         **({"zarr_compression": compression} if compression else {})}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    subprocess.run([sys.executable, "-m", "data_prep", "run", str(path), "--quiet"], cwd=ROOT, check=True)
    return out


def loader_rate(dataset: Path, samples: int, workers: int, batch: int = 32) -> dict:
    """Samples/s of eofm's loader on one core. workers=0: the stream runs in this process (what
    one DataLoader worker computes; torchgeo's side is measured the same way); workers=1: one
    DataLoader worker process as training runs it (spawn, batches in shared memory), in steady
    state after the prefetch queue has drained."""
    import numcodecs.blosc
    import torch

    from pretrain.data.augment import AugmentSpec
    from pretrain.data.webdataset import make_loader, normalize_batch

    torch.set_num_threads(1)
    numcodecs.blosc.set_nthreads(1)                # one core per side (DataLoader workers do the same)
    loader = make_loader(str(dataset), batch, rank=0, world=1, seed=0, num_workers=workers, shuffle_buffer=64,
                         augment_spec=AugmentSpec(), reuse_buffers=True)     # as training runs it
    it = iter(loader)
    for _ in range(6):                             # warm-up: worker start, first shard, prefetch queue
        last = next(it)
    n_batches = max(1, samples // batch)
    t0 = time.perf_counter()
    n = 0
    for last in itertools.islice(it, n_batches):
        n += len(last["key"])
        last["stored"].reshape(-1)[::2048].sum()  # touch every page, as the copy to the GPU will
    dt = time.perf_counter() - t0
    del it, loader
    t1 = time.perf_counter()                       # what the accelerator does in training, here on 1 CPU core
    image = normalize_batch(last)["image"]
    dn = time.perf_counter() - t1
    return {"samples": n, "seconds": round(dt, 3), "samples_per_s": round(n / dt, 1),
            "shipped": "stored integers + affine" if "stored" in last else "float32",
            "normalise_on_cpu_samples_per_s": round(batch / dn, 1), "sample_shape": list(image.shape[1:])}


def torchgeo_rate(python: str, work: Path, workload: str, samples: int) -> dict:
    """The on-the-fly side, run in its own environment (bench/torchgeo_onthefly.py)."""
    out = subprocess.run([python, str(ROOT / "bench" / "torchgeo_onthefly.py"), str(work), "--only", workload,
                          "--samples", str(samples)], check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    return {"torchgeo": result["torchgeo"], **result[f"{workload}/on_the_fly"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median of each side is reported")
    ap.add_argument("--torchgeo-python", default=None, help="python of an environment with torchgeo installed")
    ap.add_argument("--workdir", default=None, help="keep sources and datasets here (default: a temp dir)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import statistics

    import prep_throughput as pt

    work = Path(args.workdir or tempfile.mkdtemp(prefix="eofm-loader-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    s2 = pt.mosaic_products(work / "s2_src", 2) if not (work / "s2_src").exists() else sorted((work / "s2_src").iterdir())
    enmap = [pt.enmap_like(work / "enmap_src", 1024)] if not (work / "enmap_src").exists() else \
        sorted((work / "enmap_src").iterdir())
    if args.torchgeo_python and not (work / "enmap_src_as_source").exists():
        pt.enmap_like(work / "enmap_src_as_source", 1024, layout="as_source")   # the same pixels, the real file's layout
    runs: dict[str, list[dict]] = {}
    for name, products, chip in (("s2_128", s2, 128), ("enmap_64", enmap, 64)):
        for fmt in FORMATS:
            ds = work / f"{name}_{fmt}"
            if not (ds / "manifest.json").exists():
                shutil.rmtree(ds, ignore_errors=True)
                prepare(products, ds, chip, fmt)
    for r in range(args.rounds):
        for name in ("s2_128", "enmap_64"):
            sides = [(f"{fmt}{suffix}", lambda fmt=fmt, w=w: loader_rate(work / f"{name}_{fmt}", args.samples, w))
                     for fmt in FORMATS for w, suffix in ((0, ""), (1, "+dataloader"))]
            if args.torchgeo_python:
                sides.append(("on_the_fly", lambda: torchgeo_rate(args.torchgeo_python, work, name, args.samples // 2)))
                if name == "enmap_64":
                    sides.append(("on_the_fly_as_source", lambda: torchgeo_rate(
                        args.torchgeo_python, work, "enmap_64_as_source", args.samples // 4)))
            for side, fn in sides:
                res = fn()
                runs.setdefault(f"{name}/{side}", []).append(res)
                print(f"round {r}", name, side, res["samples_per_s"], flush=True)
    result = {}
    for k, rs in runs.items():
        result[k] = {**rs[-1], "samples_per_s": statistics.median(x["samples_per_s"] for x in rs),
                     "rounds": [x["samples_per_s"] for x in rs]}
    for name in ("s2_128", "enmap_64"):
        if f"{name}/on_the_fly" in result:
            for ref in ("on_the_fly", "on_the_fly_as_source"):
                if f"{name}/{ref}" in result:
                    base = result[f"{name}/{ref}"]["samples_per_s"]
                    result[f"{name}/speedup_vs_{ref}"] = {
                        fmt: round(result[f"{name}/{fmt}"]["samples_per_s"] / base, 2)
                        for fmt in (*FORMATS, *(f"{f}+dataloader" for f in FORMATS))}
    result["workdir"] = str(work)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

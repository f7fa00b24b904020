"""Training-data loader throughput: samples per second per worker, from prepared shards.

  python bench/loader_throughput.py [--samples 512] [--out docs/bench_loader.json]
  /path/to/torchgeo-venv/bin/python bench/torchgeo_onthefly.py WORKDIR   # the on-the-fly comparison

Workloads (real pixels from ../shared/data/real):
- s2_128:    Sentinel-2 L2A, 12 bands, 128x128 chips (Major-TOM cells repeated 2x2: 2136 px products)
- enmap_64:  EnMAP-like, 224 bands, 64x64 chips (HySpecNet spectra tiled to 1024 px)
each prepared once as WebDataset tars and once as a Zarr store, then streamed by eofm's loader
(`ShardStream`: decode, shuffle buffer, default augmentations, batches of 32 shipped as stored
integers + per-sample affine; the normalisation itself runs on the accelerator in training and
is timed separately here on one CPU core) in ONE process (= one DataLoader worker). The source folders are kept in WORKDIR
for the torchgeo comparison script.
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


def prepare(products: list[Path], out: Path, chip: int, fmt: str) -> Path:
    recipe = {"sources": [{"kind": "auto", "paths": [str(p) for p in products]}],
              "chips": {"size": chip, "stride": chip, "min_valid_fraction": 0.0},
              "output": {"path": str(out), "format": fmt, "target_shard_mb": 64}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    subprocess.run([sys.executable, "-m", "data_prep", "run", str(path), "--quiet"], cwd=ROOT, check=True)
    return out


def stream_rate(dataset: Path, samples: int, batch: int = 32) -> dict:
    import torch

    from pretrain.data.augment import AugmentSpec
    from pretrain.data.webdataset import ShardStream, normalize_batch

    torch.set_num_threads(1)                       # one loader worker = one core
    stream = ShardStream(str(dataset), batch, rank=0, world=1, seed=0, shuffle_buffer=64,
                         augment_spec=AugmentSpec())
    it = iter(stream)
    next(it)                                       # warm-up: first shard opened, buffer filled
    n_batches = max(1, samples // batch)
    t0 = time.perf_counter()
    batches = list(itertools.islice(it, n_batches))
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()                       # what the accelerator does in training, here on 1 CPU core
    image = [normalize_batch(b)["image"] for b in batches][-1]
    dn = time.perf_counter() - t1
    n = n_batches * batch
    return {"samples": n, "seconds": round(dt, 3), "samples_per_s": round(n / dt, 1),
            "shipped": "stored integers + affine" if "stored" in batches[0] else "float32",
            "normalise_on_cpu_samples_per_s": round(n / dn, 1), "sample_shape": list(image.shape[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--workdir", default=None, help="keep sources and datasets here (default: a temp dir)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import prep_throughput as pt

    work = Path(args.workdir or tempfile.mkdtemp(prefix="eofm-loader-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    s2 = pt.mosaic_products(work / "s2_src", 2) if not (work / "s2_src").exists() else sorted((work / "s2_src").iterdir())
    enmap = [pt.enmap_like(work / "enmap_src", 1024)] if not (work / "enmap_src").exists() else \
        sorted((work / "enmap_src").iterdir())
    result = {}
    for name, products, chip in (("s2_128", s2, 128), ("enmap_64", enmap, 64)):
        for fmt in ("webdataset", "zarr"):
            ds = work / f"{name}_{fmt}"
            if not (ds / "manifest.json").exists():
                shutil.rmtree(ds, ignore_errors=True)
                prepare(products, ds, chip, fmt)
            result[f"{name}/{fmt}"] = stream_rate(ds, args.samples)
            print(name, fmt, result[f"{name}/{fmt}"], flush=True)
    result["workdir"] = str(work)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

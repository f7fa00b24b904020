"""The on-the-fly comparison for bench/loader_throughput.py, run in a SEPARATE environment with torchgeo:

  python -m venv /tmp/tgvenv && /tmp/tgvenv/bin/pip install torchgeo
  /tmp/tgvenv/bin/python bench/torchgeo_onthefly.py WORKDIR [--samples 256] [--only s2_128|enmap_64] [--out FILE]

WORKDIR is the --workdir of loader_throughput.py (its source products). Reads the same kinds of
samples the way torchgeo's RasterDataset with a RandomGeoSampler does: random windows read and
resampled from the source GeoTIFFs on every access (S2: 12 band files at 10 m, 128 px; EnMAP:
one 224-band file, 64 px), in one process (num_workers=0 = one worker). Nothing from eofm is
imported here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchgeo.datasets import RasterDataset, stack_samples
from torchgeo.samplers import RandomGeoSampler

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


class S2Folder(RasterDataset):
    filename_glob = "B02.tif"
    filename_regex = r"^(?P<band>B\d\d|B8A)\.tif$"
    separate_files = True
    all_bands = S2_BANDS
    is_image = True


class EnMAPPatch(RasterDataset):
    filename_glob = "*SPECTRAL_IMAGE.TIF"
    is_image = True


def rate(ds, size: int, samples: int, batch: int = 32) -> dict:
    torch.set_num_threads(1)
    sampler = RandomGeoSampler(ds, size=size, length=samples + batch)
    loader = DataLoader(ds, sampler=sampler, batch_size=batch, num_workers=0, collate_fn=stack_samples)
    it = iter(loader)
    first = next(it)                                   # warm-up (index, file handles)
    t0 = time.perf_counter()
    n = 0
    for b in it:
        n += b["image"].shape[0]
    dt = time.perf_counter() - t0
    return {"samples": n, "seconds": round(dt, 3), "samples_per_s": round(n / dt, 1),
            "sample_shape": list(first["image"].shape[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--only", choices=["s2_128", "enmap_64", "enmap_64_as_source"], default=None, help="one workload only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    work = Path(args.workdir)
    import torchgeo
    s2_product = sorted((work / "s2_src").iterdir())[0]         # one product: one CRS, as RasterDataset needs
    result = {"torchgeo": torchgeo.__version__}
    if args.only in (None, "s2_128"):
        result["s2_128/on_the_fly"] = rate(S2Folder(paths=[str(s2_product)], res=10.0), 128, args.samples)
    if args.only in (None, "enmap_64"):
        result["enmap_64/on_the_fly"] = rate(EnMAPPatch(paths=[str(work / "enmap_src")]), 64, args.samples)
    if args.only == "enmap_64_as_source" or (args.only is None and (work / "enmap_src_as_source").exists()):
        result["enmap_64_as_source/on_the_fly"] = rate(EnMAPPatch(paths=[str(work / "enmap_src_as_source")]), 64,
                                                       args.samples)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())

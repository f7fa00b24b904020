"""Shard-preparation throughput against the floor of only reading the source pixels.

  python bench/prep_throughput.py [--repeat 3] [--out docs/bench_prep.json]

Workload: Sentinel-2 L2A 12-band 256x256 chips made of the real Major-TOM pixels in
../shared/data/real, one worker process, 20/60 m bands resampled to 10 m, in two forms:
- geotiff:  per-band tiled deflate GeoTIFFs (cloud-archive COG form; each 1068 px cell repeated
            4x4 into 4272 px products) - the cheapest decode, so the worst case for the ratio;
- safe_jp2: the form ESA delivers, a .SAFE with lossless JPEG 2000 bands (2136 px).
- floor:    for every chip window, read and decode the 12 bands onto the 10 m grid with
            rasterio (bilinear for coarse bands), as any pipeline must; nothing else.
- pipeline: `eofm-prep run` with one worker: the same reads plus validity masks, checksums of
            the inputs, statistics, sample encoding, tar writing, ledger and manifest.
Both run in this process, alternating, so machine noise hits both; the ratio is what counts.
Also reports the peak resident memory of a worker chipping a large hyperspectral product
(EnMAP-like, 224 bands, generated here) to show that memory does not grow with product size.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real" / "Major-TOM-Core" / "S2L2A"
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
CHIP = 256


def mosaic_products(folder: Path, reps: int = 4) -> list[Path]:
    """Tile-sized products from real pixels: each real Major-TOM cell repeated reps x reps (all bands,
    native resolutions kept), saved as a per-band GeoTIFF folder with its product name."""
    out = []
    for src_dir in sorted(p for p in REAL.glob("*/*/*") if p.is_dir()):
        dst = folder / src_dir.name
        dst.mkdir(parents=True)
        for f in sorted(src_dir.glob("*.tif")):
            with rasterio.open(f) as s:
                a = s.read()
                profile = s.profile | {"width": s.width * reps, "height": s.height * reps, "tiled": True,
                                       "blockxsize": 256, "blockysize": 256, "compress": "deflate"}
            with rasterio.open(dst / f.name, "w", **profile) as d:
                d.write(np.tile(a, (1, reps, reps)))
        out.append(dst)
    return out


def safe_products(folder: Path, reps: int = 2) -> list[Path]:
    """The same real pixels as Sentinel-2 L2A is delivered: a .SAFE with lossless JPEG 2000 bands in
    R10m/R20m/R60m, SCL and MTD_MSIL2A.xml (written with the test fixtures' SAFE layout)."""
    sys.path.insert(0, str(ROOT))
    from tests.data_prep import s2_fixtures as fx

    src_dir = sorted(p for p in REAL.glob("*/*/*") if p.is_dir())[0]
    name = fx.product_name("L2A", "05.10")
    granule = f"L2A_T{fx.TILE}_A032465_{fx.SENSING}"
    safe = folder / f"{name}.SAFE"
    files = []
    for b in BANDS + ["SCL"]:
        if b == "SCL":
            res, a = 20, np.full((534 * reps, 534 * reps), 4, np.uint8)
        else:
            with rasterio.open(src_dir / f"{b}.tif") as s:
                res, a = int(s.res[0]), np.tile(s.read(1), (reps, reps))
        rel = f"GRANULE/{granule}/IMG_DATA/R{res}m/T{fx.TILE}_{fx.SENSING}_{b}_{res}m"
        fx.write_jp2(safe / f"{rel}.jp2", a, res)
        files.append(rel)
    (safe / "MTD_MSIL2A.xml").write_text(fx.mtd_xml("L2A", "05.10", name, files, granule))
    return [safe]


def band_files(product: Path) -> list[Path]:
    if product.suffix == ".SAFE":
        found = {p.name.split("_")[2]: p for p in product.glob("GRANULE/*/IMG_DATA/R*m/*.jp2")}
        return [found[b] for b in BANDS]
    return [product / f"{b}.tif" for b in BANDS]


def floor(products: list[Path]) -> tuple[int, float]:
    """Read-and-decode only: every chip window of every band onto the 10 m grid."""
    t0, n = time.perf_counter(), 0
    for p in products:
        srcs = [rasterio.open(f) for f in band_files(p)]
        ref = srcs[1]
        for r in range(0, ref.height - CHIP + 1, CHIP):
            for c in range(0, ref.width - CHIP + 1, CHIP):
                win = Window(c, r, CHIP, CHIP)
                bounds = rasterio.windows.bounds(win, ref.transform)
                out = np.empty((12, CHIP, CHIP), np.uint16)
                for i, s in enumerate(srcs):
                    if s.res == ref.res:
                        out[i] = s.read(1, window=win)
                    else:
                        out[i] = s.read(1, window=from_bounds(*bounds, transform=s.transform), out_shape=(CHIP, CHIP),
                                        resampling=Resampling.bilinear)
                n += 1
        for s in srcs:
            s.close()
    return n, time.perf_counter() - t0


def pipeline(products: list[Path], work: Path) -> tuple[int, float]:
    out = work / "ds"
    shutil.rmtree(out, ignore_errors=True)
    recipe = {"sources": [{"kind": "auto", "paths": [str(p) for p in products]}],
              "chips": {"size": CHIP, "stride": CHIP, "min_valid_fraction": 0.0},
              "output": {"path": str(out), "target_shard_mb": 256}}
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "data_prep", "run", str(path), "--quiet", "--workers", "1"],
                       cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(r.stderr)
    return json.loads((out / "manifest.json").read_text())["samples"], dt


def startup() -> float:
    """Interpreter + imports of a prep run that has nothing to do (subtracted from the pipeline time)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import data_prep.run, data_prep.worker"], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def enmap_like(folder: Path, size: int, layout: str = "tiled") -> Path:
    """A 224-band int16 hyperspectral GeoTIFF patch (HySpecNet naming), size x size pixels.
    layout "tiled": 256 px tiles (the cheapest to read windows from); "as_source": the real
    HySpecNet file's own layout (band-interleaved strips of 3 rows, deflate)."""
    name = "ENMAP01-____L2A-DT0000004950_20221103T162438Z_001_V010110_20221118T145147Z-Y01460273_X03110438"
    src = ROOT.parent / "shared" / "data" / "real" / "HySpecNet-11k" / name
    dst = folder / name
    dst.mkdir(parents=True)
    with rasterio.open(src / f"{name}-SPECTRAL_IMAGE.TIF") as s:
        tile = s.read()                                              # (224, 128, 128) real spectra
        profile = s.profile | {"width": size, "height": size, "transform": s.transform}
        if layout == "tiled":
            profile |= {"tiled": True, "blockxsize": 256, "blockysize": 256}
    reps = -(-size // tile.shape[1])
    with rasterio.open(dst / f"{name}-SPECTRAL_IMAGE.TIF", "w", **profile) as d:
        for r in range(0, size, 256):                                # written in strips: bounded memory here too
            rows = np.tile(tile, (1, 1, reps))[:, :, :size]
            strip = np.concatenate([rows] * (256 // tile.shape[1] + 1), axis=1)[:, :min(256, size - r)]
            d.write(strip, window=Window(0, r, size, strip.shape[1]))
    for ql in src.glob("*QL_*.TIF"):
        with rasterio.open(ql) as s:
            a, prof = s.read(), s.profile | {"width": size, "height": size}
        big = np.tile(a, (1, reps, reps))[:, :size, :size]
        with rasterio.open(dst / ql.name, "w", **prof) as d:
            d.write(big)
    return dst


def peak_memory(work: Path, size: int) -> dict:
    product = enmap_like(work / "enmap", size)
    out = work / "ds_enmap"
    recipe = {"sources": [{"kind": "auto", "paths": [str(product)]}],
              "chips": {"size": 128, "stride": 128, "min_valid_fraction": 0.0},
              "output": {"path": str(out), "target_shard_mb": 64}}
    path = work / "enmap.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = (f"import resource, sys; sys.argv=['eofm-prep','run','{path}','--quiet','--workers','1'];"
            "from data_prep.cli import main; rc=main(sys.argv[1:]);"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr)
    rss_kb = int(r.stdout.split("MAXRSS")[1].split()[0])
    base = subprocess.run([sys.executable, "-c", "import resource, data_prep.run, data_prep.worker; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          cwd=ROOT, capture_output=True, text=True)
    m = json.loads((out / "manifest.json").read_text())
    product_mb = os.path.getsize(next(product.glob("*SPECTRAL_IMAGE.TIF"))) / 2**20
    return {"product_px": size, "bands": 224, "product_file_mb": round(product_mb, 1),
            "product_uncompressed_mb": round(224 * size * size * 2 / 2**20, 1), "chips": m["samples"],
            "worker_peak_rss_mb": round(rss_kb / 1024, 1), "imports_only_rss_mb": round(int(base.stdout) / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--enmap-size", type=int, default=1024, help="pixels per side of the large EnMAP-like product")
    ap.add_argument("--mosaic", type=int, default=4, help="each real 1068 px cell is repeated NxN (4: 4272 px tiles)")
    ap.add_argument("--safe-mosaic", type=int, default=2, help="the same for the JPEG 2000 .SAFE case (2: 2136 px)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eofm-bench-"))
    try:
        boot = min(startup() for _ in range(2))
        result = {"process_startup_s": round(boot, 2)}
        cases = {"geotiff": lambda: mosaic_products(work / "products", args.mosaic),
                 "safe_jp2": lambda: safe_products(work / "safe", args.safe_mosaic)}
        for case, make in cases.items():
            products, rows = make(), []
            for _ in range(args.repeat):
                n_f, t_f = floor(products)
                n_p, t_p = pipeline(products, work)
                rows.append({"floor_chips": n_f, "floor_s": t_f, "pipeline_chips": n_p, "pipeline_s": t_p - boot})
            best_f = min(r["floor_s"] for r in rows)
            best_p = min(r["pipeline_s"] for r in rows)
            n = rows[0]["floor_chips"]
            result[case] = {
                "workload": f"{n} chips of 12x{CHIP}x{CHIP} from {len(products)} S2 L2A product(s) "
                            f"({case}), 1 process",
                "floor_chips_per_s": round(n / best_f, 2), "pipeline_chips_per_s": round(n / best_p, 2),
                "ratio_pipeline_over_floor": round(best_p / best_f, 3), "runs": rows}
        result["memory"] = peak_memory(work, args.enmap_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

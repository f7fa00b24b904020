"""Rebuild this folder's Sentinel-2 subset from ../shared/data/real (run from the repo root).

Each product keeps its folder name and per-band GeoTIFF layout; bands are cut to the same
ground window (CROP_M metres square from the top-left corner), so 10/20/60 m bands stay
aligned. Pixels are copied unchanged (lossless deflate, horizontal predictor).
"""
import shutil
import sys
from pathlib import Path

import rasterio
from rasterio.windows import Window

CROP_M = 7200  # 720 px at 10 m, 360 at 20 m, 120 at 60 m
SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/real")
DST = Path(__file__).resolve().parent / "S2L2A"
# The N0400 Major-TOM cell (T33NZA, 2022-07-06) is left out: it is covered by cloud from edge to
# edge while its cloud_mask.tif marks every pixel clear, so its chips would teach nothing and
# would be mislabelled by the quickstart's NDVI classes. The tests read a cut of it in tests/data.
PRODUCTS = [
    "Major-TOM-Core/S2L2A/199U/199U_1099R/S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543",
    "SSL4EO-S12/s2a/0000200/20200604T054639_20200604T054831_T43RCP",
    "SSL4EO-S12/s2a/0000200/20200813T054639_20200813T054952_T43RCP",
    # The same SSL4EO-S12 location as L1C (top-of-atmosphere, like EuroSAT), two dates.
    "SSL4EO-S12/s2c/0000200/20200604T054639_20200604T054831_T43RCP",
    "SSL4EO-S12/s2c/0000200/20200823T054639_20200823T055618_T43RCP",
]

for rel in PRODUCTS:
    level = "S2L1C" if "/s2c/" in rel else "S2L2A"
    src_dir, dst_dir = SRC / rel, DST.parent / level / rel.split("/", 1)[0] / Path(rel).name
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(src_dir.iterdir()):
        if f.suffix == ".json":
            shutil.copy(f, dst_dir / f.name)
        if f.suffix != ".tif":
            continue
        with rasterio.open(f) as s:
            metres = CROP_M if s.crs.is_projected else None
            n = round(metres / s.res[0]) if metres else s.width   # SSL4EO patches (264 px) stay whole
            win = Window(0, 0, min(n, s.width), min(n, s.height))
            profile = s.profile | {"width": win.width, "height": win.height, "compress": "deflate",
                                   "predictor": 2, "zlevel": 9, "tiled": False,
                                   "transform": s.window_transform(win)}
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            with rasterio.open(dst_dir / f.name, "w", **profile) as d:
                d.write(s.read(window=win))
print(f"wrote {DST}")

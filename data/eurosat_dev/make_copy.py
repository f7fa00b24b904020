"""Rebuild data/eurosat_dev from ../shared/data/real/EuroSAT_MS_dev (run from the repo root).

The 80 EuroSAT_MS tiles (8 per class, 10 classes; 13-band Sentinel-2 L1C, 64x64) keep their
class folders, file names, georeferencing and pixels; only the GeoTIFF compression changes
(lossless deflate with a horizontal predictor: 8.5 MB -> 5.1 MB).
"""
import sys
from pathlib import Path

import rasterio

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/real") / "EuroSAT_MS_dev"
DST = Path(__file__).resolve().parent

for f in sorted(SRC.glob("*/*.tif")):
    (DST / f.parent.name).mkdir(exist_ok=True)
    with rasterio.open(f) as s:
        profile = s.profile | {"compress": "deflate", "predictor": 2, "zlevel": 9}
        with rasterio.open(DST / f.parent.name / f.name, "w", **profile) as d:
            d.write(s.read())
            d.update_tags(**s.tags())
print(f"wrote {DST}")

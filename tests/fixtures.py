"""Write small rasters in delivered layouts for reader tests (names, dtypes, nodata, tags as given)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_raster(path, data: np.ndarray, crs: str = "EPSG:32633", origin=(500000.0, 5000000.0), res: float = 10.0,
                 nodata=None, tags: dict | None = None, band_tags: list[dict] | None = None,
                 descriptions: list[str] | None = None, driver: str = "GTiff", **profile) -> Path:
    """data (H, W) or (C, H, W) -> a raster at `path` with that dtype. Returns the path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                  dtype=data.dtype, crs=crs, transform=from_origin(origin[0], origin[1], res, res), **profile)
    if nodata is not None:
        kwargs["nodata"] = nodata
    with rasterio.open(path, "w", **kwargs) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
        for i, t in enumerate(band_tags or [], start=1):
            dst.update_tags(i, **t)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path

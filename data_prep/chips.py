"""Cut a scene into chips: a regular grid of windows, filtered by valid-pixel fraction."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from data_prep.sources.scene import ProductError, Scene, Window


def grid(height: int, width: int, size: int, stride: int) -> list[Window]:
    """Windows of size x size, every `stride` pixels, fully inside the raster (row-major)."""
    if size > height or size > width:
        raise ProductError(f"chip size {size} is larger than the product ({height}x{width} pixels)")
    return [Window(r, c, size, size)
            for r in range(0, height - size + 1, stride)
            for c in range(0, width - size + 1, stride)]


def chip_key(scene: Scene, win: Window, times: list[str] | None = None) -> str:
    """Stable key from sensor, CRS, global grid cell of the chip origin and acquisition time.

    The cell is the chip origin in map units divided by the pixel size (a global grid anchored
    at the CRS origin), so keys are unique in any CRS (metres or degrees) and never depend on
    run order: re-runs and other nodes produce the same key for the same chip. WebDataset
    splits keys at the first dot, so keys hold no dots. `times` (a multi-date series: its first
    and last time) replaces the scene's own time with those times joined by "_".
    """
    a, b, c, d, e, f = scene.transform
    x = c + a * win.col + b * win.row
    y = f + d * win.col + e * win.row
    col, row = round(x / abs(a)), round(y / abs(e))
    crs = scene.crs.replace("EPSG:", "epsg") if scene.crs.startswith("EPSG:") else "crs"
    t = "_".join(s.replace("-", "").replace(":", "") for s in (times or [scene.time]))
    return f"{scene.sensor}_{crs}_x{col}_y{row}_{t}".replace("-", "m")


def chip_lonlat(scene: Scene, win: Window) -> list[float]:
    a, b, c, d, e, f = scene.transform
    col, row = win.col + win.width / 2, win.row + win.height / 2
    x, y = c + a * col + b * row, f + d * col + e * row
    lon, lat = warp_transform(CRS.from_string(scene.crs), CRS.from_epsg(4326), [x], [y])
    return [round(float(lon[0]), 6), round(float(lat[0]), 6)]


def chip_transform(scene: Scene, win: Window) -> list[float]:
    a, b, c, d, e, f = scene.transform
    return [a, b, c + a * win.col + b * win.row, d, e, f + d * win.col + e * win.row]


def cut(scene: Scene, size: int, stride: int, min_valid: float) -> Iterator[tuple[dict | None, float]]:
    """Yield (sample or None if dropped, valid fraction) for every grid window."""
    for win in grid(scene.height, scene.width, size, stride):
        stored, valid = scene.read(win)
        frac = float(valid.mean())
        if frac < min_valid:
            yield None, frac
            continue
        yield {
            "key": chip_key(scene, win),
            "image": stored[None],                 # (T=1, C, H, W)
            "valid": valid[None],                  # (T=1, H, W)
            "sensor": scene.sensor,
            "bands": scene.bands,
            "wavelengths_nm": scene.wavelengths_nm,
            "gsd_m": scene.gsd_m,
            "times": [scene.time],
            "lonlat": chip_lonlat(scene, win),
            "crs": scene.crs,
            "transform": chip_transform(scene, win),
            "product_ids": [scene.product_id],
            "scale": scene.scale,
            "offset": scene.offset,
            "units": scene.units,
            "dtype": str(np.dtype(stored.dtype)),
        }, frac

"""Raster helpers shared by the source readers: open, check alignment, read a window onto a grid.

Every reader describes its target grid (CRS, transform, size) and reads each band's window
onto it: bands at the grid's resolution are read directly, coarser or finer ones are resampled
over the same ground window. All rasterio/GDAL failures become ProductError naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window as RioWindow
from rasterio.windows import from_bounds

from data_prep.sources.scene import ProductError, Window

RESAMPLING = {"bilinear": Resampling.bilinear, "nearest": Resampling.nearest, "cubic": Resampling.cubic,
              "average": Resampling.average}


@dataclass(frozen=True)
class Grid:
    crs: str
    transform: tuple          # affine (a, b, c, d, e, f)
    width: int
    height: int

    @classmethod
    def of(cls, src) -> "Grid":
        return cls(src.crs.to_string() if src.crs else "", tuple(src.transform)[:6], src.width, src.height)

    @property
    def res(self) -> float:
        return abs(self.transform[0])

    def affine(self):
        return rasterio.Affine(*self.transform)

    def coarsened(self, factor: int) -> "Grid":
        """The same footprint at `factor` times coarser pixels."""
        a, b, c, d, e, f = self.transform
        return Grid(self.crs, (a * factor, b, c, d, e * factor, f), self.width // factor, self.height // factor)


def open_raster(path: str):
    """rasterio dataset, or ProductError naming the file."""
    try:
        return rasterio.open(path)
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ProductError(f"{path}: cannot read raster: {err}") from None


def check_aligned(sources: dict[str, object], grid: Grid, names: dict[str, str] | None = None) -> None:
    """All rasters must share the grid's CRS and footprint (within one of their own pixels)."""
    a, _, c, _, e, f = grid.transform
    ref_bounds = (c, f + e * grid.height, c + a * grid.width, f)
    for key, src in sources.items():
        label = (names or {}).get(key, key)
        crs = src.crs.to_string() if src.crs else ""
        if crs != grid.crs:
            raise ProductError(f"{label}: CRS {crs or 'missing'} differs from the product's {grid.crs}")
        tol = max(abs(src.res[0]), abs(src.res[1]))
        if any(abs(x - y) > tol for x, y in zip(src.bounds, ref_bounds)):
            raise ProductError(f"{label}: footprint {tuple(round(v, 3) for v in src.bounds)} differs from the "
                               f"product's {tuple(round(v, 3) for v in ref_bounds)} (mismatched shape or position)")


def read_on_grid(src, grid: Grid, win: Window, resampling: str = "bilinear", band: int = 1,
                 label: str | None = None) -> np.ndarray:
    """Window `win` of `grid`, read from band `band` of `src` (resampled if its grid differs)."""
    rw = RioWindow(win.col, win.row, win.width, win.height)
    shape = (win.height, win.width)
    try:
        if Grid.of(src) == grid:
            return src.read(band, window=rw)
        bounds = rasterio.windows.bounds(rw, grid.affine())
        sw = from_bounds(*bounds, transform=src.transform)
        return src.read(band, window=sw, out_shape=shape, resampling=RESAMPLING[resampling])
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ProductError(f"{label or src.name}: read failed (truncated or corrupt raster?): {err}") from None


def overview(src, band: int = 1, size: int = 256) -> np.ndarray:
    """A decimated nearest-neighbour read of a whole band (for data-driven decisions and scans)."""
    h, w = min(src.height, size), min(src.width, size)
    try:
        return src.read(band, out_shape=(h, w), resampling=Resampling.nearest)
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ProductError(f"{src.name}: read failed (truncated or corrupt raster?): {err}") from None


# Source pixels (per axis, relative to floor(u - 0.5) where u is the source coordinate of a target
# pixel centre) whose values the resampling kernel mixes into the target pixel when upsampling.
KERNEL_TAPS = {"nearest": None, "bilinear": (0, 1), "cubic": (-1, 0, 1, 2), "average": (0, 1)}


def _taps(u: np.ndarray, n: int, resampling: str) -> list[np.ndarray]:
    if KERNEL_TAPS[resampling] is None:
        return [np.clip(np.floor(u), 0, n - 1).astype(np.int64)]
    base = np.floor(u - 0.5)
    return [np.clip(base + o, 0, n - 1).astype(np.int64) for o in KERNEL_TAPS[resampling]]


def upsampled_invalid(src, grid: Grid, win: Window, invalid: Callable[[np.ndarray], np.ndarray], resampling: str,
                      band: int = 1, label: str | None = None) -> np.ndarray | None:
    """Invalid mask (h, w) on the target window for a band COARSER than the grid (else None).

    One native-resolution read: a target pixel is invalid when any source pixel the resampling
    kernel mixes into it is invalid (nearest: the pixel under its centre), so no value blended
    with nodata counts as real.
    """
    sa, sb, sc, sd, se, sf = tuple(src.transform)[:6]
    a, b, c, d, e, f = grid.transform
    if sb or sd or b or d or abs(sa) <= abs(a) or abs(se) <= abs(e):
        return None
    xs = c + a * (win.col + np.arange(win.width) + 0.5)
    ys = f + e * (win.row + np.arange(win.height) + 0.5)
    cols = _taps((xs - sc) / sa, src.width, resampling)
    rows = _taps((ys - sf) / se, src.height, resampling)
    c0, c1 = min(t.min() for t in cols), max(t.max() for t in cols) + 1
    r0, r1 = min(t.min() for t in rows), max(t.max() for t in rows) + 1
    try:
        block = src.read(band, window=RioWindow(int(c0), int(r0), int(c1 - c0), int(r1 - r0)))
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ProductError(f"{label or src.name}: read failed (truncated or corrupt raster?): {err}") from None
    bad = invalid(block)
    out = np.zeros((win.height, win.width), dtype=bool)
    for r in rows:
        for cc in cols:
            out |= bad[np.ix_(r - r0, cc - c0)]
    return out


def stack_reader(bands: list[str], sources: dict, labels: dict[str, str], grid: Grid, resampling: str,
                 dtype, band_invalid: Callable[[str, np.ndarray], np.ndarray], masks: list[tuple] = ()):
    """Scene.read for a stack of single-band rasters: window -> (stored (C,h,w) `dtype`, valid (h,w)).

    Each band is read onto `grid` (resampled when its own grid differs). Resampling never makes
    an invalid pixel count as valid: a band coarser than the grid is checked at its native
    resolution on every source pixel the kernel mixes in (`upsampled_invalid`); any other
    resampled band by a nearest-neighbour read. A pixel is invalid where
    `band_invalid(band, values)` is True for any band, or a mask says so. `masks`: tuples
    (dataset, label, band index, fn(values) -> invalid bool array).
    """
    masks = list(masks)

    def read(win: Window) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(bands), win.height, win.width), dtype=dtype)
        valid = np.ones((win.height, win.width), dtype=bool)
        for i, b in enumerate(bands):
            src = sources[b]
            out[i] = read_on_grid(src, grid, win, resampling, label=labels[b])
            if Grid.of(src) == grid:
                valid &= ~band_invalid(b, out[i])
                continue
            bad = upsampled_invalid(src, grid, win, lambda v, b=b: band_invalid(b, v), resampling, label=labels[b])
            if bad is None:
                bad = band_invalid(b, read_on_grid(src, grid, win, "nearest", label=labels[b]))
            valid &= ~bad
        for src, label, band, invalid in masks:
            valid &= ~invalid(read_on_grid(src, grid, win, "nearest", band=band, label=label))
        return out, valid

    return read

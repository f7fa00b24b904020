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
                 label: str | None = None, same_grid: bool | None = None) -> np.ndarray:
    """Window `win` of `grid`, read from band `band` of `src` (resampled if its grid differs;
    pass `same_grid` when already known, to skip the comparison)."""
    rw = RioWindow(win.col, win.row, win.width, win.height)
    shape = (win.height, win.width)
    try:
        if same_grid if same_grid is not None else Grid.of(src) == grid:
            return src.read(band, window=rw)
        bounds = rasterio.windows.bounds(rw, grid.affine())
        sw = from_bounds(*bounds, transform=src.transform)
        return src.read(band, window=sw, out_shape=shape, resampling=RESAMPLING[resampling])
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ProductError(f"{label or src.name}: read failed (truncated or corrupt raster?): {err}") from None


def overview(src, band: int = 1, size: int = 256, grid: int = 4) -> np.ndarray:
    """A sample of a band's pixels (1-D) for data-driven decisions: a grid x grid pattern of small
    windows spread over the raster, about size x size pixels in all. A decimated read of the whole
    band would decode every block of a large file that has no overviews."""
    k = max(1, min(size // grid, src.height // grid, src.width // grid))
    rows = np.linspace(0, src.height - k, grid).astype(int)
    cols = np.linspace(0, src.width - k, grid).astype(int)
    try:
        return np.concatenate([src.read(band, window=RioWindow(int(c), int(r), k, k)).ravel()
                               for r in rows for c in cols])
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


class StripCache:
    """Native-resolution rows of a raster band, read in full-width strips and reused by the next
    windows of the same chip row (chips are cut row-major). Holds one strip per band."""

    def __init__(self, src, invalid: Callable[[np.ndarray], np.ndarray], band: int = 1, label: str | None = None,
                 min_rows: int = 64):
        self.src, self.invalid, self.band, self.label, self.min_rows = src, invalid, band, label, min_rows
        self.r0, self.bad = 0, None

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Invalid mask of native rows [r0, r1) (clipped to the raster), all columns."""
        if self.bad is None or r0 < self.r0 or r1 > self.r0 + self.bad.shape[0]:
            r_end = min(self.src.height, max(r1, r0 + self.min_rows))
            try:
                block = self.src.read(self.band, window=RioWindow(0, r0, self.src.width, r_end - r0))
            except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
                raise ProductError(f"{self.label or self.src.name}: read failed (truncated or corrupt raster?): "
                                   f"{err}") from None
            self.r0, self.bad = r0, self.invalid(block)
            self.any_bad = bool(self.bad.any())
        return self.bad[r0 - self.r0:r1 - self.r0]


def upsampled_invalid(src, grid: Grid, win: Window, invalid: Callable[[np.ndarray], np.ndarray], resampling: str,
                      band: int = 1, label: str | None = None, cache: StripCache | None = None) -> np.ndarray | None:
    """Invalid mask (h, w) on the target window for a band COARSER than the grid (else None).

    Native-resolution data (from `cache` when given): a target pixel is invalid when any source
    pixel the resampling kernel mixes into it is invalid (nearest: the pixel under its centre),
    so no value blended with nodata counts as real.
    """
    sa, sb, sc, sd, se, sf = tuple(src.transform)[:6]
    a, b, c, d, e, f = grid.transform
    if sb or sd or b or d or abs(sa) <= abs(a) or abs(se) <= abs(e):
        return None
    xs = c + a * (win.col + np.arange(win.width) + 0.5)
    ys = f + e * (win.row + np.arange(win.height) + 0.5)
    cols = _taps((xs - sc) / sa, src.width, resampling)
    rows = _taps((ys - sf) / se, src.height, resampling)
    r0, r1 = int(min(t.min() for t in rows)), int(max(t.max() for t in rows)) + 1
    strip = cache or StripCache(src, invalid, band, label)
    bad = strip.rows(r0, r1)
    if not strip.any_bad:                # clean strip (the common case): nothing to gather
        return np.zeros((win.height, win.width), dtype=bool)
    # the kernel is separable, so OR over column taps on the few native rows, then over row taps
    by_col = np.logical_or.reduce([bad.take(cc, axis=1) for cc in cols])
    return np.logical_or.reduce([by_col.take(r - r0, axis=0) for r in rows])


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
    same = {b: Grid.of(sources[b]) == grid for b in bands}            # computed once, not per window
    strips = {b: StripCache(sources[b], lambda v, b=b: band_invalid(b, v), 1, labels[b]) for b in bands if not same[b]}

    def read(win: Window) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(bands), win.height, win.width), dtype=dtype)
        valid = np.ones((win.height, win.width), dtype=bool)
        for i, b in enumerate(bands):
            src = sources[b]
            out[i] = read_on_grid(src, grid, win, resampling, label=labels[b], same_grid=same[b])
            if same[b]:
                valid &= ~band_invalid(b, out[i])
                continue
            bad = upsampled_invalid(src, grid, win, strips[b].invalid, resampling, label=labels[b], cache=strips[b])
            if bad is None:
                bad = band_invalid(b, read_on_grid(src, grid, win, "nearest", label=labels[b], same_grid=False))
            valid &= ~bad
        for src, label, band, invalid in masks:
            valid &= ~invalid(read_on_grid(src, grid, win, "nearest", band=band, label=label))
        return out, valid

    return read

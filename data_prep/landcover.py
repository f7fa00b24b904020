"""Land-cover fractions per chip, from a categorical land-cover raster.

A land-cover map (ESA WorldCover, Google Dynamic World `label`, CORINE Land Cover, or any
raster of integer class codes) in any CRS and at any resolution is reprojected onto exactly a
chip's grid with NEAREST resampling, and each chip gets the share of each of its K classes:

    fractions[k] = (chip pixels of class codes[k]) / (chip pixels that carry a known class)
    coverage     = (chip pixels that carry a known class) / (all chip pixels)

A chip pixel carries no known class when the map has nodata there (the raster's nodata value
or mask), when it lies outside the map, or when the map's code is not one of `codes`. Only the
part of the map that the chip needs is read (a window around the chip's footprint, padded by
two map pixels), never the whole map.

`LandcoverMap.fractions` always returns the values; `LandcoverMap.entry` applies
`min_coverage`: a chip whose coverage is below it gets no fractions (None). What happens to
such a chip (keep it without `landcover`, or drop it) is the caller's decision.

Class tables (code, name), facts from the producers' documentation:
  worldcover     ESA WorldCover 10 m (v100 2020 / v200 2021) map classes 10..100; 0 = no data.
  dynamic_world  Google Dynamic World V1 `label` band, class indices 0..8 (0 = water is a class:
                 the raster must not declare 0 as nodata).
  corine         CORINE Land Cover level-3 nomenclature, the 44 three-digit codes 111..523 (as
                 in BigEarthNet reference maps and the Earth Engine CORINE collection). The EEA's
                 own CLC raster stores grid codes 1..44 (48 = no data) instead: give those with
                 explicit `codes` and `names`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window as RioWindow
from rasterio.windows import from_bounds

from data_prep.sources import ProductError, stage

PRESETS: dict[str, list[tuple[int, str]]] = {
    "worldcover": [
        (10, "Tree cover"),
        (20, "Shrubland"),
        (30, "Grassland"),
        (40, "Cropland"),
        (50, "Built-up"),
        (60, "Bare / sparse vegetation"),
        (70, "Snow and ice"),
        (80, "Permanent water bodies"),
        (90, "Herbaceous wetland"),
        (95, "Mangroves"),
        (100, "Moss and lichen"),
    ],
    "dynamic_world": [
        (0, "water"),
        (1, "trees"),
        (2, "grass"),
        (3, "flooded_vegetation"),
        (4, "crops"),
        (5, "shrub_and_scrub"),
        (6, "built"),
        (7, "bare"),
        (8, "snow_and_ice"),
    ],
    "corine": [
        (111, "Continuous urban fabric"),
        (112, "Discontinuous urban fabric"),
        (121, "Industrial or commercial units"),
        (122, "Road and rail networks and associated land"),
        (123, "Port areas"),
        (124, "Airports"),
        (131, "Mineral extraction sites"),
        (132, "Dump sites"),
        (133, "Construction sites"),
        (141, "Green urban areas"),
        (142, "Sport and leisure facilities"),
        (211, "Non-irrigated arable land"),
        (212, "Permanently irrigated land"),
        (213, "Rice fields"),
        (221, "Vineyards"),
        (222, "Fruit trees and berry plantations"),
        (223, "Olive groves"),
        (231, "Pastures"),
        (241, "Annual crops associated with permanent crops"),
        (242, "Complex cultivation patterns"),
        (243, "Land principally occupied by agriculture, with significant areas of natural vegetation"),
        (244, "Agro-forestry areas"),
        (311, "Broad-leaved forest"),
        (312, "Coniferous forest"),
        (313, "Mixed forest"),
        (321, "Natural grasslands"),
        (322, "Moors and heathland"),
        (323, "Sclerophyllous vegetation"),
        (324, "Transitional woodland-shrub"),
        (331, "Beaches, dunes, sands"),
        (332, "Bare rocks"),
        (333, "Sparsely vegetated areas"),
        (334, "Burnt areas"),
        (335, "Glaciers and perpetual snow"),
        (411, "Inland marshes"),
        (412, "Peat bogs"),
        (421, "Salt marshes"),
        (422, "Salines"),
        (423, "Intertidal flats"),
        (511, "Water courses"),
        (512, "Water bodies"),
        (521, "Coastal lagoons"),
        (522, "Estuaries"),
        (523, "Sea and ocean"),
    ],
}

PAD_PIXELS = 2          # map pixels read beyond the chip footprint on every side


@dataclass
class LandcoverSpec:
    path: str = ""                    # land-cover raster: local path or fsspec URL ("" = no land cover)
    classes: str = "worldcover"       # preset class table: worldcover | dynamic_world | corine
    codes: list[int] = field(default_factory=list)   # explicit class codes (override the preset)
    names: list[str] = field(default_factory=list)   # class names (default: the preset's names)
    min_coverage: float = 0.5         # chips with a smaller share of known-class pixels get no fractions
    keep_uncovered: bool = False      # keep such chips (without `landcover`) instead of dropping them

    def __post_init__(self):
        if self.classes not in PRESETS:
            raise ValueError(f"classes {self.classes!r} unknown (known presets: {', '.join(PRESETS)})")
        if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in self.codes):
            raise ValueError(f"codes must be integers, got {self.codes!r}")
        if len(set(self.codes)) != len(self.codes):
            dup = sorted({c for c in self.codes if self.codes.count(c) > 1})
            raise ValueError(f"codes has duplicates: {dup}")
        if self.codes and self.names and len(self.names) != len(self.codes):
            raise ValueError(f"names has {len(self.names)} entries for {len(self.codes)} codes")
        if not self.codes and self.names and len(self.names) != len(PRESETS[self.classes]):
            raise ValueError(f"names has {len(self.names)} entries but preset {self.classes!r} has "
                             f"{len(PRESETS[self.classes])} classes (give codes too to choose other classes)")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage}")

    def table(self) -> tuple[list[int], list[str]]:
        """(codes, names) in class order: explicit codes, else the preset's; names explicit, else the
        preset's name of each code (`class_<code>` for a code the preset does not know)."""
        preset = dict(PRESETS[self.classes])
        codes = [int(c) for c in self.codes] if self.codes else list(preset)
        names = list(self.names) if self.names else [preset.get(c, f"class_{c}") for c in codes]
        return codes, names


class LandcoverMap:
    """A land-cover raster, read lazily per chip. Picklable (reopens the raster after unpickling)."""

    def __init__(self, spec: LandcoverSpec):
        if not spec.path:
            raise ProductError("land cover: no path given (landcover.path is empty)")
        self.spec = spec
        self.codes, self.names = spec.table()
        if len(self.codes) >= np.iinfo(np.uint16).max:
            raise ProductError(f"{spec.path}: too many land-cover classes ({len(self.codes)})")
        self._sorted = np.array(sorted(self.codes), dtype=np.int64)
        self._order = np.array([self.codes.index(c) for c in sorted(self.codes)], dtype=np.int64)
        self._local = None
        self._src = None
        self._dataset()            # open now so that a bad file fails before any chip

    # -- file handling ----------------------------------------------------------------------
    def _dataset(self):
        if self._src is None:
            try:
                self._local = stage(self.spec.path)
            except (OSError, ValueError) as err:
                raise ProductError(f"{self.spec.path}: cannot fetch land-cover map: {err}") from None
            try:
                src = rasterio.open(self._local)
            except RasterioError as err:
                raise ProductError(f"{self.spec.path}: cannot read land-cover raster: {err}") from None
            if src.crs is None:
                src.close()
                raise ProductError(f"{self.spec.path}: land-cover raster has no CRS")
            if src.count < 1:
                src.close()
                raise ProductError(f"{self.spec.path}: land-cover raster has no band")
            if np.dtype(src.dtypes[0]).kind not in "iu":
                src.close()
                raise ProductError(f"{self.spec.path}: land-cover raster must hold integer class codes, "
                                   f"got {src.dtypes[0]}")
            self._src = src
        return self._src

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_src"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- per chip -----------------------------------------------------------------------------
    def _read_window(self, win: RioWindow) -> np.ma.MaskedArray:
        """Band 1 of the map over `win` (masked where the raster has nodata)."""
        try:
            return self._dataset().read(1, window=win, masked=True)
        except RasterioError as err:
            raise ProductError(f"{self.spec.path}: read failed (truncated or corrupt raster?): {err}") from None

    def _class_index(self, data: np.ma.MaskedArray, dtype) -> np.ndarray:
        """Map codes -> class index 0..K-1; nodata and unknown codes -> K."""
        k = len(self.codes)
        values = np.asarray(data.data, dtype=np.int64)
        pos = np.clip(np.searchsorted(self._sorted, values), 0, k - 1)
        known = (self._sorted[pos] == values) & ~np.ma.getmaskarray(data)
        out = np.full(values.shape, k, dtype=dtype)
        out[known] = self._order[pos[known]]
        return out

    def class_map(self, crs: str, transform, height: int, width: int) -> np.ndarray:
        """Class index (h, w) of every chip pixel on the chip grid: 0..K-1, or K where no known class."""
        k = len(self.codes)
        dtype = np.uint8 if k < np.iinfo(np.uint8).max else np.uint16
        out = np.full((height, width), k, dtype=dtype)
        src = self._dataset()
        try:
            dst_crs = CRS.from_user_input(crs)
        except CRSError as err:
            raise ProductError(f"land cover: chip CRS {crs!r} not understood: {err}") from None
        dst_aff = rasterio.Affine(*tuple(transform)[:6])
        xs, ys = zip(*(dst_aff * (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))))
        try:
            bounds = transform_bounds(dst_crs, src.crs, min(xs), min(ys), max(xs), max(ys), densify_pts=21)
        except (CRSError, RasterioError, ValueError):
            return out                                # chip outside the map CRS's domain: nothing covered
        if not all(map(math.isfinite, bounds)):
            return out
        win = from_bounds(*bounds, transform=src.transform)
        col0 = max(0, math.floor(min(win.col_off, win.col_off + win.width)) - PAD_PIXELS)
        row0 = max(0, math.floor(min(win.row_off, win.row_off + win.height)) - PAD_PIXELS)
        col1 = min(src.width, math.ceil(max(win.col_off, win.col_off + win.width)) + PAD_PIXELS)
        row1 = min(src.height, math.ceil(max(win.row_off, win.row_off + win.height)) + PAD_PIXELS)
        if col1 <= col0 or row1 <= row0:
            return out                                # chip outside the map: nothing covered
        read_win = RioWindow(col0, row0, col1 - col0, row1 - row0)
        index = self._class_index(self._read_window(read_win), dtype)
        try:
            reproject(index, out, src_transform=src.window_transform(read_win), src_crs=src.crs,
                      dst_transform=dst_aff, dst_crs=dst_crs, src_nodata=k, dst_nodata=k,
                      resampling=Resampling.nearest)
        except RasterioError as err:
            raise ProductError(f"{self.spec.path}: cannot reproject onto the chip grid: {err}") from None
        return out

    def fractions(self, crs: str, transform, height: int, width: int) -> tuple[np.ndarray, float]:
        """(fractions (K,) float32 over the chip's known-class pixels, coverage in [0, 1]).

        Fractions are all zero when coverage is 0. `transform` is the chip's affine (a, b, c, d, e, f).
        """
        k = len(self.codes)
        cls = self.class_map(crs, transform, height, width)
        counts = np.bincount(cls.ravel(), minlength=k + 1)[:k].astype(np.float64)
        covered = counts.sum()
        coverage = float(covered / (height * width)) if height * width else 0.0
        fractions = (counts / covered if covered else counts).astype(np.float32)
        return fractions, coverage

    def entry(self, crs: str, transform, height: int, width: int) -> dict | None:
        """The sample's `landcover` value, {"fractions": [K], "coverage": c} (6 decimals), or None
        when the chip's coverage is below `min_coverage` or zero (the caller then leaves
        `landcover` out of the sample or drops the chip)."""
        fractions, coverage = self.fractions(crs, transform, height, width)
        if coverage < self.spec.min_coverage or coverage == 0.0:
            return None
        return {"fractions": [round(float(f), 6) for f in fractions], "coverage": round(coverage, 6)}

    def describe(self) -> dict:
        """For the manifest: where the classes come from and how chips were labelled."""
        return {"source": self.spec.path, "codes": list(self.codes), "names": list(self.names),
                "resampling": "nearest", "min_coverage": self.spec.min_coverage}

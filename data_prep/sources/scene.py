"""Scene: one product of any source, as the rest of data_prep sees it.

A Scene is lazy: `read(window)` returns only the requested window, already on the scene's
target grid (`gsd_m`), so a whole tile never has to sit in memory.

Stored values are integers; physical value = stored * scale[c] + offset[c]
(surface reflectance for optical sensors). Keeping integers on disk is compact and makes the
statistics exact (see stats.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class ProductError(Exception):
    """A product cannot be used; the message names the file and the problem."""


@dataclass
class Window:
    """Pixel window on the scene's target grid."""

    row: int
    col: int
    height: int
    width: int


@dataclass
class Scene:
    product_id: str
    path: str
    sensor: str                     # one band set, e.g. sentinel2_l2a, landsat_oli (statistics group by it)
    bands: list[str]
    wavelengths_nm: list[float]
    gsd_m: float                    # target grid spacing
    crs: str                        # WKT or "EPSG:xxxx"
    transform: tuple                # affine (a, b, c, d, e, f) of the target grid
    height: int
    width: int
    time: str                       # UTC ISO 8601 acquisition time
    scale: list[float]              # per band: physical = stored * scale + offset
    offset: list[float]
    dtype: str                      # stored dtype, e.g. "uint16"
    units: str                      # "surface reflectance" | "backscatter dB" | ...
    reader: Callable[[Window], tuple[np.ndarray, np.ndarray]] = field(repr=False)
    radiometry: dict = field(default_factory=dict)   # how scale/offset were decided
    files: list[str] = field(default_factory=list)    # every file the product reads

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Returns stored (C, h, w) of `dtype` and valid (h, w) bool."""
        return self.reader(window)

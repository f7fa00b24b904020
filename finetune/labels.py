"""Label sources: chip -> class index, with the class names travelling alongside.

HONESTY NOTE. eofm does not bundle a hand-labelled set yet. The only source here,
``ndvi_cover``, derives a vegetation-cover class from the chip's OWN reflectance:

  per valid pixel   NDVI = (B08 - B04) / (B08 + B04)
  pixel class       0 bare_or_built      NDVI <= 0.2
                    1 sparse_vegetation  0.2 < NDVI <= 0.5
                    2 dense_vegetation   NDVI > 0.5
  chip label        the class covering most of the chip's valid pixels (ties -> lower class)

Because the label is a simple function of the encoder's own input, a good score only shows
that the features carry spectral information and that the pipeline (export -> data ->
protocols -> metrics) works end to end. It is a pipeline check, NOT a benchmark, and must not
be reported as land-cover accuracy.

To add a source, register a `LabelSource` in `LABELS`; its `label` callable gets one frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LabelSource:
    name: str
    classes: tuple[str, ...]
    description: str
    # label(physical (C, H, W) float32, valid (H, W) bool, bands list[str]) -> class index,
    # or -1 when the chip cannot be labelled (the chip is then left out and counted).
    label: Callable[[np.ndarray, np.ndarray, list[str]], int]


NDVI_EDGES = (0.2, 0.5)  # upper bounds (inclusive) of classes 0 and 1


def ndvi(physical: np.ndarray, bands: list[str]) -> np.ndarray:
    """physical (..., C, H, W) surface reflectance -> NDVI (..., H, W); NaN where B08+B04 <= 0.

    Why NaN: with a -0.1 reflectance offset (Sentinel-2 baseline 04.00) dark pixels can have
    B08 + B04 <= 0, where the ratio is meaningless rather than large.
    """
    missing = [b for b in ("B04", "B08") if b not in bands]
    if missing:
        raise ValueError(f"ndvi_cover needs bands B04 and B08; the dataset lacks {', '.join(missing)}")
    red = physical[..., bands.index("B04"), :, :].astype(np.float64)
    nir = physical[..., bands.index("B08"), :, :].astype(np.float64)
    total = nir + red
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, (nir - red) / total, np.nan)


def ndvi_cover(physical: np.ndarray, valid: np.ndarray, bands: list[str]) -> int:
    """Majority NDVI class of one frame: physical (C, H, W), valid (H, W) -> 0, 1, 2 or -1."""
    v = ndvi(physical, bands)
    ok = valid & np.isfinite(v)
    if not ok.any():
        return -1
    # right=True: a pixel equal to an edge belongs to the class below it (NDVI <= 0.2 is bare).
    pixel_class = np.digitize(v[ok], NDVI_EDGES, right=True)
    return int(np.bincount(pixel_class, minlength=3).argmax())


LABELS: dict[str, LabelSource] = {
    "ndvi_cover": LabelSource(
        name="ndvi_cover",
        classes=("bare_or_built", "sparse_vegetation", "dense_vegetation"),
        description=(
            "Vegetation-cover class derived from the chip's own reflectance: per valid pixel "
            "NDVI = (B08 - B04) / (B08 + B04); 0 bare_or_built (NDVI <= 0.2), 1 sparse_vegetation "
            "(0.2 < NDVI <= 0.5), 2 dense_vegetation (NDVI > 0.5); the chip label is the class "
            "covering most of its valid pixels. A pipeline check that the features carry spectral "
            "information, NOT a benchmark."
        ),
        label=ndvi_cover,
    ),
}


def get(name: str) -> LabelSource:
    if name not in LABELS:
        raise ValueError(f"label source {name!r} unknown (known: {', '.join(LABELS)})")
    return LABELS[name]

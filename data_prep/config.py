"""The prep recipe (configs/prep/*.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data_prep.landcover import LandcoverSpec


@dataclass
class SourceSpec:
    kind: str = "auto"                      # auto (detect each product) or a key of data_prep.sources.SOURCES
    paths: list[str] = field(default_factory=list)   # products, folders holding them, or fsspec URLs
    resampling: Literal["bilinear", "nearest", "cubic"] = "bilinear"   # coarse bands -> 10 m

    def __post_init__(self):
        from data_prep.sources import SOURCES
        if self.kind != "auto" and self.kind not in SOURCES:
            raise ValueError(f"kind {self.kind!r} unknown (known: auto, {', '.join(SOURCES)})")
        if not self.paths:
            raise ValueError("paths is empty: give product folders or folders that contain them")


@dataclass
class ChipOverride:
    size: int | None = None
    stride: int | None = None
    min_valid_fraction: float | None = None
    gsd_m: float | None = None


@dataclass
class ChipSpec:
    size: int = 128                  # pixels on the target grid
    stride: int = 0                  # 0 = size (no overlap)
    min_valid_fraction: float = 0.9  # drop chips with fewer valid pixels (clouds, shadow, nodata are invalid)
    gsd_m: float = 0.0               # target ground sample distance in metres; 0 = each product's own grid
    per_sensor: dict[str, ChipOverride] = field(default_factory=dict)   # e.g. {sentinel1: {size: 64, gsd_m: 20}}

    def __post_init__(self):
        for spec in [self, *self.per_sensor.values()]:
            if spec.size is not None and spec.size <= 0:
                raise ValueError(f"size must be positive, got {spec.size}")
            if spec.stride is not None and spec.stride < 0:
                raise ValueError(f"stride must be >= 0, got {spec.stride}")
            if spec.min_valid_fraction is not None and not 0.0 <= spec.min_valid_fraction <= 1.0:
                raise ValueError(f"min_valid_fraction must be in [0, 1], got {spec.min_valid_fraction}")
            if spec.gsd_m is not None and spec.gsd_m < 0:
                raise ValueError(f"gsd_m must be >= 0, got {spec.gsd_m}")

    def for_sensor(self, sensor: str) -> "ChipSpec":
        """These settings with the sensor's overrides applied."""
        o = self.per_sensor.get(sensor, ChipOverride())
        pick = lambda mine, theirs: mine if theirs is None else theirs  # noqa: E731
        return ChipSpec(pick(self.size, o.size), pick(self.stride, o.stride),
                        pick(self.min_valid_fraction, o.min_valid_fraction), pick(self.gsd_m, o.gsd_m))


@dataclass
class OutputSpec:
    path: str = "runs/prep"              # local folder or fsspec URL
    format: Literal["webdataset", "zarr"] = "webdataset"   # tar shards, or groups of one Zarr v3 store
    target_shard_mb: float = 256.0       # shards are sealed between products past this size
    overwrite: bool = False              # replace a different dataset already at `path`
    zarr_compression: Literal["lz4", "zstd", "none"] = "lz4"   # Blosc codec of zarr chunks: lz4 decodes ~2x faster than zstd (training reads), zstd is ~1.4x smaller


@dataclass
class SeriesSpec:
    mode: Literal["none", "all", "spread", "seasons"] = "none"   # none: one sample per product and date
    max_frames: int = 0               # cap on frames per sample (0 = no cap; required for spread)
    min_frames: int = 2               # chips with fewer valid frames are dropped
    out_of_range: Literal["invalid", "error"] = "invalid"   # a frame value the first frame's dtype cannot hold

    def __post_init__(self):
        if self.mode == "spread" and self.max_frames <= 0:
            raise ValueError("mode spread needs max_frames > 0 (how many dates to spread over the year)")
        if self.min_frames < 1 or self.max_frames < 0:
            raise ValueError(f"min_frames must be >= 1 and max_frames >= 0, got {self.min_frames}, {self.max_frames}")


@dataclass
class PrepConfig:
    sources: list[SourceSpec] = field(default_factory=list)
    chips: ChipSpec = field(default_factory=ChipSpec)
    series: SeriesSpec = field(default_factory=SeriesSpec)
    landcover: LandcoverSpec = field(default_factory=LandcoverSpec)
    output: OutputSpec = field(default_factory=OutputSpec)

    def __post_init__(self):
        if not self.sources:
            raise ValueError("sources is empty: the recipe must name at least one source")

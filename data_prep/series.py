"""Multi-date series: products of one location on one grid, grouped, thinned and cut together.

The flow for the prep engine:
  1. `group_by_footprint(items)`: products (one dict each: sensor, crs, transform, width,
     height, time) that share a grid form one group, each sorted by time.
  2. `select_frames(times, mode, max_frames, lat)`: which frames of a group to keep
     ("all", "spread" over the year, or one per meteorological "seasons").
  3. `cut_series(scenes, size, stride, min_valid, min_frames)`: chips of the kept scenes, read
     window by window; each sample holds the frames whose valid fraction reaches `min_valid`,
     (T, C, H, W), if at least `min_frames` remain.

Same grid = same sensor, CRS, pixel size and rotation, same size, and origins within a quarter
pixel (`ORIGIN_TOLERANCE_PX`).

Radiometry across a series. The sample contract holds one scale/offset per band, but products
of one series can differ (Sentinel-2 L2A before processing baseline 04.00 has offset 0, after it
-0.1 with the same 1e-4 scale). `cut_series` converts every frame to the scale/offset of the
series' FIRST frame (earliest time), exactly, in integers:
    physical = s_i * x_i + o_i = s_0 * (m * x_i + k) + o_0,   m = s_i / s_0,  k = (o_i - o_0) / s_0
which is exact when m is a positive integer (normally 1: equal scales) and k an integer number
of DN steps (S2: k = -1000 for an offset -0.1 frame against an offset 0 first frame). Any other
combination raises ProductError naming both products before the first chip. A converted valid
value outside the stored dtype's range (an S2 DN below 1000 with offset -0.1 is a negative
reflectance that the offset-0 convention cannot hold in uint16) raises ProductError too
(`out_of_range="error"`, the default) or, with `out_of_range="invalid"`, marks that pixel
invalid in that frame. Values of invalid pixels are clipped into the dtype range and carry no
meaning (the contract's `valid` mask says so).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError

from data_prep.chips import chip_key, chip_lonlat, chip_transform, grid
from data_prep.sources.scene import ProductError, Scene

ORIGIN_TOLERANCE_PX = 0.25
MODES = ("all", "spread", "seasons")

# Meteorological seasons: code -> months; the hemisphere decides the name.
SEASON_MONTHS = {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)}
SEASON_NAMES = {"north": {"DJF": "winter", "MAM": "spring", "JJA": "summer", "SON": "autumn"},
                "south": {"DJF": "summer", "MAM": "autumn", "JJA": "winter", "SON": "spring"}}
# Which seasons survive a cap below 4: the strongest phenological contrast first.
SEASON_PRIORITY = ("summer", "winter", "spring", "autumn")


# -- time helpers -----------------------------------------------------------------------------

def parse_time(text: str) -> datetime:
    """ISO 8601 ('2020-06-04T05:46:39Z', offsets, fractions) -> aware UTC datetime."""
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def _iso(text: str) -> str:
    return parse_time(text).strftime("%Y-%m-%dT%H:%M:%SZ")


def _year_fraction(t: datetime) -> float:
    """Position in its calendar year, in [0, 1) (leap years handled)."""
    start = datetime(t.year, 1, 1, tzinfo=timezone.utc)
    end = datetime(t.year + 1, 1, 1, tzinfo=timezone.utc)
    return (t - start) / (end - start)


def season_of(time: str, lat: float | None = None) -> tuple[str, str]:
    """(meteorological season code DJF|MAM|JJA|SON, name) of a time; the name follows the
    hemisphere: lat < 0 shifts the names by half a year (DJF is summer in the south)."""
    month = parse_time(time).month
    code = next(c for c, months in SEASON_MONTHS.items() if month in months)
    return code, SEASON_NAMES["south" if lat is not None and lat < 0 else "north"][code]


def _season_middle(t: datetime) -> datetime:
    """Middle of the season instance that t falls in (DJF of Dec 2020 - Feb 2021 for both
    2020-12-10 and 2021-01-20)."""
    code = next(c for c, months in SEASON_MONTHS.items() if t.month in months)
    if code == "DJF":
        year = t.year if t.month == 12 else t.year - 1
        start, end = datetime(year, 12, 1, tzinfo=timezone.utc), datetime(year + 1, 3, 1, tzinfo=timezone.utc)
    else:
        first = SEASON_MONTHS[code][0]          # 3, 6 or 9: the season ends in the same year
        start = datetime(t.year, first, 1, tzinfo=timezone.utc)
        end = datetime(t.year, first + 3, 1, tzinfo=timezone.utc)
    return start + (end - start) / 2


# -- grouping ---------------------------------------------------------------------------------

def _crs_id(crs: str) -> str:
    text = str(crs).strip()
    if text.upper().startswith("EPSG:"):
        return "EPSG:" + text[5:].strip()
    try:
        c = CRS.from_user_input(text)
    except CRSError:
        return text
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_wkt()


def _sig(v: float) -> float:
    return float(f"{float(v):.9g}")


def _grid_id(sensor: str, crs: str, transform, width: int, height: int) -> tuple:
    a, b, _, d, e, _ = tuple(transform)[:6]
    return (sensor, _crs_id(crs), _sig(a), _sig(b), _sig(d), _sig(e), int(width), int(height))


def _origin_px(transform) -> tuple[float, float]:
    a, _, c, _, e, f = tuple(transform)[:6]
    return c / abs(a), f / abs(e)


def footprint_key(sensor: str, crs: str, transform: tuple, width: int, height: int) -> tuple:
    """Hashable identity of a product's grid: sensor, CRS, pixel size/rotation (9 significant
    digits), size, and the origin in quarter-pixel steps (rounded).

    Equal keys mean origins within a quarter pixel of each other; origins more than a quarter
    pixel apart never share a key. (Origins within a quarter pixel that straddle a rounding
    boundary can get different keys: `group_by_footprint` compares origins directly instead.)
    """
    ox, oy = _origin_px(transform)
    return (*_grid_id(sensor, crs, transform, width, height), round(ox * 4), round(oy * 4))


def group_by_footprint(items: list[dict]) -> list[list[int]]:
    """Indices of `items` (dicts with sensor, crs, transform, width, height, time) grouped by grid.

    An item joins the first group (in order of creation) whose first item has the same sensor,
    CRS, pixel size, rotation and size and an origin within a quarter pixel in x and y; else it
    starts a group. Groups come in the order of their first item's index; each is sorted by time
    (then index). Pure: no I/O.
    """
    groups: list[list[int]] = []
    heads: dict[tuple, list[tuple[list[int], float, float]]] = {}
    for i, item in enumerate(items):
        gid = _grid_id(item["sensor"], item["crs"], item["transform"], item["width"], item["height"])
        ox, oy = _origin_px(item["transform"])
        for members, hx, hy in heads.get(gid, []):
            if abs(ox - hx) <= ORIGIN_TOLERANCE_PX and abs(oy - hy) <= ORIGIN_TOLERANCE_PX:
                members.append(i)
                break
        else:
            members = [i]
            heads.setdefault(gid, []).append((members, ox, oy))
            groups.append(members)
    return [sorted(g, key=lambda i: (parse_time(items[i]["time"]), i)) for g in groups]


# -- frame selection --------------------------------------------------------------------------

def _assign(n_targets: int, candidates: list[int], distance) -> list[int]:
    """Greedy matching, closest pairs first: each target gets the nearest unused candidate.
    Ties: earlier candidate (its position in `candidates`, which is time order), then target."""
    pairs = sorted((distance(t, i), pos, t) for t in range(n_targets) for pos, i in enumerate(candidates))
    taken_t, taken_pos, chosen = set(), set(), []
    for _, pos, t in pairs:
        if t in taken_t or pos in taken_pos:
            continue
        taken_t.add(t)
        taken_pos.add(pos)
        chosen.append(candidates[pos])
        if len(taken_t) == n_targets:
            break
    return chosen


def select_frames(times: list[str], mode: str, max_frames: int, lat: float | None = None) -> list[int]:
    """Indices of the frames to keep, in time order. Pure.

    mode "all":     every frame; when max_frames > 0 and there are more, keep max_frames frames
                    spread over the series' time span: targets evenly spaced from the first to
                    the last time (both included; one frame: the middle of the span), each
                    matched to the nearest unused frame.
    mode "spread":  up to max_frames (> 0) frames spread across the calendar year: targets at the
                    middles of max_frames equal parts of the year ((k + 0.5) / max_frames), the
                    distance to a frame is circular in day-of-year (years are ignored; Dec 31 is
                    next to Jan 1), each target matched to the nearest unused frame.
    mode "seasons": one frame per meteorological season (DJF, MAM, JJA, SON; by the frame's
                    month), the frame nearest to the middle of its own season (e.g. DJF 2020/21
                    runs 2020-12-01 .. 2021-03-01); a season without a frame is skipped. With
                    max_frames > 0 below the number of seasons found, seasons are kept in the
                    order summer, winter, spring, autumn, where summer is JJA in the north and
                    DJF in the south (lat < 0 shifts the names by half a year; lat None = north).
    Matching is greedy by smallest distance over all (target, frame) pairs; ties go to the
    earlier frame (then the lower index), so the result never depends on input order beyond
    equal times.
    """
    if mode not in MODES:
        raise ValueError(f"series mode {mode!r} unknown (known: {', '.join(MODES)})")
    ts = [parse_time(t) for t in times]
    order = sorted(range(len(ts)), key=lambda i: (ts[i], i))
    if not order:
        return []
    if mode == "all":
        if max_frames <= 0 or len(order) <= max_frames:
            return order
        secs = [ts[i].timestamp() for i in order]
        t0, t1 = secs[0], secs[-1]
        targets = ([(t0 + t1) / 2] if max_frames == 1 else
                   [t0 + (t1 - t0) * k / (max_frames - 1) for k in range(max_frames)])
        chosen = _assign(max_frames, order, lambda k, i: abs(ts[i].timestamp() - targets[k]))
    elif mode == "spread":
        if max_frames <= 0:
            raise ValueError("series mode 'spread' needs max_frames > 0")
        if len(order) <= max_frames:
            return order
        targets = [(k + 0.5) / max_frames for k in range(max_frames)]
        phase = {i: _year_fraction(ts[i]) for i in order}

        def circular(k, i):
            d = abs(phase[i] - targets[k])
            return min(d, 1.0 - d)
        chosen = _assign(max_frames, order, circular)
    else:
        best: dict[str, tuple[float, int, int]] = {}
        for pos, i in enumerate(order):
            code, _ = season_of(times[i], lat)
            cand = (abs((ts[i] - _season_middle(ts[i])).total_seconds()), pos, i)
            if code not in best or cand < best[code]:
                best[code] = cand
        names = SEASON_NAMES["south" if lat is not None and lat < 0 else "north"]
        codes = sorted(best, key=lambda c: SEASON_PRIORITY.index(names[c]))
        if max_frames > 0:
            codes = codes[:max_frames]
        chosen = [best[c][2] for c in codes]
    rank = {i: pos for pos, i in enumerate(order)}
    return sorted(chosen, key=rank.__getitem__)


# -- cutting a series -------------------------------------------------------------------------

def _check_same_grid(scenes: list[Scene]) -> None:
    ref = scenes[0]
    gid = _grid_id(ref.sensor, ref.crs, ref.transform, ref.width, ref.height)
    ox, oy = _origin_px(ref.transform)
    for s in scenes[1:]:
        what = None
        if s.sensor != ref.sensor:
            what = f"sensor {s.sensor} vs {ref.sensor}"
        elif list(s.bands) != list(ref.bands):
            what = f"bands {s.bands} vs {ref.bands}"
        elif _grid_id(s.sensor, s.crs, s.transform, s.width, s.height) != gid:
            what = (f"grid {s.crs} {tuple(s.transform)[:6]} {s.width}x{s.height} vs "
                    f"{ref.crs} {tuple(ref.transform)[:6]} {ref.width}x{ref.height}")
        else:
            sx, sy = _origin_px(s.transform)
            if abs(sx - ox) > ORIGIN_TOLERANCE_PX or abs(sy - oy) > ORIGIN_TOLERANCE_PX:
                what = f"origin ({s.transform[2]}, {s.transform[5]}) vs ({ref.transform[2]}, {ref.transform[5]})"
        if what:
            raise ProductError(f"series {ref.product_id} + {s.product_id}: not one footprint group ({what}); "
                               f"group products with series.group_by_footprint first")


def _integer(v: float) -> int | None:
    r = round(v)
    return int(r) if abs(v - r) <= 1e-6 * max(1.0, abs(v)) else None


def conversion(ref: Scene, scene: Scene) -> tuple[np.ndarray, np.ndarray] | None:
    """(m, k) per band so that m * stored + k is `scene`'s data in `ref`'s scale/offset, exactly;
    None when nothing changes. ProductError when no exact integer conversion exists."""
    if (list(scene.scale) == list(ref.scale) and list(scene.offset) == list(ref.offset)
            and np.dtype(scene.dtype) == np.dtype(ref.dtype)):
        return None
    ms, ks = [], []
    for c, band in enumerate(ref.bands):
        s0, o0, si, oi = ref.scale[c], ref.offset[c], scene.scale[c], scene.offset[c]
        m = _integer(si / s0) if s0 else None
        k = _integer((oi - o0) / s0) if s0 else None
        if m is None or m < 1 or k is None:
            raise ProductError(
                f"series {ref.product_id} + {scene.product_id}: band {band} of {scene.product_id} "
                f"(scale {si}, offset {oi}) cannot be converted exactly to the scale/offset of the "
                f"series' first frame {ref.product_id} (scale {s0}, offset {o0}): needs an integer scale "
                f"ratio and an offset difference of a whole number of steps")
        ms.append(m)
        ks.append(k)
    return np.array(ms, np.int64), np.array(ks, np.int64)


def harmonise(stored: np.ndarray, valid: np.ndarray, conv: tuple[np.ndarray, np.ndarray] | None,
              ref: Scene, scene: Scene, out_of_range: str = "error") -> tuple[np.ndarray, np.ndarray]:
    """Stored (C, h, w) of `scene` -> `ref`'s scale/offset and dtype (see the module docstring)."""
    if conv is None:
        return stored, valid
    dtype = np.dtype(ref.dtype)
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    m, k = conv
    x = stored.astype(np.int64) * m[:, None, None] + k[:, None, None]
    bad = ((x < lo) | (x > hi)) & valid[None]
    if bad.any():
        if out_of_range != "invalid":
            c = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
            vals = stored[c][bad[c]]
            raise ProductError(
                f"series {ref.product_id} + {scene.product_id}: band {ref.bands[c]} of {scene.product_id} has "
                f"{int(bad[c].sum())} valid value(s) ({int(vals.min())}..{int(vals.max())}) that fall outside "
                f"{dtype} [{lo}, {hi}] in the scale/offset of {ref.product_id} (scale {ref.scale[c]}, "
                f"offset {ref.offset[c]})")
        valid = valid & ~bad.any(axis=0)
    return np.clip(x, lo, hi).astype(dtype), valid


def cut_series(scenes: list[Scene], size: int, stride: int, min_valid: float, min_frames: int = 2,
               out_of_range: str = "error") -> Iterator[tuple[dict | None, float]]:
    """Yield (sample or None, best frame valid fraction) for every grid window of a series.

    `scenes`: one footprint group (ProductError otherwise), already thinned by select_frames;
    sorted here by time. For each window every scene is read; frames whose valid fraction is
    below `min_valid` are dropped; with at least `min_frames` left the sample holds them (T, C, H,
    W) with `times` and `product_ids` per frame and the first scene's metadata, all frames in the
    scale/offset of the series' first scene (see the module docstring; `out_of_range`: "error" or
    "invalid"). The key is chip_key's with the first and last kept times:
    `<sensor>_<crs>_x<col>_y<row>_<first>_<last>`. The yielded fraction is the best per-frame
    valid fraction of the window (as chips.cut's, for the engine's "best" report).
    """
    if not scenes:
        return
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    if out_of_range not in ("error", "invalid"):
        raise ValueError(f"out_of_range must be 'error' or 'invalid', got {out_of_range!r}")
    scenes = sorted(scenes, key=lambda s: parse_time(s.time))
    _check_same_grid(scenes)
    ref = scenes[0]
    convs = [conversion(ref, s) for s in scenes]
    for win in grid(ref.height, ref.width, size, stride):
        kept, best = [], 0.0
        for scene, conv in zip(scenes, convs):
            stored, valid = scene.read(win)
            frac = float(valid.mean())
            if frac >= min_valid and conv is not None:
                stored, valid = harmonise(stored, valid, conv, ref, scene, out_of_range)
                frac = float(valid.mean())
            best = max(best, frac)
            if frac >= min_valid:
                kept.append((scene, stored, valid))
        if len(kept) < min_frames:
            yield None, best
            continue
        times = [s.time for s, _, _ in kept]
        image = np.stack([st for _, st, _ in kept])
        yield {
            "key": chip_key(ref, win, times=[_iso(times[0]), _iso(times[-1])]),
            "image": image,                                  # (T, C, H, W)
            "valid": np.stack([v for _, _, v in kept]),      # (T, H, W)
            "sensor": ref.sensor,
            "bands": ref.bands,
            "wavelengths_nm": ref.wavelengths_nm,
            "gsd_m": ref.gsd_m,
            "times": times,
            "lonlat": chip_lonlat(ref, win),
            "crs": ref.crs,
            "transform": chip_transform(ref, win),
            "product_ids": [s.product_id for s, _, _ in kept],
            "scale": ref.scale,
            "offset": ref.offset,
            "units": ref.units,
            "dtype": str(np.dtype(image.dtype)),
        }, best

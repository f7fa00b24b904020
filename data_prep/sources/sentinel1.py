"""Sentinel-1 GRD/RTC backscatter delivered as one GeoTIFF per polarisation.

Layouts (a product is one folder; its raster files resolve to polarisations by name):
  SSL4EO-S12      <S1 product name>/VV.tif, VH.tif (+ metadata.json)  float32 dB (GEE COPERNICUS/S1_GRD, sigma0)
  BigEarthNet v2  <patch>/<patch>_VV.tif, <patch>_VH.tif              float32 dB
  ASF HyP3 RTC    S1A_IW_<date>_<pol><orbit>_RTC30_G_<code>_<id>/..._VV.tif   float32, scale and quantity
                  from the naming code (`gpuned`: gamma0, power), nodata 0; other files (_rgb, _ls_map,
                  _area, README ...) are ignored
  Major-TOM S1RTC <product>_rtc/vv.tif, vh.tif                         float32 linear gamma0
  OPERA RTC-S1    OPERA_L2_RTC-S1_<burst>_<start>_..._VV.tif           float32 linear gamma0, nodata NaN

A folder is claimed when its GeoTIFFs resolve to polarisation bands (`VV.tif`, or a `_VV` / `-VV`
suffix, case-insensitive; all sharing one prefix, i.e. one product) and either the folder or file
names look like Sentinel-1 (S1A/S1B/S1C/S1D, OPERA_L2_RTC-S1, `_rtc`) or the files are named exactly
VV.tif / VH.tif / HH.tif / HV.tif.

Radiometry: output is ALWAYS backscatter in dB, stored as int16 with scale 0.01 dB (offset 0),
stored -32768 (and valid False) for invalid pixels. Whether the input is linear power, linear
amplitude or dB is decided from metadata first (GeoTIFF tags naming dB/decibel/amplitude/power,
the HyP3 naming code, the OPERA product convention, SSL4EO's metadata.json), else from the values
(linear: values >= 0, at most 1 % negative, and median < 1; dB: negative median);
metadata that contradicts the values is refused. Linear power -> 10*log10(x), amplitude ->
20*log10(x); values <= 0 in linear input are nodata (never -60 dB); positive values are floored
at LINEAR_FLOOR (-60 dB) and dB input is floored at the same level, so both paths share one range.
NaN/inf and the raster's nodata value are invalid. The decision and its evidence go into
`Scene.radiometry`.
"""
from __future__ import annotations

import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from data_prep.bands import SAR_PSEUDO_WAVELENGTH_NM
from data_prep.sources.raster import Grid, check_aligned, open_raster, overview, read_on_grid
from data_prep.sources.folders import read_sidecar_json
from data_prep.sources.scene import ProductError, Scene, Window

KIND = "sentinel1"
SENSOR = "sentinel1"
UNITS = "backscatter dB"

POLARISATIONS = ("VV", "VH", "HH", "HV")          # band order of the Scene
SCALE_DB = 0.01                                   # stored int16 * 0.01 = dB
NODATA_STORED = -32768
LINEAR_FLOOR = 1e-6                               # 10*log10(1e-6) = -60 dB
DB_FLOOR = 10.0 * math.log10(LINEAR_FLOOR)
MAX_NEGATIVE_SHARE_LINEAR = 0.01                  # negative values tolerated in linear input (artefacts)
RASTER_EXT = (".tif", ".tiff")
# Nominal pixel spacings of S1 analysis-ready products; a geographic (degree) grid is converted to
# metres at its centre latitude and snapped to the nearest of these when within 10 %.
NOMINAL_SPACINGS_M = (10.0, 20.0, 30.0, 40.0, 60.0, 90.0, 100.0)

_POL_RE = re.compile(r"^(?:(?P<prefix>.*?)[_-])?(?P<pol>VV|VH|HH|HV)$", re.IGNORECASE)
_S1_HINT_RE = re.compile(r"S1[ABCD]|OPERA_L2_RTC-S1|_rtc(?![a-z0-9])", re.IGNORECASE)
_TIME_RE = re.compile(r"(?<!\d)(\d{8})T(\d{6})(?!\d)")
# ASF HyP3 RTC: S1x_yy_aaaaaaaaTbbbbbb_ppo_RTCzz_u_defklm_ssss; d = gamma (g) / sigma (s),
# e = power (p) / amplitude (a) / decibel (d).
_HYP3_RE = re.compile(r"_RTC\d+_[A-Z]_(?P<d>[gs])(?P<e>[pad])[uw][nf][ec][dm]_", re.IGNORECASE)
_OPERA_RE = re.compile(r"OPERA_L2_RTC-S1", re.IGNORECASE)


def _pol_files(names) -> tuple[dict[str, str], set[str], bool]:
    """({pol: file name}, {prefixes}, all named exactly like VV.tif) for the polarisation GeoTIFFs."""
    out, prefixes, exact = {}, set(), True
    for n in sorted(names):
        stem, dot, ext = n.rpartition(".")
        if not dot or ("." + ext.lower()) not in RASTER_EXT:
            continue
        m = _POL_RE.match(stem)
        if not m:
            continue
        pol = m["pol"].upper()
        if pol in out:                                 # two files for one polarisation: not one product
            prefixes.add(f"\0duplicate {pol}")
            continue
        out[pol] = n
        prefixes.add((m["prefix"] or "").lower())
        exact = exact and not m["prefix"]
    return out, prefixes, exact


def match(path: str, names: set[str], is_dir: bool) -> bool:
    """A folder holding one product's polarisation GeoTIFFs (see the module docstring)."""
    if not is_dir:
        return False
    pols, prefixes, exact = _pol_files(names)
    if not pols or len(prefixes) != 1:
        return False
    if exact:
        return True
    base = os.path.basename(str(path).rstrip("/"))
    return bool(_S1_HINT_RE.search(base) or any(_S1_HINT_RE.search(n) for n in pols.values()))


# ---------------------------------------------------------------------------------------------
# identity and metadata


def _time_from_names(names: list[str]) -> tuple[datetime, str] | None:
    for n in names:
        m = _TIME_RE.search(n)
        if m:
            try:
                t = datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
            except ValueError:
                continue
            return t, f"name {n!r}"
    return None


def _time_from_tags(tags: dict, label: str) -> tuple[datetime, str] | None:
    for key, value in tags.items():
        k = key.upper()
        if not (("START" in k or "ACQUISITION" in k or "SENSING" in k) and ("TIME" in k or "DATE" in k)):
            continue
        m = re.search(r"(\d{4})-?(\d{2})-?(\d{2})[T ](\d{2}):?(\d{2}):?(\d{2})", str(value))
        if m:
            t = datetime(*map(int, m.groups()), tzinfo=timezone.utc)
            return t, f"tag {key} of {label}"
    return None


def _time_from_metadata_json(meta: dict) -> tuple[datetime, str] | None:
    ms = meta.get("system:time_start")
    if isinstance(ms, (int, float)):
        return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc), "metadata.json system:time_start"
    return None


# ---------------------------------------------------------------------------------------------
# radiometry decisions


def _scale_from_tags(sources: dict, files: dict) -> tuple[str, str] | None:
    """('db'|'power'|'amplitude', evidence) from words in the GeoTIFF tags or band descriptions."""
    for pol, src in sources.items():
        texts = [f"{k}={v}" for k, v in src.tags().items()]
        texts += [f"{k}={v}" for k, v in src.tags(1).items()]
        texts += [d for d in src.descriptions if d]
        texts += [u for u in src.units if u]
        for t in texts:
            low = t.lower()
            if re.search(r"(?<![a-z])db(?![a-z])|decibel", low):
                return "db", f"{Path(files[pol]).name}: {t[:80]!r}"
            if re.search(r"amplitude", low):
                return "amplitude", f"{Path(files[pol]).name}: {t[:80]!r}"
            if re.search(r"(?<![a-z])(power|linear)(?![a-z])", low):
                return "power", f"{Path(files[pol]).name}: {t[:80]!r}"
    return None


def _quantity_from_tags(sources: dict) -> str | None:
    for src in sources.values():
        text = " ".join(f"{k}={v}" for k, v in {**src.tags(), **src.tags(1)}.items()).lower()
        text += " " + " ".join(d.lower() for d in src.descriptions if d)
        for word, q in (("gamma", "gamma0"), ("sigma", "sigma0"), ("beta", "beta0")):
            if re.search(rf"{word}[ _-]?(0|nought|naught)", text):
                return q
    return None


def _convention(names: list[str], meta: dict) -> dict:
    """What the product's naming / sidecar conventions say about scale and quantity."""
    for n in names:
        m = _HYP3_RE.search(n)
        if m:
            scale = {"p": "power", "a": "amplitude", "d": "db"}[m["e"].lower()]
            quantity = {"g": "gamma0", "s": "sigma0"}[m["d"].lower()]
            return {"scale": scale, "quantity": quantity,
                    "source": f"ASF HyP3 naming code {m.group(0).strip('_')!r} in {n!r}"}
    for n in names:
        if _OPERA_RE.search(n):
            return {"scale": "power", "quantity": "gamma0",
                    "source": f"OPERA RTC-S1 product convention (linear gamma0 power) for {n!r}"}
    sys_id = str(meta.get("system:id", ""))
    if sys_id.startswith("COPERNICUS/S1_GRD/"):
        return {"scale": "db", "quantity": "sigma0",
                "source": f"metadata.json system:id {sys_id.rsplit('/', 1)[0]!r} (Earth Engine S1_GRD: sigma0 in dB)"}
    if sys_id.startswith("COPERNICUS/S1_GRD_FLOAT/"):
        return {"scale": "power", "quantity": "sigma0",
                "source": "metadata.json system:id 'COPERNICUS/S1_GRD_FLOAT' (Earth Engine: linear sigma0)"}
    for n in names:
        if re.search(r"_rtc(?![a-z0-9])", n, re.IGNORECASE):
            # Major-TOM Core-S1RTC: Planetary Computer sentinel-1-rtc, terrain-flattened gamma0;
            # the scale is left to the data.
            return {"scale": None, "quantity": "gamma0",
                    "source": f"'_rtc' product (Major-TOM Core-S1RTC / Planetary Computer sentinel-1-rtc: "
                              f"gamma0) {n!r}"}
    return {"scale": None, "quantity": None, "source": None}


def _physical(src, raw: np.ndarray) -> np.ndarray:
    """Raw raster values -> float64 input values (GDAL scale/offset applied if set)."""
    a = raw.astype(np.float64)
    scale = src.scales[0] if src.scales else 1.0
    offset = src.offsets[0] if src.offsets else 0.0
    if scale not in (None, 1.0) or offset not in (None, 0.0):
        a = a * (scale if scale is not None else 1.0) + (offset or 0.0)
    return a


def _finite_valid(src, raw: np.ndarray, values: np.ndarray) -> np.ndarray:
    ok = np.isfinite(values)
    if src.nodata is not None and not (isinstance(src.nodata, float) and math.isnan(src.nodata)):
        ok &= raw != np.asarray(src.nodata).astype(raw.dtype)
    return ok


def data_evidence(sources: dict) -> dict:
    """Value-range evidence per band from a decimated read (finite, non-nodata values)."""
    out = {}
    for pol, src in sources.items():
        raw = overview(src)
        v = _physical(src, raw)
        v = v[_finite_valid(src, raw, v)]
        if v.size == 0:
            out[pol] = {"count": 0}
            continue
        out[pol] = {"count": int(v.size), "min": float(v.min()), "median": float(np.median(v)),
                    "negative_share": float((v < 0).mean()), "zero_share": float((v == 0).mean())}
    return out


def decide_scale(evidence: dict) -> tuple[str | None, str]:
    """('power'|'db'|None, evidence text) from value ranges alone (None: cannot tell).

    Linear power is never negative and its median lies far below 1 (-0 dB); dB backscatter has a
    negative median. A few negative values (resampling artefacts) are tolerated in linear input.
    """
    bands = {p: e for p, e in evidence.items() if e.get("count")}
    if not bands:
        return None, "no finite valid values"
    text = "; ".join(f"{p}: min {e['min']:.4g}, median {e['median']:.4g}, {e['negative_share']:.1%} negative"
                     for p, e in bands.items())
    if any(e["median"] < 0 for e in bands.values()):
        return "db", f"dB: negative median ({text})"
    if all(e["negative_share"] <= MAX_NEGATIVE_SHARE_LINEAR and 0 <= e["median"] < 1 for e in bands.values()):
        return "power", (f"linear: values >= 0 (at most {MAX_NEGATIVE_SHARE_LINEAR:.0%} negative) and "
                         f"median < 1 ({text})")
    return None, f"values look neither linear (>= 0, median < 1) nor dB (negative median) ({text})"


def _contradiction(scale: str, evidence: dict) -> str | None:
    bands = {p: e for p, e in evidence.items() if e.get("count")}
    if scale in ("power", "amplitude"):
        bad = {p: e["negative_share"] for p, e in bands.items() if e["negative_share"] > MAX_NEGATIVE_SHARE_LINEAR}
        if bad:
            return f"{', '.join(f'{p} {s:.1%}' for p, s in bad.items())} negative values, impossible for linear {scale}"
    if scale == "db" and bands and all(e["min"] >= 0 and e["median"] < 1 for e in bands.values()):
        return "all values >= 0 with median < 1, which is linear power, not dB"
    return None


def to_db(values: np.ndarray, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """(dB float64, usable bool) for input values on `scale`; invalid linear values (<= 0) are unusable."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if scale == "db":
            usable = np.isfinite(values)
            db = np.maximum(values, DB_FLOOR)
        else:
            usable = np.isfinite(values) & (values > 0)
            factor = 10.0 if scale == "power" else 20.0
            floor = LINEAR_FLOOR if scale == "power" else math.sqrt(LINEAR_FLOOR)
            db = factor * np.log10(np.maximum(np.where(usable, values, 1.0), floor))
    return db, usable


def quantize(db: np.ndarray, usable: np.ndarray) -> np.ndarray:
    stored = np.full(db.shape, NODATA_STORED, dtype=np.int16)
    q = np.clip(np.rint(db[usable] / SCALE_DB), -32767, 32767)
    stored[usable] = q.astype(np.int16)
    return stored


def _gsd(grid: Grid, src) -> tuple[float, str]:
    crs = CRS.from_user_input(src.crs) if src.crs else None
    if crs is None:
        raise ProductError(f"{src.name}: no CRS (cannot place the product on the ground)")
    if not crs.is_geographic:
        res = grid.res
        return res, f"{res:g} m from the raster grid"
    a, _, c, _, e, f = grid.transform
    lat = f + e * grid.height / 2
    mx = abs(a) * 111320.0 * math.cos(math.radians(lat))
    my = abs(e) * 110574.0
    approx = (mx + my) / 2
    nominal = min(NOMINAL_SPACINGS_M, key=lambda s: abs(s - approx))
    if abs(nominal - approx) <= 0.1 * nominal:
        return nominal, (f"geographic grid {abs(a):.3g} x {abs(e):.3g} deg is about {approx:.1f} m at latitude "
                         f"{lat:.1f}; nominal {nominal:g} m used")
    return round(approx, 1), (f"geographic grid {abs(a):.3g} x {abs(e):.3g} deg is about {approx:.1f} m at "
                              f"latitude {lat:.1f}")


# ---------------------------------------------------------------------------------------------


def open_product(path: str, resampling: str = "bilinear") -> Scene:
    folder = Path(path)
    if not folder.is_dir():
        raise ProductError(f"{folder}: a Sentinel-1 product is a folder of per-polarisation GeoTIFFs")
    try:
        names = os.listdir(folder)
    except OSError as err:
        raise ProductError(f"{folder}: cannot list the folder: {err}") from None
    pols, prefixes, _ = _pol_files(names)
    if not pols:
        raise ProductError(f"{folder}: no polarisation GeoTIFF (VV.tif, *_VV.tif, *_VH.tif, ...)")
    if len(prefixes) != 1:
        raise ProductError(f"{folder}: polarisation files of more than one product "
                           f"({', '.join(sorted(pols.values()))})")
    bands = [p for p in POLARISATIONS if p in pols]
    files = {p: str(folder / pols[p]) for p in bands}
    sources = {p: open_raster(files[p]) for p in bands}
    for p, src in sources.items():
        if src.count != 1:
            raise ProductError(f"{files[p]}: expected one band, found {src.count}")
        kind = np.dtype(src.dtypes[0]).kind
        has_scale = bool(src.scales and src.scales[0] not in (None, 1.0))
        if kind != "f" and not has_scale:
            raise ProductError(f"{files[p]}: integer {src.dtypes[0]} values without a scale factor "
                               "(uncalibrated GRD digital numbers?); expected calibrated backscatter")
    grid = Grid.of(sources[bands[0]])
    check_aligned(sources, grid, files)

    meta = read_sidecar_json(folder)
    name_list = [folder.name] + [pols[p] for p in bands]
    product_id = folder.name

    # acquisition time: product name, then raster tags, then metadata.json
    found = _time_from_names(name_list)
    if found is None:
        for p, src in sources.items():
            found = _time_from_tags(src.tags(), files[p])
            if found:
                break
    found = found or _time_from_metadata_json(meta)
    if found is None:
        raise ProductError(f"{folder}: no acquisition time: neither the product/file names (…_YYYYMMDDTHHMMSS_…) "
                           "nor the GeoTIFF tags nor a metadata.json give one")
    t, time_source = found

    # radiometry: metadata first, then the values
    evidence = data_evidence(sources)
    notes: list[str] = []
    conv = _convention(name_list, meta)
    tag_scale = _scale_from_tags(sources, files)
    if tag_scale:
        scale, scale_source = tag_scale[0], f"GeoTIFF tags ({tag_scale[1]})"
    elif conv["scale"]:
        scale, scale_source = conv["scale"], conv["source"]
    else:
        scale, why = decide_scale(evidence)
        if scale is None:
            raise ProductError(f"{folder}: cannot tell linear from dB input: no metadata says so and {why}")
        scale_source = f"data: {why}"
    conflict = _contradiction(scale, evidence)
    if conflict:
        raise ProductError(f"{folder}: metadata says the input is {scale} ({scale_source}) but the values "
                           f"disagree: {conflict}")
    tag_quantity = _quantity_from_tags(sources)
    quantity = tag_quantity or conv["quantity"]
    quantity_source = "GeoTIFF tags" if tag_quantity else conv["source"]
    if quantity is None:
        quantity, quantity_source = "as delivered", "not stated by the product"
        notes.append("backscatter normalisation (sigma0/gamma0) is not stated by the product; values are "
                     "kept as delivered")
    if scale == "db":
        formula = f"dB as delivered, floored at {DB_FLOOR:g} dB"
    elif scale == "power":
        formula = f"dB = 10*log10(x) for linear power x > 0 (x floored at {LINEAR_FLOOR:g}); x <= 0 is nodata"
    else:
        formula = (f"dB = 20*log10(a) for linear amplitude a > 0 (a floored at {math.sqrt(LINEAR_FLOOR):g}); "
                   "a <= 0 is nodata")
    gsd, gsd_note = _gsd(grid, sources[bands[0]])
    if not all(Grid.of(s) == grid for s in sources.values()):
        notes.append(f"polarisations on different grids: resampled onto the {bands[0]} grid ({resampling})")
    notes.append("stored int16 = round(dB / 0.01); -32768 marks invalid pixels (NaN, inf, nodata, "
                 "and values <= 0 in linear input)")

    def read(win: Window) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(bands), win.height, win.width), dtype=np.int16)
        valid = np.ones((win.height, win.width), dtype=bool)
        for i, p in enumerate(bands):
            src = sources[p]
            same = Grid.of(src) == grid
            raw = read_on_grid(src, grid, win, resampling, label=files[p])
            vals = _physical(src, raw)
            db, usable = to_db(vals, scale)
            usable &= _finite_valid(src, raw, vals)
            if not same:   # nearest-neighbour for the mask: resampling must never invent valid pixels
                nn = read_on_grid(src, grid, win, "nearest", label=files[p])
                nv = _physical(src, nn)
                _, nn_ok = to_db(nv, scale)
                usable &= nn_ok & _finite_valid(src, nn, nv)
            out[i] = quantize(db, usable)
            valid &= usable
        out[:, ~valid] = NODATA_STORED
        return out, valid

    return Scene(
        product_id=product_id,
        path=str(folder),
        sensor=SENSOR,
        bands=list(bands),
        wavelengths_nm=[SAR_PSEUDO_WAVELENGTH_NM[b] for b in bands],
        gsd_m=gsd,
        crs=grid.crs,
        transform=grid.transform,
        height=grid.height,
        width=grid.width,
        time=t.strftime("%Y-%m-%dT%H:%M:%SZ"),
        scale=[SCALE_DB] * len(bands),
        offset=[0.0] * len(bands),
        dtype="int16",
        units=UNITS,
        reader=read,
        radiometry={"input_scale": {"power": "linear power", "amplitude": "linear amplitude", "db": "dB"}[scale],
                    "scale_source": scale_source, "quantity": quantity, "quantity_source": quantity_source,
                    "formula": formula, "data_evidence": evidence, "time_source": time_source,
                    "gsd": gsd_note, "resampling": resampling, "notes": notes},
        files=[files[p] for p in bands] + ([str(folder / "metadata.json")] if meta else []),
    )

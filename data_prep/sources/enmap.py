"""EnMAP L2A products and hyperspectral GeoTIFF patches (HySpecNet-11k style).

Layouts:
  (a) the delivered L2A product: a folder `ENMAP01-____L2A-DT<datatake>_<start>Z_<tile>_V<version>_<proc>Z`
      (or its .ZIP, read through /vsizip/) with `<name>-METADATA.XML`, `<name>-SPECTRAL_IMAGE.TIF`
      (or ENVI `.BSQ|.BIL|.BIP` + `.HDR`, or `.JP2`) and the quality layers `<name>-QL_PIXELMASK.TIF`,
      `-QL_QUALITY_{CLOUD,CLOUDSHADOW,HAZE,CIRRUS,SNOW,CLASSES,TESTFLAGS}.TIF`.
      Per band (`specific/bandCharacterisation/bandID[@number=n]`): wavelengthCenterOfBand,
      FWHMOfBand, GainOfBand, OffsetOfBand; reflectance = DN * gain + offset (the gain is read,
      never assumed). Acquisition time: `base/temporalCoverage/startTime`. A missing field is a
      ProductError naming the XML and the field.
  (b) patches without METADATA.XML (HySpecNet-11k: `<name>-Y<row>_X<col>-SPECTRAL_IMAGE.TIF` + QL
      files). Wavelengths (and FWHM) come from the raster's own metadata: band tags `wavelength`
      (+ `wavelength_units`, `fwhm`), ENVI-style dataset tags `wavelength = {...}` (default or ENVI
      domain), or numbers in the band descriptions. The real HySpecNet-11k files carry none of these;
      for them (an EnMAP L2A product name and 224 bands) the nominal EnMAP L2A band centres
      (ENMAP_L2A_NOMINAL_WAVELENGTHS_NM) are used and the fallback is recorded. Anything else without
      wavelength information is a ProductError. Gain: GDAL scale/offset or ENVI `data gain values` /
      `reflectance scale factor` when present, else the HySpecNet-11k convention reflectance =
      DN / 10000, accepted only when the values are plausible reflectances (checked on a sample).
A folder is one product when it holds exactly one `*-SPECTRAL_IMAGE.<ext>`; a folder with several
is not claimed and each spectral image file is then a product with its same-prefix siblings.

Bands are named by their product band number (`B001` ... `B224`), so a dropped band leaves a gap
and names stay comparable across products. Water-vapour bands (centre wavelength inside
WATER_VAPOUR_WINDOWS_NM) are dropped when `drop_water_vapour` (default DROP_WATER_VAPOUR); bands
that hold no data at all in a sampled read are dropped when `drop_empty_bands` (default
DROP_EMPTY_BANDS). The windows are set between the band centres so that, on EnMAP L2A wavelengths,
they keep exactly bands 1-126, 142-160 and 168-224 (the 202-band selection of HySpecNet-11k,
TorchGeo and SpectralEarth, whose dropped bands are the ones the L2A processor version 01.01.10
delivers as nodata around the 1400 nm and 1900 nm water-vapour absorptions).

Valid mask (per pixel): not nodata (-32768) in any kept band; QL_QUALITY_CLOUD, _CLOUDSHADOW and
_CIRRUS zero; QL_QUALITY_CLASSES not background (3); QL_PIXELMASK: with one layer per band, the pixel
is invalid when more than PIXELMASK_MAX_FLAGGED_FRACTION of the kept bands are flagged (with one
layer: when flagged). Haze and snow are NOT masked (UNMASKED_QL_LAYERS): the atmospheric correction
handles haze and snow is a real surface worth learning. QL layers must match the spectral image's
grid exactly (ProductError otherwise).
"""
from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window as RioWindow

from data_prep.sources.raster import Grid, open_raster
from data_prep.sources.scene import ProductError, Scene, Window

KIND = "enmap"
SENSOR = "enmap"
UNITS = "surface reflectance"
GSD_M = 30.0
NODATA_DN = -32768

DROP_WATER_VAPOUR = True
# Closed intervals (nm). Edges lie half-way between EnMAP L2A band centres (1283.29|1295.28,
# 1519.22|1530.64, 1728.40|1738.93, 1967.95|1977.37), about 5 nm from each, well above the
# spectral calibration uncertainty (0.5 nm VNIR, 1 nm SWIR).
WATER_VAPOUR_WINDOWS_NM = ((1289.0, 1525.0), (1733.5, 1972.5))
DROP_EMPTY_BANDS = True
# Quality layers that invalidate a pixel when non-zero, and those deliberately not applied.
MASKED_QL_LAYERS = ("QL_QUALITY_CLOUD", "QL_QUALITY_CLOUDSHADOW", "QL_QUALITY_CIRRUS")
UNMASKED_QL_LAYERS = ("QL_QUALITY_HAZE", "QL_QUALITY_SNOW")
QL_CLASSES_BACKGROUND = 3            # QL_QUALITY_CLASSES: 1 land, 2 water, 3 background
PIXELMASK_MAX_FLAGGED_FRACTION = 0.5
HYSPECNET_GAIN = 1e-4                # HySpecNet-11k convention: reflectance = DN / 10000
# Plausibility of a reflectance sample (median and 99th percentile of valid values).
PLAUSIBLE_MEDIAN = (-0.05, 1.0)
PLAUSIBLE_P99_MAX = 1.6
SAMPLE_SIZE = 128                    # decimated read for empty-band detection and plausibility

# Nominal centre wavelengths (nm) of the 224 EnMAP L2A bands in product band order (VNIR and SWIR
# interleaved by wavelength between 902 and 994 nm), as published for L2A products of processor
# version 01.01.10 (the HySpecNet-11k products). Used only when a product carries no wavelengths.
# Cross-check on the real HySpecNet-11k patches: between bands 80 and 101 the values alternate
# between the two detectors' noise levels exactly where this table alternates VNIR and SWIR.
ENMAP_L2A_NOMINAL_WAVELENGTHS_NM = (
    418.24, 423.874, 429.294, 434.528, 439.603, 444.549, 449.391, 454.159, 458.884, 463.584,   # 1-10
    468.265, 472.934, 477.599, 482.265, 486.941, 491.633, 496.349, 501.094, 505.87, 510.678,   # 11-20
    515.519, 520.397, 525.313, 530.268, 535.265, 540.305, 545.391, 550.525, 555.71, 560.947,   # 21-30
    566.239, 571.587, 576.995, 582.464, 587.997, 593.596, 599.267, 605.011, 610.833, 616.737,   # 31-40
    622.732, 628.797, 634.919, 641.1, 647.341, 653.643, 660.007, 666.435, 672.927, 679.485,   # 41-50
    686.11, 692.804, 699.567, 706.401, 713.307, 720.282, 727.324, 734.431, 741.601, 748.833,   # 51-60
    756.124, 763.472, 770.876, 778.333, 785.843, 793.402, 801.01, 808.665, 816.367, 824.112,   # 61-70
    831.901, 839.731, 847.601, 855.509, 863.455, 871.433, 879.442, 887.478, 895.537, 902.257,   # 71-80
    903.617, 911.715, 911.872, 919.827, 921.624, 927.951, 931.512, 936.082, 941.53, 944.217,   # 81-90
    951.677, 952.355, 960.495, 961.948, 968.638, 972.341, 976.783, 982.851, 984.932, 993.083,   # 91-100
    993.475, 1004.21, 1015.05, 1026.0, 1037.05, 1048.19, 1059.42, 1070.74, 1082.14, 1093.62,   # 101-110
    1105.17, 1116.79, 1128.47, 1140.2, 1151.98, 1163.81, 1175.67, 1187.56, 1199.48, 1211.42,   # 111-120
    1223.37, 1235.34, 1247.31, 1259.3, 1271.29, 1283.29, 1295.28, 1307.27, 1319.25, 1331.22,   # 121-130
    1343.18, 1355.13, 1367.06, 1378.96, 1390.84, 1461.46, 1473.1, 1484.69, 1496.24, 1507.75,   # 131-140
    1519.22, 1530.64, 1542.02, 1553.36, 1564.65, 1575.9, 1587.1, 1598.26, 1609.36, 1620.43,   # 141-150
    1631.44, 1642.41, 1653.33, 1664.2, 1675.03, 1685.8, 1696.53, 1707.2, 1717.83, 1728.4,   # 151-160
    1738.93, 1749.4, 1759.83, 1939.44, 1948.98, 1958.49, 1967.95, 1977.37, 1986.74, 1996.07,   # 161-170
    2005.36, 2014.61, 2023.82, 2032.99, 2042.11, 2051.19, 2060.24, 2069.24, 2078.21, 2087.13,   # 171-180
    2096.01, 2104.86, 2113.67, 2122.44, 2131.17, 2139.87, 2148.52, 2157.15, 2165.73, 2174.28,   # 181-190
    2182.79, 2191.27, 2199.71, 2208.12, 2216.5, 2224.84, 2233.14, 2241.42, 2249.66, 2257.86,   # 191-200
    2266.04, 2274.18, 2282.29, 2290.37, 2298.42, 2306.44, 2314.42, 2322.37, 2330.29, 2338.19,   # 201-210
    2346.05, 2353.88, 2361.68, 2369.45, 2377.19, 2384.9, 2392.58, 2400.23, 2407.85, 2415.45,   # 211-220
    2423.01, 2430.55, 2438.05, 2445.53,   # 221-224
)

SPECTRAL_RE = re.compile(r"^(?P<prefix>.+)-SPECTRAL_IMAGE\.(?P<ext>tif|tiff|bsq|bil|bip|jp2)$", re.IGNORECASE)
ZIP_RE = re.compile(r"^ENMAP01-.*L2A.*\.zip$", re.IGNORECASE)
NAME_RE = re.compile(r"ENMAP01-_*L2A-DT(?P<datatake>\d+)_(?P<start>\d{8}T\d{6})Z_(?P<tile>\d{3})_V(?P<version>\d{6})",
                     re.IGNORECASE)
QL_NAMES = ("QL_PIXELMASK",) + MASKED_QL_LAYERS + UNMASKED_QL_LAYERS + ("QL_QUALITY_CLASSES", "QL_QUALITY_TESTFLAGS")
XML_BAND_FIELDS = ("wavelengthCenterOfBand", "FWHMOfBand", "GainOfBand", "OffsetOfBand")


def match(path: str, names: set[str], is_dir: bool) -> bool:
    """A folder with exactly one `*-SPECTRAL_IMAGE.<ext>`, such a file itself, or an EnMAP L2A .ZIP."""
    if is_dir:
        return sum(1 for n in names if SPECTRAL_RE.match(n)) == 1
    name = os.path.basename(str(path))
    return bool(SPECTRAL_RE.match(name) or ZIP_RE.match(name))


# ---------------------------------------------------------------------------------------------
# product layout


@dataclass
class Layout:
    label: str                       # the product path, for messages
    product_id: str
    spectral: str                    # GDAL path of the spectral image
    xml: str | None                  # label of the METADATA.XML (None: none)
    read_xml: Callable[[], bytes] | None
    ql: dict[str, str] = field(default_factory=dict)   # QL name -> GDAL path
    files: list[str] = field(default_factory=list)     # local files read (for checksums)


def _find(names_by_lower: dict[str, str], wanted: str) -> str | None:
    return names_by_lower.get(wanted.lower())


def resolve(path: str) -> Layout:
    """Find the spectral image, METADATA.XML and QL layers of the product at `path`."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(p) as z:
                members = [m for m in z.namelist() if not m.endswith("/")]
        except (OSError, zipfile.BadZipFile) as err:
            raise ProductError(f"{p}: not a readable ZIP: {err}") from None
        spectral = [m for m in members if SPECTRAL_RE.match(m.rsplit("/", 1)[-1])]
        if len(spectral) != 1:
            raise ProductError(f"{p}: expected one *-SPECTRAL_IMAGE file in the ZIP, found {len(spectral)}")
        member = spectral[0]
        prefix = member[: member.upper().rindex("-SPECTRAL_IMAGE")]
        by_lower = {m.lower(): m for m in members}
        vsi = f"/vsizip/{p.resolve()}/"
        xml_member = _find(by_lower, prefix + "-METADATA.XML")

        def read_xml() -> bytes:
            with zipfile.ZipFile(p) as z:
                return z.read(xml_member)

        ql = {q: vsi + m for q in QL_NAMES if (m := _find(by_lower, f"{prefix}-{q}.TIF"))}
        return Layout(str(p), prefix.rsplit("/", 1)[-1], vsi + member,
                      f"{p}/{xml_member}" if xml_member else None, read_xml if xml_member else None, ql, [str(p)])
    if p.is_dir():
        folder = p
        try:
            names = os.listdir(folder)
        except OSError as err:
            raise ProductError(f"{p}: cannot list the folder: {err}") from None
        spectral = [n for n in names if SPECTRAL_RE.match(n)]
        if len(spectral) != 1:
            raise ProductError(f"{p}: expected one *-SPECTRAL_IMAGE.(TIF|BSQ|BIL|BIP|JP2), found {len(spectral)}")
        name = spectral[0]
    elif p.is_file() and SPECTRAL_RE.match(p.name):
        folder, name = p.parent, p.name
        names = os.listdir(folder)
    else:
        raise ProductError(f"{p}: not an EnMAP product (folder, *-SPECTRAL_IMAGE file or .ZIP)")
    prefix = SPECTRAL_RE.match(name)["prefix"]
    by_lower = {n.lower(): n for n in names}
    files = [str(folder / name)]
    stem = name.rsplit(".", 1)[0]
    if name.rsplit(".", 1)[1].lower() in ("bsq", "bil", "bip"):
        hdr = _find(by_lower, stem + ".hdr") or _find(by_lower, name + ".hdr")
        if hdr is None:
            raise ProductError(f"{folder / name}: ENVI image without its header ({stem}.HDR)")
        files.append(str(folder / hdr))
    xml_name = _find(by_lower, prefix + "-METADATA.XML")
    xml_path = folder / xml_name if xml_name else None
    ql = {q: str(folder / m) for q in QL_NAMES if (m := _find(by_lower, f"{prefix}-{q}.TIF"))}
    product_id = folder.name if p.is_dir() else prefix
    return Layout(str(p), product_id, str(folder / name), str(xml_path) if xml_path else None,
                  (lambda: xml_path.read_bytes()) if xml_path else None, ql,
                  files + ([str(xml_path)] if xml_path else []))


# ---------------------------------------------------------------------------------------------
# METADATA.XML


def _strip_namespaces(root) -> None:
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]


def _parse_time(text: str) -> datetime | None:
    m = re.match(r"\s*(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})", text or "")
    return datetime(*map(int, m.groups()), tzinfo=timezone.utc) if m else None


def parse_metadata_xml(data: bytes, label: str) -> dict:
    """{wavelengths, fwhm, gains, offsets (lists in band-number order), time, level, name}."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise ProductError(f"{label}: not valid XML: {err}") from None
    _strip_namespaces(root)
    level = (root.findtext("base/level") or "").strip() or None
    if level and level.upper() != "L2A":
        raise ProductError(f"{label}: processing level {level}; this reader reads L2A surface reflectance")
    chars = root.find("specific/bandCharacterisation")
    if chars is None:
        raise ProductError(f"{label}: missing element specific/bandCharacterisation (per-band wavelength and gain)")
    bands: dict[int, dict] = {}
    for el in chars.findall("bandID"):
        num = el.get("number")
        if num is None or not num.strip().isdigit():
            raise ProductError(f"{label}: specific/bandCharacterisation/bandID without a valid number attribute")
        n = int(num)
        rec = {}
        for fld in XML_BAND_FIELDS:
            text = el.findtext(fld)
            where = f"specific/bandCharacterisation/bandID[@number='{n}']/{fld}"
            if text is None or not text.strip():
                raise ProductError(f"{label}: missing {fld} for band {n} ({where})")
            try:
                rec[fld] = float(text)
            except ValueError:
                raise ProductError(f"{label}: {where} is not a number: {text.strip()!r}") from None
            if not math.isfinite(rec[fld]):
                raise ProductError(f"{label}: {where} is not finite: {text.strip()!r}")
        bands[n] = rec
    if not bands:
        raise ProductError(f"{label}: no specific/bandCharacterisation/bandID elements")
    if sorted(bands) != list(range(1, len(bands) + 1)):
        raise ProductError(f"{label}: bandID numbers are not 1..{len(bands)} (got {sorted(bands)[:3]}...)")
    start = root.findtext("base/temporalCoverage/startTime")
    if start is None or not start.strip():
        raise ProductError(f"{label}: missing base/temporalCoverage/startTime (acquisition time)")
    t = _parse_time(start)
    if t is None:
        raise ProductError(f"{label}: base/temporalCoverage/startTime is not a time: {start.strip()!r}")
    order = [bands[n] for n in range(1, len(bands) + 1)]
    return {"wavelengths": [b["wavelengthCenterOfBand"] for b in order], "fwhm": [b["FWHMOfBand"] for b in order],
            "gains": [b["GainOfBand"] for b in order], "offsets": [b["OffsetOfBand"] for b in order],
            "time": t, "level": level, "name": (root.findtext("metadata/name") or "").strip() or None}


# ---------------------------------------------------------------------------------------------
# wavelengths and gains from raster metadata


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?", text or "")]


def _unit_factor(units: str | None, values: list[float]) -> tuple[float, str]:
    u = (units or "").strip().lower()
    if u in ("nm", "nanometers", "nanometer", "nanometres", "nanometre"):
        return 1.0, "nm"
    if u in ("um", "µm", "micrometers", "micrometer", "micrometres", "micrometre", "microns", "micron", "mu"):
        return 1000.0, "µm"
    if u:
        raise ValueError(f"unknown wavelength units {units!r}")
    return (1000.0, "µm (inferred from values < 30)") if max(values) < 30 else (1.0, "nm (inferred)")


def _tag(tags: dict, *keys: str):
    low = {k.lower().replace(" ", "_"): v for k, v in tags.items()}
    for k in keys:
        if k in low:
            return low[k]
    return None


def wavelengths_from_tags(src, label: str) -> tuple[list[float], list[float] | None, str] | None:
    """(wavelengths nm, fwhm nm or None, source) from band tags, dataset tags or descriptions; None if absent."""
    n = src.count
    try:
        dataset_tags = {**src.tags(ns="ENVI"), **src.tags()}
    except Exception:  # noqa: BLE001 - a missing domain must not break the read
        dataset_tags = dict(src.tags())
    band_tags = [src.tags(i) for i in range(1, n + 1)]
    units = _tag(dataset_tags, "wavelength_units")
    fwhm = None
    try:
        if all(_tag(t, "wavelength", "center_wavelength", "central_wavelength") is not None for t in band_tags):
            wl = [_numbers(_tag(t, "wavelength", "center_wavelength", "central_wavelength"))[0] for t in band_tags]
            u = _tag(band_tags[0], "wavelength_units") or units
            f, unit = _unit_factor(u, wl)
            if all(_tag(t, "fwhm") is not None for t in band_tags):
                fwhm = [_numbers(_tag(t, "fwhm"))[0] * f for t in band_tags]
            return [w * f for w in wl], fwhm, f"band tags 'wavelength' ({unit})"
        listed = _tag(dataset_tags, "wavelength", "wavelengths")
        if listed is not None:
            wl = _numbers(listed)
            if len(wl) != n:
                raise ProductError(f"{label}: dataset tag 'wavelength' lists {len(wl)} values for {n} bands")
            f, unit = _unit_factor(units, wl)
            fw = _tag(dataset_tags, "fwhm")
            if fw is not None and len(_numbers(fw)) == n:
                fwhm = [x * f for x in _numbers(fw)]
            return [w * f for w in wl], fwhm, f"dataset tag 'wavelength' ({unit})"
        descs = list(src.descriptions)
        if all(d and _numbers(d) for d in descs):
            # e.g. "band 12 (0.4932 Micrometers)" or "493.2 nm": take the last number
            wl = [_numbers(d)[-1] for d in descs]
            d0 = descs[0].lower()
            u = "micrometers" if "micro" in d0 or "µm" in d0 else ("nm" if "nm" in d0 or "nano" in d0 else units)
            f, unit = _unit_factor(u, wl)
            return [w * f for w in wl], None, f"band descriptions ({unit})"
    except (ValueError, IndexError) as err:
        raise ProductError(f"{label}: unreadable wavelength metadata: {err}") from None
    return None


def gains_from_tags(src) -> tuple[list[float], list[float], str] | None:
    n = src.count
    scales, offsets = list(src.scales or []), list(src.offsets or [])
    if len(scales) == n and (any(s not in (None, 1.0) for s in scales) or any(o not in (None, 0.0) for o in offsets)):
        return ([s if s is not None else 1.0 for s in scales], [o or 0.0 for o in offsets],
                "GDAL band scale/offset")
    try:
        tags = {**src.tags(ns="ENVI"), **src.tags()}
    except Exception:  # noqa: BLE001
        tags = dict(src.tags())
    gains = _tag(tags, "data_gain_values")
    if gains is not None and len(_numbers(gains)) == n:
        offs = _tag(tags, "data_offset_values")
        off = _numbers(offs) if offs is not None and len(_numbers(offs)) == n else [0.0] * n
        return _numbers(gains), off, "ENVI 'data gain values'"
    rsf = _tag(tags, "reflectance_scale_factor")
    if rsf is not None and _numbers(rsf) and _numbers(rsf)[0] > 0:
        return [1.0 / _numbers(rsf)[0]] * n, [0.0] * n, "ENVI 'reflectance scale factor'"
    band_gains = [_tag(src.tags(i), "gain", "scale_factor") for i in range(1, n + 1)]
    if all(g is not None for g in band_gains):
        band_offsets = [_tag(src.tags(i), "offset", "add_offset") for i in range(1, n + 1)]
        return ([_numbers(g)[0] for g in band_gains],
                [(_numbers(o)[0] if o is not None else 0.0) for o in band_offsets], "band tags 'gain'")
    return None


# ---------------------------------------------------------------------------------------------


def _sample(src, label: str) -> np.ndarray:
    h, w = min(src.height, SAMPLE_SIZE), min(src.width, SAMPLE_SIZE)
    try:
        return src.read(out_shape=(src.count, h, w), resampling=Resampling.nearest)
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ProductError(f"{label}: read failed (truncated or corrupt raster?): {err}") from None


def _reflectance_summary(sample: np.ndarray, bands: list[int], gains, offsets) -> dict | None:
    vals = []
    for b in bands:
        d = sample[b]
        v = d[d != NODATA_DN].astype(np.float64) * gains[b] + offsets[b]
        vals.append(v)
    v = np.concatenate(vals) if vals else np.zeros(0)
    if v.size == 0:
        return None
    return {"median": float(np.median(v)), "p1": float(np.percentile(v, 1)), "p99": float(np.percentile(v, 99))}


def _plausible(summary: dict | None) -> bool:
    return summary is None or (PLAUSIBLE_MEDIAN[0] <= summary["median"] <= PLAUSIBLE_MEDIAN[1]
                               and summary["p99"] <= PLAUSIBLE_P99_MAX)


def in_water_vapour_window(wavelength_nm: float) -> tuple[float, float] | None:
    return next((w for w in WATER_VAPOUR_WINDOWS_NM if w[0] <= wavelength_nm <= w[1]), None)


def _check_ql(src, ref, label: str, spectral_label: str) -> None:
    if (src.width, src.height) != (ref.width, ref.height):
        raise ProductError(f"{label}: quality layer is {src.width}x{src.height} pixels but the spectral image "
                           f"{spectral_label} is {ref.width}x{ref.height} (mismatched shape)")
    if src.crs and ref.crs and CRS.from_user_input(src.crs) != CRS.from_user_input(ref.crs):
        raise ProductError(f"{label}: CRS {src.crs.to_string()} differs from the spectral image's "
                           f"{ref.crs.to_string()}")
    tol = 0.01 * abs(ref.transform.a)
    if any(abs(x - y) > tol for x, y in zip(tuple(src.transform)[:6], tuple(ref.transform)[:6])):
        raise ProductError(f"{label}: grid {tuple(src.transform)[:6]} differs from the spectral image's "
                           f"{tuple(ref.transform)[:6]} (mismatched position)")


def _read(src, indexes, win: Window, label: str) -> np.ndarray:
    try:
        return src.read(indexes, window=RioWindow(win.col, win.row, win.width, win.height))
    except (rasterio.errors.RasterioIOError, rasterio.errors.RasterioError) as err:
        raise ProductError(f"{label}: read failed (truncated or corrupt raster?): {err}") from None


def open_product(path: str, resampling: str = "bilinear", drop_water_vapour: bool | None = None,
                 drop_empty_bands: bool | None = None) -> Scene:
    drop_wv = DROP_WATER_VAPOUR if drop_water_vapour is None else drop_water_vapour
    drop_empty = DROP_EMPTY_BANDS if drop_empty_bands is None else drop_empty_bands
    lay = resolve(path)
    src = open_raster(lay.spectral)
    n = src.count
    if src.dtypes[0] != "int16":
        raise ProductError(f"{lay.spectral}: spectral image is {src.dtypes[0]}; expected int16 DNs (EnMAP L2A)")
    notes: list[str] = []
    name_match = NAME_RE.search(lay.product_id) or NAME_RE.search(os.path.basename(lay.spectral))

    # wavelengths, gains, time
    if lay.xml:
        meta = parse_metadata_xml(lay.read_xml(), lay.xml)
        if len(meta["wavelengths"]) != n:
            raise ProductError(f"{lay.xml}: {len(meta['wavelengths'])} bands in specific/bandCharacterisation "
                               f"but the spectral image {lay.spectral} has {n}")
        wavelengths, fwhm, gains, offsets = meta["wavelengths"], meta["fwhm"], meta["gains"], meta["offsets"]
        wl_source = gain_source = f"METADATA.XML ({os.path.basename(lay.xml)})"
        t, time_source = meta["time"], "METADATA.XML base/temporalCoverage/startTime"
    else:
        found = wavelengths_from_tags(src, lay.spectral)
        if found is not None:
            wavelengths, fwhm, wl_source = found
        elif name_match and n == len(ENMAP_L2A_NOMINAL_WAVELENGTHS_NM):
            wavelengths, fwhm = list(ENMAP_L2A_NOMINAL_WAVELENGTHS_NM), None
            wl_source = "nominal EnMAP L2A band centres (no METADATA.XML, no wavelength tags)"
            notes.append("wavelengths are the nominal EnMAP L2A band centres (ENMAP_L2A_NOMINAL_WAVELENGTHS_NM); "
                         "per-product calibration may differ by about 1 nm")
        else:
            raise ProductError(f"{lay.spectral}: no wavelength information: no METADATA.XML beside it and no "
                               "wavelength tags or band descriptions in the raster")
        g = gains_from_tags(src)
        if g is not None:
            gains, offsets, gain_source = g
        else:
            gains, offsets = [HYSPECNET_GAIN] * n, [0.0] * n
            gain_source = "HySpecNet-11k convention reflectance = DN / 10000 (no gain in METADATA.XML or tags)"
        if name_match:
            t = datetime.strptime(name_match["start"], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
            time_source = "product name (acquisition start)"
        else:
            t = next((x for k, v in src.tags().items() if "TIME" in k.upper() and "START" in k.upper()
                      and (x := _parse_time(str(v)))), None)
            if t is None:
                raise ProductError(f"{lay.spectral}: no acquisition time (no METADATA.XML, no ENMAP01-...L2A-DT..._"
                                   "<start>Z_ product name, no start-time tag)")
            time_source = "raster tag"
    wl_arr = np.asarray(wavelengths, dtype=float)
    if not np.all(np.isfinite(wl_arr)) or np.any(wl_arr <= 0):
        raise ProductError(f"{lay.spectral}: invalid wavelengths from {wl_source}")

    # bands to keep
    sample = _sample(src, lay.spectral)
    keep, dropped_wv, dropped_empty = [], [], []
    for b in range(n):
        window = in_water_vapour_window(wavelengths[b])
        if drop_wv and window:
            dropped_wv.append(b)
        else:
            keep.append(b)
    if drop_empty:
        has_data = (sample != NODATA_DN).reshape(n, -1).any(1)
        if has_data.any():           # an all-nodata sample says nothing about single bands
            dropped_empty = [b for b in keep if not has_data[b]]
            keep = [b for b in keep if has_data[b]]
    if not keep:
        raise ProductError(f"{lay.spectral}: no band left after dropping water-vapour and empty bands")

    summary = _reflectance_summary(sample, keep, gains, offsets)
    evidence = (f"sample of {sample.shape[1]}x{sample.shape[2]} px: reflectance median {summary['median']:.4f}, "
                f"p1 {summary['p1']:.4f}, p99 {summary['p99']:.4f}" if summary else "no valid values in the sample")
    if not _plausible(summary):
        if gain_source.startswith("HySpecNet"):
            raise ProductError(f"{lay.spectral}: DN / 10000 does not give plausible reflectance ({evidence}) and the "
                               "product states no gain")
        notes.append(f"reflectance from {gain_source} looks implausible ({evidence}); check the gain (percent?)")

    # quality layers
    ql_src = {}
    for q, qpath in lay.ql.items():
        if q not in MASKED_QL_LAYERS + ("QL_PIXELMASK", "QL_QUALITY_CLASSES"):
            continue
        s = open_raster(qpath)
        _check_ql(s, src, qpath, lay.spectral)
        if q == "QL_PIXELMASK" and s.count not in (1, n):
            raise ProductError(f"{qpath}: QL_PIXELMASK has {s.count} layers; expected 1 or one per band ({n})")
        ql_src[q] = s
    missing = [q for q in MASKED_QL_LAYERS if q not in ql_src]
    if missing:
        raise ProductError(f"{lay.label}: missing quality layer(s) {', '.join(missing)} (cannot mask clouds, "
                           "shadows and cirrus)")
    if "QL_PIXELMASK" not in ql_src:
        notes.append("no QL_PIXELMASK: defective pixels are not masked")
    grid = Grid.of(src)
    crs = CRS.from_user_input(src.crs) if src.crs else None
    gsd = grid.res if crs is not None and not crs.is_geographic else GSD_M
    keep_idx = [b + 1 for b in keep]
    flagged_fraction = None
    if "QL_PIXELMASK" in ql_src and ql_src["QL_PIXELMASK"].count == n:
        pm = _sample(ql_src["QL_PIXELMASK"], lay.ql["QL_PIXELMASK"])[keep]
        flagged_fraction = float((pm != 0).mean())
        notes.append(f"QL_PIXELMASK flags {flagged_fraction:.1%} of the kept band-pixels (sample); a pixel is "
                     f"invalid only when more than {PIXELMASK_MAX_FLAGGED_FRACTION:.0%} of its kept bands are "
                     "flagged, otherwise flagged values are kept")

    def read(win: Window) -> tuple[np.ndarray, np.ndarray]:
        data = _read(src, keep_idx, win, lay.spectral)
        valid = (data != NODATA_DN).all(axis=0)
        for q, s in ql_src.items():
            if q == "QL_PIXELMASK":
                if s.count == n:
                    pm = _read(s, keep_idx, win, lay.ql[q])
                    valid &= (pm != 0).mean(axis=0) <= PIXELMASK_MAX_FLAGGED_FRACTION
                else:
                    valid &= _read(s, 1, win, lay.ql[q]) == 0
            elif q == "QL_QUALITY_CLASSES":
                valid &= _read(s, 1, win, lay.ql[q]) != QL_CLASSES_BACKGROUND
            else:
                valid &= _read(s, 1, win, lay.ql[q]) == 0
        return data.astype(np.int16, copy=False), valid

    names = [f"B{b + 1:03d}" for b in range(n)]
    return Scene(
        product_id=lay.product_id,
        path=lay.label,
        sensor=SENSOR,
        bands=[names[b] for b in keep],
        wavelengths_nm=[float(wavelengths[b]) for b in keep],
        gsd_m=float(gsd),
        crs=grid.crs,
        transform=grid.transform,
        height=grid.height,
        width=grid.width,
        time=t.strftime("%Y-%m-%dT%H:%M:%SZ"),
        scale=[float(gains[b]) for b in keep],
        offset=[float(offsets[b]) for b in keep],
        dtype="int16",
        units=UNITS,
        reader=read,
        radiometry={
            "formula": "reflectance = DN * gain + offset",
            "gain_source": gain_source,
            "gains": sorted({float(gains[b]) for b in keep}),
            "offsets": sorted({float(offsets[b]) for b in keep}),
            "evidence": evidence,
            "wavelength_source": wl_source,
            "fwhm_nm": [float(fwhm[b]) for b in keep] if fwhm else None,
            "time_source": time_source,
            "nodata": NODATA_DN,
            "dropped_bands": {
                "water_vapour": [names[b] for b in dropped_wv],
                "empty": [names[b] for b in dropped_empty],
            },
            "water_vapour_windows_nm": [list(w) for w in WATER_VAPOUR_WINDOWS_NM] if drop_wv else None,
            "kept_bands": len(keep),
            "masks": {"applied": sorted(ql_src), "not_applied": [q for q in UNMASKED_QL_LAYERS if q in lay.ql],
                      "pixelmask_max_flagged_fraction": PIXELMASK_MAX_FLAGGED_FRACTION},
            "resampling": f"{resampling} (unused: one grid)",
            "notes": notes,
        },
        files=lay.files + ([] if lay.files and lay.files[0].lower().endswith(".zip")
                           else [lay.ql[q] for q in sorted(ql_src)]),
    )

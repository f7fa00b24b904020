"""HLS v2.0 granules (HLSS30 from Sentinel-2 MSI, HLSL30 from Landsat 8/9 OLI) as LP DAAC delivers them.

One Cloud Optimized GeoTIFF per band, named
  HLS.<S30|L30>.T<MGRS tile>.<YYYYDDD>T<hhmmss>.v2.0.<BAND>.tif
where everything before `.<BAND>.tif` is the granule id and YYYYDDD/hhmmss the UTC acquisition
date (year, day of year) and time. Reflectance bands are int16, scale 0.0001, offset 0, nodata
-9999, 30 m on the MGRS tile grid. Fmask is uint8 (fill 255); SZA/SAA/VZA/VAA angle bands are
ignored.

  S30 (13 bands): B01 coastal aerosol, B02-B04 blue/green/red, B05-B07 red edge 1-3, B08 NIR broad,
                  B8A NIR narrow, B09 water vapour, B10 cirrus, B11/B12 SWIR 1/2
  L30: B01-B07 (coastal aerosol, blue, green, red, NIR narrow, SWIR 1, SWIR 2), B09 cirrus, and
       B10/B11 TIRS brightness temperature (0.01 degC). The thermal bands are not reflectance and
       are left out of the stack (Scene.bands holds reflectance only).

Scene.bands are common names, so S30 and L30 share a name wherever the band is the same physical
band (S30 B8A and L30 B05 are both `nir_narrow`, S30 B10 and L30 B09 both `cirrus`). HLS adjusts
the S30 coastal/blue/green/red/NIR-narrow/SWIR bands to the OLI spectral response (bandpass
adjustment), so those carry OLI centre wavelengths in both products; the MSI-only bands (red
edge, broad NIR, water vapour) and S30 cirrus keep their MSI wavelengths. Water vapour and
cirrus are top-of-atmosphere reflectance in HLS (not atmospherically corrected); this is recorded
in the notes.

The walker claims a folder, so a product here is a folder holding the files of one granule. A
folder holding several granules' files (a flat download) is claimed too and fails to open with
a ProductError listing the granules: put each granule in its own folder (e.g. named after the
granule id).
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from data_prep.bands import SENTINEL2
from data_prep.sources.landsat_c2 import OLI_CIRRUS_NM, SENSOR_BANDS
from data_prep.sources.raster import Grid, check_aligned, open_raster, stack_reader
from data_prep.sources.folders import one_product
from data_prep.sources.scene import ProductError, Scene

KIND = "hls"

GRANULE_RE = re.compile(
    r"^(?P<granule>HLS\.(?P<product>S30|L30)\.T(?P<tile>\d{2}[A-Z]{3})\.(?P<date>\d{7})T(?P<clock>\d{6})"
    r"\.v(?P<version>\d+\.\d+))\.(?P<band>[A-Za-z0-9]+)\.tif$")

# common name -> HLS band, per product, in band order.
S30_BANDS = [("coastal_aerosol", "B01"), ("blue", "B02"), ("green", "B03"), ("red", "B04"),
             ("red_edge_1", "B05"), ("red_edge_2", "B06"), ("red_edge_3", "B07"), ("nir_broad", "B08"),
             ("nir_narrow", "B8A"), ("water_vapour", "B09"), ("cirrus", "B10"), ("swir_1", "B11"),
             ("swir_2", "B12")]
L30_BANDS = [("coastal_aerosol", "B01"), ("blue", "B02"), ("green", "B03"), ("red", "B04"),
             ("nir_narrow", "B05"), ("swir_1", "B06"), ("swir_2", "B07"), ("cirrus", "B09")]
L30_THERMAL = ("B10", "B11")          # TOA brightness temperature, 0.01 degC: not in the stack
ANGLE_BANDS = ("SZA", "SAA", "VZA", "VAA")
TOA_BANDS = ("water_vapour", "cirrus")  # not atmospherically corrected in HLS
PRODUCTS = {"S30": ("hls_s30", S30_BANDS), "L30": ("hls_l30", L30_BANDS)}

_OLI_NM = {name: wl for name, _, wl in SENSOR_BANDS["landsat_oli"]} | {"cirrus": OLI_CIRRUS_NM}
# S30 bands that HLS bandpass-adjusts to their OLI counterpart: they carry OLI wavelengths.
S30_BANDPASS_ADJUSTED = ("coastal_aerosol", "blue", "green", "red", "nir_narrow", "swir_1", "swir_2")
WAVELENGTHS_NM = {
    "hls_l30": {name: _OLI_NM[name] for name, _ in L30_BANDS},
    "hls_s30": {name: _OLI_NM[name] if name in S30_BANDPASS_ADJUSTED else SENTINEL2[band][0]
                for name, band in S30_BANDS},
}
GSD_M = 30.0

SCALE = 1e-4
OFFSET = 0.0
NODATA = -9999
FMASK = "Fmask"
FMASK_FILL = 255
# Fmask bits (HLS v2.0): 0 cirrus (reserved, not used), 1 cloud, 2 adjacent to cloud/shadow,
# 3 cloud shadow, 4 snow/ice, 5 water, 6-7 aerosol level. Invalid for pretraining: cloud,
# adjacent, shadow and snow/ice (snow is masked as in the Landsat reader: bright, mostly
# featureless, and easily confused with cloud). Water and aerosol level are kept.
FMASK_INVALID_BITS = (1, 2, 3, 4)
FMASK_INVALID_MASK = sum(1 << b for b in FMASK_INVALID_BITS)


def _granules(names) -> dict[str, dict]:
    """{granule id: {'product': 'S30', 'date': ..., 'clock': ..., 'version': ..., 'files': {band: name}}}."""
    out: dict[str, dict] = {}
    for n in sorted(names):
        m = GRANULE_RE.match(n)
        if not m:
            continue
        g = out.setdefault(m["granule"], {"product": m["product"], "tile": m["tile"], "date": m["date"],
                                          "clock": m["clock"], "version": m["version"], "files": {}})
        g["files"][m["band"]] = n
    return out


def match(path: str, names: set[str], is_dir: bool) -> bool:
    """A folder holding per-band COGs of an HLS granule (HLS.S30.* / HLS.L30.*)."""
    return is_dir and bool(_granules(names))


def granule_time(granule: str, date: str, clock: str) -> datetime:
    """YYYYDDD + hhmmss of the granule id -> UTC datetime."""
    try:
        year, doy = int(date[:4]), int(date[4:])
        if not 1 <= doy <= (366 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 365):
            raise ValueError(date)
        t = datetime.strptime(clock, "%H%M%S")
    except ValueError:
        raise ProductError(f"{granule}: invalid acquisition date/time {date}T{clock} in the granule id") from None
    return datetime(year, 1, 1, t.hour, t.minute, t.second, tzinfo=timezone.utc) + timedelta(days=doy - 1)


def _check_declared_scale(src, path: Path) -> None:
    """The file's own scale/offset, when it declares one, must match the documented one."""
    scale, offset = src.scales[0], src.offsets[0]
    if (scale, offset) == (1.0, 0.0):      # not declared (GDAL default)
        return
    if abs(scale - SCALE) > 1e-12 or abs(offset - OFFSET) > 1e-12:
        raise ProductError(f"{path}: declares scale {scale} / offset {offset}, not the HLS v2.0 reflectance "
                           f"scale {SCALE} / offset {OFFSET}")


def open_product(path: str, resampling: str = "bilinear") -> Scene:
    folder = Path(path)
    gid, g, names = one_product(path, _granules, "HLS granule",
                         "an HLS granule is a folder of HLS.<S30|L30>.<tile>.<time>.v2.0.<BAND>.tif files")
    if not g["version"].startswith("2."):
        raise ProductError(f"{gid}: HLS version {g['version']} is not supported (this reader reads v2.x COGs)")
    sensor, table = PRODUCTS[g["product"]]
    when = granule_time(gid, g["date"], g["clock"])

    needed = [band for _, band in table] + [FMASK]
    missing = [f"{gid}.{b}.tif" for b in needed if b not in g["files"]]
    if missing:
        raise ProductError(f"{folder}: missing band file(s) {', '.join(missing)}")
    files = {b: folder / g["files"][b] for b in needed}

    notes: list[str] = []
    sources = {b: open_raster(str(f)) for b, f in files.items()}
    for b, src in sources.items():
        dtype = "uint8" if b == FMASK else "int16"
        if src.count != 1 or src.dtypes[0] != dtype:
            raise ProductError(f"{files[b]}: expected one {dtype} band as HLS v2.0 delivers it, found "
                               f"{src.count} band(s) of {src.dtypes[0]}")
        if b != FMASK:
            _check_declared_scale(src, files[b])
    grid = Grid.of(sources[needed[0]])
    check_aligned(sources, grid, {b: str(f) for b, f in files.items()})
    bands = needed[:-1]
    nodata = {b: {NODATA} | ({int(sources[b].nodata)} if sources[b].nodata is not None else set()) for b in bands}
    fmask_src = sources[FMASK]

    labels = {b: str(f) for b, f in files.items()}
    fmask_invalid = lambda fm: (fm == FMASK_FILL) | ((fm & FMASK_INVALID_MASK) != 0)  # noqa: E731
    read = stack_reader(bands, sources, labels, grid, resampling, np.int16,
                        lambda b, v: np.isin(v, list(nodata[b])), [(fmask_src, labels[FMASK], 1, fmask_invalid)])

    notes += [
        f"reflectance = DN * {SCALE} (offset {OFFSET}); nodata {NODATA}",
        f"invalid: nodata in any band, Fmask fill {FMASK_FILL} or Fmask bits {list(FMASK_INVALID_BITS)} "
        "(cloud, adjacent to cloud/shadow, cloud shadow, snow/ice)",
        f"{', '.join(n for n in TOA_BANDS if n in dict(table))}: top-of-atmosphere reflectance "
        "(HLS does not atmospherically correct these bands)",
    ]
    if g["product"] == "L30":
        notes.append("thermal bands B10/B11 (TOA brightness temperature, 0.01 degC) are not in the reflectance stack")
    else:
        notes.append(f"{', '.join(S30_BANDPASS_ADJUSTED)} are bandpass-adjusted to OLI by HLS and carry OLI "
                     "centre wavelengths")
    known = set(needed) | set(ANGLE_BANDS) | set(L30_THERMAL)
    extra = sorted(b for b in g["files"] if b not in known)
    ignored = sorted(n for n in names if n.lower().endswith((".tif", ".tiff")) and not GRANULE_RE.match(n))
    if extra or ignored:
        notes.append(f"ignored raster file(s): {', '.join([g['files'][b] for b in extra] + ignored)}")

    return Scene(
        product_id=gid,
        path=str(folder),
        sensor=sensor,
        bands=[name for name, _ in table],
        wavelengths_nm=[WAVELENGTHS_NM[sensor][name] for name, _ in table],
        gsd_m=grid.res,
        crs=grid.crs,
        transform=grid.transform,
        height=grid.height,
        width=grid.width,
        time=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        scale=[SCALE] * len(bands),
        offset=[OFFSET] * len(bands),
        dtype="int16",
        units="surface reflectance",
        reader=read,
        radiometry={
            "source": "HLS v2.0 product specification",
            "hls_version": g["version"],
            "formula": f"reflectance = DN * {SCALE}",
            "bands": {name: band for name, band in table},
            "nodata": NODATA,
            "fmask_fill": FMASK_FILL,
            "fmask_invalid_bits": list(FMASK_INVALID_BITS),
            "resampling": resampling,
            "notes": notes,
        },
        files=[str(files[b]) for b in needed],
    )

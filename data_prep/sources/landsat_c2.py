"""Landsat 4-9 Collection 2 Level-2 products (L2SP, L2SR) as USGS delivers them.

Layout: one folder per product, every file named `<product id>_<suffix>`:

  <id>_SR_B<n>.TIF          surface reflectance, uint16 COG, 30 m, nodata (fill) 0
  <id>_QA_PIXEL.TIF         per-pixel quality bits, uint16
  <id>_MTL.txt / .xml / .json   metadata; any one is enough (all three carry the same content)
  (ST_*, QA_RADSAT, SR_QA_AEROSOL, ANG.txt, ... are delivered too and not used here)

Product id: `L<sensor><mission>_<level>_<path><row>_<acquired>_<processed>_02_<tier>`, e.g.
`LC08_L2SP_193026_20230715_20230725_02_T1` (C = OLI/TIRS, O = OLI only, E = ETM+, T = TM).

Bands per sensor (each sensor key has exactly one band set):
  landsat_oli (L8, L9)  SR_B1..B7: coastal_aerosol, blue, green, red, nir_narrow, swir_1, swir_2
  landsat_etm (L7)      SR_B1..B5, SR_B7: blue, green, red, nir, swir_1, swir_2
  landsat_tm  (L4, L5)  SR_B1..B5, SR_B7: blue, green, red, nir, swir_1, swir_2

Radiometry: reflectance = DN * REFLECTANCE_MULT_BAND_n + REFLECTANCE_ADD_BAND_n, read per band
from the MTL group LEVEL2_SURFACE_REFLECTANCE_PARAMETERS (2.75e-05 and -0.2 in every C2 product).
The MTL repeats the same key names in LEVEL1_RADIOMETRIC_RESCALING (top-of-atmosphere
reflectance, 2.0e-05 / -0.1); those describe the Level-1 input and must never be used for SR, so
the MTL is parsed into groups and only the Level-2 group is read.

Valid pixels: no SR band at fill (DN 0) and none of the QA_PIXEL bits in QA_INVALID_BITS set.

A folder holding the files of several products is claimed (so the problem is reported, not
silently skipped) and fails to open with a ProductError listing the product ids: put each
product in its own folder, as USGS bundles unpack.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from data_prep.sources.raster import Grid, check_aligned, open_raster, stack_reader
from data_prep.sources.folders import one_product
from data_prep.sources.scene import ProductError, Scene

KIND = "landsat_c2"

PRODUCT_ID = (r"L(?P<sensor>[COTE])(?P<mission>0[4-9])_(?P<level>L2S[PR])_(?P<pathrow>\d{6})_"
              r"(?P<acquired>\d{8})_(?P<processed>\d{8})_02_(?P<tier>T1|T2|RT)")
ID_RE = re.compile(PRODUCT_ID)
# <id>_<suffix>.<ext> for the files this reader cares about (suffix case as delivered).
FILE_RE = re.compile(rf"^(?P<id>{PRODUCT_ID})_(?P<suffix>SR_B\d|QA_PIXEL|MTL)\.(?P<ext>tiff?|txt|xml|json)$",
                     re.IGNORECASE)
ANY_FILE_RE = re.compile(rf"^(?P<id>{PRODUCT_ID})_")

# MTL forms in order of preference (identical content; the first one present is read).
MTL_EXTENSIONS = ("txt", "xml", "json")
MTL_ROOT = "LANDSAT_METADATA_FILE"
L2_SR_GROUP = "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"

# Centre wavelength (nm) = midpoint of the band limits USGS publishes per sensor ("What are the
# band designations for the Landsat satellites?"); gsd 30 m for all reflective bands.
# sensor key -> [(common name, SR band number, centre wavelength nm)]
SENSOR_BANDS = {
    "landsat_oli": [("coastal_aerosol", 1, 440.0), ("blue", 2, 480.0), ("green", 3, 560.0), ("red", 4, 655.0),
                    ("nir_narrow", 5, 865.0), ("swir_1", 6, 1610.0), ("swir_2", 7, 2200.0)],
    "landsat_etm": [("blue", 1, 485.0), ("green", 2, 560.0), ("red", 3, 660.0), ("nir", 4, 835.0),
                    ("swir_1", 5, 1650.0), ("swir_2", 7, 2220.0)],
    "landsat_tm": [("blue", 1, 485.0), ("green", 2, 560.0), ("red", 3, 660.0), ("nir", 4, 830.0),
                   ("swir_1", 5, 1650.0), ("swir_2", 7, 2215.0)],
}
# OLI band 9 (1.36-1.38 um), not in Level-2 products; HLS L30 delivers it (see hls.py).
OLI_CIRRUS_NM = 1370.0
GSD_M = 30.0

SR_FILL_DN = 0
# QA_PIXEL bits that make a pixel invalid for pretraining (USGS C2 QA_PIXEL layout):
#   0 fill, 1 dilated cloud, 2 cirrus (L8/9; always 0 on L4-7), 3 cloud, 4 cloud shadow, 5 snow.
# Not masked: 6 clear, 7 water (a surface, not contamination) and the confidence pairs in bits
# 8-15, which are "low" on ordinary clear pixels (21824 = clear land, 21952 = clear water).
QA_INVALID_BITS = (0, 1, 2, 3, 4, 5)
QA_INVALID_MASK = sum(1 << b for b in QA_INVALID_BITS)

# USGS valid range of C2 SR DNs: 7273..43636, i.e. reflectance 0..1. DNs outside it exist in real
# products (negative SR over dark water and shadow from the atmospheric correction, > 1 over
# bright cloud and snow, most of which QA_PIXEL already masks). They are KEPT valid: the stored
# integers are passed on as delivered, masking every pixel where any band dips below 0 would
# bias the data against water and dark surfaces, and the manifest's p1/p99 show the tails.
SR_VALID_RANGE_DN = (7273, 43636)
MASK_OUTSIDE_VALID_RANGE = False


def _products(names) -> dict[str, dict[str, str]]:
    """{product id: {'SR_B1': name, 'QA_PIXEL': name, 'MTL.txt': name, ...}} from entry names."""
    out: dict[str, dict[str, str]] = {}
    for n in sorted(names):
        m = FILE_RE.match(n)
        if not m:
            continue
        suffix = m["suffix"].upper()
        key = f"MTL.{m['ext'].lower()}" if suffix == "MTL" else suffix
        if suffix != "MTL" and m["ext"].lower() not in ("tif", "tiff"):
            continue
        out.setdefault(m["id"], {})[key] = n
    return out


def match(path: str, names: set[str], is_dir: bool) -> bool:
    """A folder holding the SR bands or the MTL of a Collection 2 Level-2 product."""
    return is_dir and bool(_products(names))


# ---------------------------------------------------------------- MTL (txt, xml, json)

def _parse_odl(text: str, path: str) -> dict:
    """USGS MTL.txt (`GROUP = X` ... `END_GROUP = X`, `KEY = value`) -> nested dict of strings."""
    root: dict = {}
    stack = [(None, root)]
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line == "END":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ProductError(f"{path}: line {n}: expected 'KEY = value', got {line!r}")
        if key == "GROUP":
            group: dict = {}
            stack[-1][1][value] = group
            stack.append((value, group))
        elif key == "END_GROUP":
            if stack[-1][0] != value:
                raise ProductError(f"{path}: line {n}: END_GROUP = {value} does not close GROUP = {stack[-1][0]}")
            stack.pop()
        else:
            stack[-1][1][key] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if len(stack) != 1:
        raise ProductError(f"{path}: GROUP = {stack[-1][0]} is never closed (truncated MTL?)")
    return root


def _xml_to_dict(elem) -> dict | str:
    children = list(elem)
    if not children:
        return (elem.text or "").strip()
    return {child.tag.rsplit("}", 1)[-1]: _xml_to_dict(child) for child in children}


def parse_mtl(path: str) -> dict[str, dict]:
    """The groups under LANDSAT_METADATA_FILE of an MTL in any of its three forms."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise ProductError(f"{path}: cannot read MTL: {err}") from None
    ext = p.suffix.lower()
    if ext == ".txt":
        doc = _parse_odl(text, path)
    elif ext == ".xml":
        try:
            root = ET.fromstring(text)
        except ET.ParseError as err:
            raise ProductError(f"{path}: not valid XML: {err}") from None
        doc = {root.tag.rsplit("}", 1)[-1]: _xml_to_dict(root)}
    elif ext == ".json":
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise ProductError(f"{path}: not valid JSON: {err}") from None
    else:
        raise ProductError(f"{path}: unknown MTL form {ext!r} (expected .txt, .xml or .json)")
    meta = doc.get(MTL_ROOT) if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        raise ProductError(f"{path}: not a Landsat Collection 2 MTL (no {MTL_ROOT} group)")
    return meta


def mtl_field(meta: dict, group: str, key: str, path: str) -> str:
    """Value of `group`.`key` as a string, or ProductError naming the MTL and the field."""
    grp = meta.get(group)
    if not isinstance(grp, dict):
        hint = (" (a Level-1 MTL? the REFLECTANCE_* values in LEVEL1_RADIOMETRIC_RESCALING are top-of-"
                "atmosphere, not surface reflectance)" if group == L2_SR_GROUP else "")
        raise ProductError(f"{path}: missing MTL group {group}{hint}")
    if key not in grp or grp[key] in (None, "") or isinstance(grp[key], dict):
        raise ProductError(f"{path}: missing MTL field {group}.{key}")
    return str(grp[key])


def _number(meta: dict, group: str, key: str, path: str) -> float:
    value = mtl_field(meta, group, key, path)
    try:
        return float(value)
    except ValueError:
        raise ProductError(f"{path}: MTL field {group}.{key} = {value!r} is not a number") from None


def acquisition_time(meta: dict, path: str) -> datetime:
    """DATE_ACQUIRED + SCENE_CENTER_TIME (UTC), to the second."""
    date = mtl_field(meta, "IMAGE_ATTRIBUTES", "DATE_ACQUIRED", path)
    clock = mtl_field(meta, "IMAGE_ATTRIBUTES", "SCENE_CENTER_TIME", path)
    m = re.fullmatch(r"(\d{1,2}):(\d{2}):(\d{2})(?:\.\d*)?Z?", clock.strip())
    try:
        day = datetime.strptime(date.strip(), "%Y-%m-%d")
        if not m:
            raise ValueError(clock)
        return day.replace(hour=int(m[1]), minute=int(m[2]), second=int(m[3]), tzinfo=timezone.utc)
    except ValueError:
        raise ProductError(f"{path}: cannot read the acquisition time from IMAGE_ATTRIBUTES.DATE_ACQUIRED "
                           f"{date!r} and SCENE_CENTER_TIME {clock!r}") from None


# ---------------------------------------------------------------- product

def sensor_of(product_id: str) -> str:
    m = ID_RE.fullmatch(product_id)
    if not m:
        raise ProductError(f"{product_id}: not a Landsat Collection 2 Level-2 product id")
    letter, mission = m["sensor"], m["mission"]
    if mission in ("08", "09") and letter in "CO":
        return "landsat_oli"
    if mission == "07" and letter == "E":
        return "landsat_etm"
    if mission in ("04", "05") and letter == "T":
        return "landsat_tm"
    raise ProductError(f"{product_id}: sensor L{letter}{mission} has no surface-reflectance bands this reader knows")


def _check_band(src, path: Path, dtype: str) -> None:
    if src.count != 1 or src.dtypes[0] != dtype:
        raise ProductError(f"{path}: expected one {dtype} band as USGS delivers it, found "
                           f"{src.count} band(s) of {src.dtypes[0]}")


def open_product(path: str, resampling: str = "bilinear") -> Scene:
    folder = Path(path)
    pid, entries, names = one_product(path, _products, "Landsat Collection 2 Level-2",
                               "a Landsat C2 L2 product is a folder of <id>_SR_B<n>.TIF files, "
                               "<id>_QA_PIXEL.TIF and <id>_MTL.txt|xml|json")
    sensor = sensor_of(pid)
    table = SENSOR_BANDS[sensor]

    mtl_name = next((entries[f"MTL.{e}"] for e in MTL_EXTENSIONS if f"MTL.{e}" in entries), None)
    if mtl_name is None:
        raise ProductError(f"{folder}: missing metadata file {pid}_MTL.txt (or {pid}_MTL.xml / {pid}_MTL.json)")
    mtl_path = str(folder / mtl_name)
    meta = parse_mtl(mtl_path)
    mtl_id = mtl_field(meta, "PRODUCT_CONTENTS", "LANDSAT_PRODUCT_ID", mtl_path)
    if mtl_id != pid:
        raise ProductError(f"{mtl_path}: PRODUCT_CONTENTS.LANDSAT_PRODUCT_ID is {mtl_id}, but the files are named "
                           f"{pid}_*: metadata and bands come from different products")
    when = acquisition_time(meta, mtl_path)

    needed = [f"SR_B{n}" for _, n, _ in table] + ["QA_PIXEL"]
    missing = [f"{pid}_{k}.TIF" for k in needed if k not in entries]
    if missing:
        raise ProductError(f"{folder}: missing band file(s) {', '.join(missing)}")
    files = {k: folder / entries[k] for k in needed}

    scale = [_number(meta, L2_SR_GROUP, f"REFLECTANCE_MULT_BAND_{n}", mtl_path) for _, n, _ in table]
    offset = [_number(meta, L2_SR_GROUP, f"REFLECTANCE_ADD_BAND_{n}", mtl_path) for _, n, _ in table]

    sources = {k: open_raster(str(f)) for k, f in files.items()}
    for k, src in sources.items():
        _check_band(src, files[k], "uint16")
    grid = Grid.of(sources[needed[0]])
    check_aligned(sources, grid, {k: str(f) for k, f in files.items()})
    band_keys = needed[:-1]
    qa_src = sources["QA_PIXEL"]

    def sr_invalid(_band: str, dn: np.ndarray) -> np.ndarray:
        bad = dn == SR_FILL_DN
        if MASK_OUTSIDE_VALID_RANGE:
            bad |= (dn < SR_VALID_RANGE_DN[0]) | (dn > SR_VALID_RANGE_DN[1])
        return bad

    labels = {k: str(f) for k, f in files.items()}
    read = stack_reader(band_keys, sources, labels, grid, resampling, np.uint16, sr_invalid,
                        [(qa_src, labels["QA_PIXEL"], 1, lambda qa: (qa & QA_INVALID_MASK) != 0)])

    notes = [
        f"scale/offset from {mtl_name} group {L2_SR_GROUP} (not the Level-1 REFLECTANCE_* values)",
        f"invalid: SR fill (DN {SR_FILL_DN}) or QA_PIXEL bits {list(QA_INVALID_BITS)} "
        "(fill, dilated cloud, cirrus, cloud, cloud shadow, snow)",
        f"DNs outside the USGS valid range {SR_VALID_RANGE_DN[0]}-{SR_VALID_RANGE_DN[1]} (reflectance < 0 or > 1) are "
        + ("masked" if MASK_OUTSIDE_VALID_RANGE else "kept valid, as delivered"),
        "surface temperature (ST_*) and QA_RADSAT are not used",
    ]
    if str(meta.get("IMAGE_ATTRIBUTES", {}).get("SENSOR_MODE_SLC", "")).upper() == "OFF":
        notes.append("Landsat 7 SLC-off: the scan-line gaps are fill and are masked")
    ignored = sorted(n for n in names if n.lower().endswith((".tif", ".tiff")) and not ANY_FILE_RE.match(n))
    if ignored:
        notes.append(f"ignored {len(ignored)} raster file(s) of no Landsat product: {', '.join(ignored[:5])}"
                     + (", ..." if len(ignored) > 5 else ""))

    return Scene(
        product_id=pid,
        path=str(folder),
        sensor=sensor,
        bands=[name for name, _, _ in table],
        wavelengths_nm=[wl for _, _, wl in table],
        gsd_m=grid.res,
        crs=grid.crs,
        transform=grid.transform,
        height=grid.height,
        width=grid.width,
        time=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        scale=scale,
        offset=offset,
        dtype="uint16",
        units="surface reflectance",
        reader=read,
        radiometry={
            "source": f"MTL {L2_SR_GROUP}",
            "mtl": mtl_name,
            "formula": "reflectance = DN * REFLECTANCE_MULT_BAND_n + REFLECTANCE_ADD_BAND_n",
            "bands": {name: f"SR_B{n}" for name, n, _ in table},
            "fill_dn": SR_FILL_DN,
            "qa_pixel_invalid_bits": list(QA_INVALID_BITS),
            "valid_range_dn": list(SR_VALID_RANGE_DN),
            "outside_valid_range": "masked" if MASK_OUTSIDE_VALID_RANGE else "kept",
            "resampling": resampling,
            "notes": notes,
        },
        files=[str(files[k]) for k in needed] + [mtl_path],
    )

"""Small fixture products in the layouts USGS and LP DAAC deliver: Landsat C2 L2 and HLS v2.0.

Everything is written the way the providers write it: per-band Cloud Optimized GeoTIFFs with the
delivered names, dtypes and nodata, and the Landsat MTL in its txt (ODL), xml and json forms with
the Level-2 group first and the Level-1 group (same key names, other values) after it, as in real
MTLs. The generators know the formats from the provider documents, not from the readers, so the
reader tests check the readers against the formats.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

SIZE = 40
CRS = "EPSG:32633"
ORIGIN = (399960.0, 5000040.0)
RES = 30.0

# ------------------------------------------------------------------ Landsat Collection 2 Level-2

LANDSAT_OLI_ID = "LC08_L2SP_193026_20230715_20230725_02_T1"
LANDSAT_L9_ID = "LC09_L2SP_193026_20230723_20230725_02_T1"
LANDSAT_TM_ID = "LT05_L2SP_193026_19950704_20200912_02_T1"
LANDSAT_ETM_ID = "LE07_L2SP_193026_20020619_20200916_02_T1"
# SR band numbers per mission
LANDSAT_SR_BANDS = {"LC08": [1, 2, 3, 4, 5, 6, 7], "LC09": [1, 2, 3, 4, 5, 6, 7],
                    "LE07": [1, 2, 3, 4, 5, 7], "LT05": [1, 2, 3, 4, 5, 7], "LT04": [1, 2, 3, 4, 5, 7]}
L2_MULT, L2_ADD = 2.75e-05, -0.2          # LEVEL2_SURFACE_REFLECTANCE_PARAMETERS
L1_MULT, L1_ADD = 2.0e-05, -0.1           # LEVEL1_RADIOMETRIC_RESCALING (TOA): must never be used for SR
QA_CLEAR_LAND, QA_CLEAR_WATER, QA_FILL = 21824, 21952, 1


def write_cog(path, data: np.ndarray, nodata=None, crs: str = CRS, origin=ORIGIN, res: float = RES,
              scale: float | None = None, offset: float | None = None) -> Path:
    """(H, W) array -> single-band tiled, deflate-compressed COG at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = data.shape
    profile = dict(driver="COG", width=w, height=h, count=1, dtype=data.dtype, crs=crs,
                   transform=from_origin(origin[0], origin[1], res, res), blocksize=16, compress="deflate")
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        if scale is not None:
            dst.scales = (scale,)
            dst.offsets = (offset or 0.0,)
    return path


def landsat_dn(band: int, size: int = SIZE) -> np.ndarray:
    """A distinct, valid-range DN pattern per band: 8000 + 1000*band + 7*row + 3*col."""
    r, c = np.mgrid[0:size, 0:size]
    return (8000 + 1000 * band + 7 * r + 3 * c).astype(np.uint16)


def landsat_mtl(product_id: str, mult: float = L2_MULT, add: float = L2_ADD, drop=()) -> dict:
    """MTL content as {group: {key: value string}}, groups in the delivered order (Level-2 first).

    `drop`: (group, key) pairs to leave out, or (group, None) to leave out a whole group.
    """
    mission = product_id[:4]
    bands = LANDSAT_SR_BANDS[mission]
    acquired = product_id[17:25]
    date = f"{acquired[:4]}-{acquired[4:6]}-{acquired[6:]}"
    spacecraft, sensor = {"LC08": ("LANDSAT_8", "OLI_TIRS"), "LC09": ("LANDSAT_9", "OLI_TIRS"),
                          "LE07": ("LANDSAT_7", "ETM"), "LT05": ("LANDSAT_5", "TM"),
                          "LT04": ("LANDSAT_4", "TM")}[mission]
    l1_id = product_id.replace("_L2SP_", "_L1TP_").replace("_L2SR_", "_L1TP_")
    groups = {
        "PRODUCT_CONTENTS": {
            "ORIGIN": "Image courtesy of the U.S. Geological Survey",
            "LANDSAT_PRODUCT_ID": product_id,
            "PROCESSING_LEVEL": product_id[5:9],
            "COLLECTION_NUMBER": "02",
            "COLLECTION_CATEGORY": product_id[-2:],
            **{f"FILE_NAME_BAND_{n}": f"{product_id}_SR_B{n}.TIF" for n in bands},
            "FILE_NAME_QUALITY_L1_PIXEL": f"{product_id}_QA_PIXEL.TIF",
            "FILE_NAME_METADATA_ODL": f"{product_id}_MTL.txt",
        },
        "IMAGE_ATTRIBUTES": {
            "SPACECRAFT_ID": spacecraft,
            "SENSOR_ID": sensor,
            "WRS_PATH": product_id[10:13],
            "WRS_ROW": product_id[13:16],
            "DATE_ACQUIRED": date,
            "SCENE_CENTER_TIME": "09:58:12.7654321Z",     # USGS writes seven fractional digits
            "CLOUD_COVER": "12.34",
        },
        "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS": {
            **{k: v for n in bands for k, v in (
                (f"REFLECTANCE_MAXIMUM_BAND_{n}", "1.602213"), (f"REFLECTANCE_MINIMUM_BAND_{n}", "-0.199972"))},
            **{k: v for n in bands for k, v in (
                (f"QUANTIZE_CAL_MAX_BAND_{n}", "65535"), (f"QUANTIZE_CAL_MIN_BAND_{n}", "1"))},
            **{f"REFLECTANCE_MULT_BAND_{n}": f"{mult:.2e}" for n in bands},
            **{f"REFLECTANCE_ADD_BAND_{n}": f"{add:g}" for n in bands},
        },
        "LEVEL2_SURFACE_TEMPERATURE_PARAMETERS": {
            "TEMPERATURE_MULT_BAND_ST_B10": "0.00341802",
            "TEMPERATURE_ADD_BAND_ST_B10": "149.0",
        },
        "LEVEL1_PROCESSING_RECORD": {
            "LANDSAT_PRODUCT_ID": l1_id,
            "PROCESSING_LEVEL": "L1TP",
        },
        "LEVEL1_RADIOMETRIC_RESCALING": {
            **{f"RADIANCE_MULT_BAND_{n}": "1.2345E-02" for n in bands},
            **{f"REFLECTANCE_MULT_BAND_{n}": f"{L1_MULT:.4E}" for n in bands},
            **{f"REFLECTANCE_ADD_BAND_{n}": f"{L1_ADD:.6f}" for n in bands},
        },
    }
    for group, key in drop:
        if key is None:
            groups.pop(group, None)
        else:
            groups[group].pop(key, None)
    return groups


_BARE = re.compile(r"-?\d+(\.\d*)?(E[-+]?\d+)?|\d{4}-\d{2}-\d{2}", re.IGNORECASE)


def mtl_text(groups: dict, form: str) -> str:
    """The MTL in one of its delivered forms: 'txt' (ODL), 'xml' or 'json'."""
    if form == "txt":
        lines = ["GROUP = LANDSAT_METADATA_FILE"]
        for g, fields in groups.items():
            lines.append(f"  GROUP = {g}")
            lines += [f"    {k} = {v if _BARE.fullmatch(v) else chr(34) + v + chr(34)}" for k, v in fields.items()]
            lines.append(f"  END_GROUP = {g}")
        return "\n".join(lines + ["END_GROUP = LANDSAT_METADATA_FILE", "END", ""])
    if form == "xml":
        lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<LANDSAT_METADATA_FILE>"]
        for g, fields in groups.items():
            lines.append(f"  <{g}>")
            lines += [f"    <{k}>{v}</{k}>" for k, v in fields.items()]
            lines.append(f"  </{g}>")
        return "\n".join(lines + ["</LANDSAT_METADATA_FILE>", ""])
    if form == "json":
        return json.dumps({"LANDSAT_METADATA_FILE": groups}, indent=2)
    raise ValueError(form)


def landsat_product(root, product_id: str = LANDSAT_OLI_ID, mtl=("txt",), size: int = SIZE,
                    dn: dict | None = None, qa: np.ndarray | None = None, mult: float = L2_MULT,
                    drop=(), fill: bool = False, folder: str | None = None) -> Path:
    """A product folder `<root>/<product_id>` (or `folder`) with SR bands, QA_PIXEL and MTL(s).

    dn: {band number: (H, W) uint16} overrides the default pattern; qa: (H, W) uint16 (default
    all clear land); fill: an all-fill product (SR 0, QA_PIXEL 1) as at the edge of a scene.
    """
    out = Path(root) / (folder or product_id)
    out.mkdir(parents=True, exist_ok=True)
    for n in LANDSAT_SR_BANDS[product_id[:4]]:
        data = (dn or {}).get(n, landsat_dn(n, size))
        if fill:
            data = np.zeros((size, size), np.uint16)
        write_cog(out / f"{product_id}_SR_B{n}.TIF", data.astype(np.uint16), nodata=0)
    q = qa if qa is not None else np.full((size, size), QA_CLEAR_LAND, np.uint16)
    if fill:
        q = np.full((size, size), QA_FILL, np.uint16)
    write_cog(out / f"{product_id}_QA_PIXEL.TIF", q.astype(np.uint16), nodata=1)
    groups = landsat_mtl(product_id, mult=mult, drop=drop)
    for form in mtl:
        (out / f"{product_id}_MTL.{form}").write_text(mtl_text(groups, form))
    (out / f"{product_id}_ANG.txt").write_text("GROUP = FILE_HEADER\nEND_GROUP = FILE_HEADER\nEND\n")
    return out


# ------------------------------------------------------------------ HLS v2.0

S30_GRANULE = "HLS.S30.T33UUP.2023196T101559.v2.0"
L30_GRANULE = "HLS.L30.T33UUP.2023197T095512.v2.0"
# Delivered reflective bands (HLS v2.0 user guide): S30 13 MSI bands, L30 OLI bands + cirrus.
HLS_REFLECTIVE = {"S30": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"],
                  "L30": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B09"]}
HLS_THERMAL = {"S30": [], "L30": ["B10", "B11"]}
HLS_ANGLES = ["SZA", "SAA", "VZA", "VAA"]
HLS_SCALE, HLS_NODATA, FMASK_FILL = 1e-4, -9999, 255


def hls_dn(index: int, size: int = SIZE) -> np.ndarray:
    """A distinct reflectance pattern per band: 500 + 300*index + 5*row + 2*col."""
    r, c = np.mgrid[0:size, 0:size]
    return (500 + 300 * index + 5 * r + 2 * c).astype(np.int16)


def hls_granule(root, granule: str = S30_GRANULE, size: int = SIZE, dn: dict | None = None,
                fmask: np.ndarray | None = None, skip=(), fill: bool = False, folder: str | None = None,
                declare_scale: bool = True) -> Path:
    """A folder `<root>/<granule>` (or `folder`) with one COG per band, Fmask and angle bands."""
    product = granule.split(".")[1]
    out = Path(root) / (folder or granule)
    out.mkdir(parents=True, exist_ok=True)
    for i, band in enumerate(HLS_REFLECTIVE[product]):
        if band in skip:
            continue
        data = (dn or {}).get(band, hls_dn(i, size))
        if fill:
            data = np.full((size, size), HLS_NODATA, np.int16)
        write_cog(out / f"{granule}.{band}.tif", data.astype(np.int16), nodata=HLS_NODATA,
                  scale=HLS_SCALE if declare_scale else None, offset=0.0)
    for band in HLS_THERMAL[product]:
        write_cog(out / f"{granule}.{band}.tif", np.full((size, size), 2500, np.int16), nodata=HLS_NODATA,
                  scale=0.01, offset=0.0)
    f = fmask if fmask is not None else np.zeros((size, size), np.uint8)
    if fill:
        f = np.full((size, size), FMASK_FILL, np.uint8)
    if "Fmask" not in skip:
        write_cog(out / f"{granule}.Fmask.tif", f.astype(np.uint8), nodata=FMASK_FILL)
    for band in HLS_ANGLES:
        write_cog(out / f"{granule}.{band}.tif", np.full((size, size), 4500, np.uint16), nodata=40000,
                  scale=0.01, offset=0.0)
    (out / f"{granule}.jpg").write_bytes(b"\xff\xd8\xff\xe0 browse image")
    return out

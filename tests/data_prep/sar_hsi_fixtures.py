"""Generated Sentinel-1 and EnMAP products in their delivered layouts (for the reader tests).

Everything here is written by the project's own code from the format facts: names, dtypes,
nodata, tags, METADATA.XML element names (`level_X/specific/bandCharacterisation/bandID[@number]`
with wavelengthCenterOfBand, FWHMOfBand, GainOfBand, OffsetOfBand; `base/temporalCoverage/startTime`).
"""
from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import rasterio

from data_prep.sources.enmap import ENMAP_L2A_NOMINAL_WAVELENGTHS_NM
from tests.conftest import BEN, HYSPECNET, SSL4EO_S1  # noqa: F401  (SSL4EO_S1, HYSPECNET: for the tests)
from tests.fixtures import write_raster

BEN_S1 = BEN / "BigEarthNet-S1" / "S1A_IW_GRDH_1SDV_20170613T165043" / \
    "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48"
HYSPECNET_PATCH = sorted(HYSPECNET.iterdir())[0]                # 64 x 64 px (tests/data: a window of 128 x 128)

# ----------------------------------------------------------------------------- Sentinel-1

S1_STYLES = {
    # ASF HyP3 RTC: power (p), gamma0 (g), nodata 0, 30 m, extra files beside the backscatter
    "asf": {"folder": "S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_FD6A",
            "files": "{folder}_{pol}.tif", "nodata": 0.0, "res": 30.0, "time": "2018-01-28T16:12:01Z"},
    # Major-TOM Core-S1RTC: folder named after the product + "_rtc", vv.tif / vh.tif, linear, 10 m
    "majortom": {"folder": "S1B_IW_GRDH_1SDV_20210915T053225_20210915T053250_028684_036C37_1A5E_rtc",
                 "files": "{pol_lower}.tif", "nodata": None, "res": 10.0, "time": "2021-09-15T05:32:25Z"},
    # OPERA RTC-S1: linear gamma0, nodata NaN
    "opera": {"folder": "OPERA_L2_RTC-S1_T069-147170-IW1_20231019T010020Z_20231019T034720Z_S1A_30_v1.0",
              "files": "{folder}_{pol}.tif", "nodata": float("nan"), "res": 30.0, "time": "2023-10-19T01:00:20Z"},
}


def linear_backscatter(shape=(24, 24), seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible linear power: VV around 0.06 (-12 dB), VH around 0.015 (-18 dB)."""
    rng = np.random.default_rng(seed)
    vv = np.exp(rng.normal(np.log(0.06), 0.6, shape)).astype(np.float32)
    vh = np.exp(rng.normal(np.log(0.015), 0.6, shape)).astype(np.float32)
    return {"VV": vv, "VH": vh}


def write_s1_product(root: Path, style: str, data: dict[str, np.ndarray] | None = None,
                     folder: str | None = None, tags: dict | None = None) -> Path:
    """A Sentinel-1 product folder in `style` (asf, majortom, opera) with float32 bands from `data`."""
    spec = S1_STYLES[style]
    data = data or linear_backscatter()
    name = folder or spec["folder"]
    out = Path(root) / name
    for pol, arr in data.items():
        fname = spec["files"].format(folder=name, pol=pol, pol_lower=pol.lower())
        write_raster(out / fname, arr.astype(np.float32), crs="EPSG:32633", res=spec["res"],
                     nodata=spec["nodata"], tags=tags)
    if style == "asf":   # the rest of a HyP3 package, which the reader must ignore
        write_raster(out / f"{name}_rgb.tif", np.zeros((3, 8, 8), np.uint8), res=spec["res"] * 3)
        write_raster(out / f"{name}_ls_map.tif", np.zeros((8, 8), np.uint8), res=spec["res"] * 3)
        (out / f"{name}.README.md.txt").write_text("ASF RTC product (test fixture)\n")
    return out


def write_s1_db_folder(root: Path, name: str, data: dict[str, np.ndarray], names: str = "{pol}.tif",
                       metadata_json: str | None = None, **kw) -> Path:
    out = Path(root) / name
    for pol, arr in data.items():
        write_raster(out / names.format(pol=pol, folder=name), arr.astype(np.float32), **kw)
    if metadata_json is not None:
        (out / "metadata.json").write_text(metadata_json)
    return out


# ----------------------------------------------------------------------------- EnMAP

ENMAP_NAME = "ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302_20230628T165614Z"
N_BANDS = 224
# Bands the L2A processor 01.01.10 delivers as nodata (1-based), as in the HySpecNet-11k patches.
EMPTY_BANDS = list(range(127, 142)) + list(range(161, 168))
TORCHGEO_KEEP = list(range(1, 127)) + list(range(142, 161)) + list(range(168, 225))
# Quality-layer pixels (row, col) the fixture flags.
FLAGS = {"QL_QUALITY_CLOUD": (0, 0), "QL_QUALITY_CLOUDSHADOW": (1, 1), "QL_QUALITY_CIRRUS": (2, 2),
         "QL_PIXELMASK": (3, 4), "QL_QUALITY_CLASSES": (7, 7),
         "QL_QUALITY_HAZE": (5, 5), "QL_QUALITY_SNOW": (6, 6)}          # haze and snow stay valid
NODATA_PIXEL = (9, 2)                                                   # -32768 in every band


def enmap_band_table(n: int = N_BANDS) -> dict[str, list[float]]:
    """Per-band XML values: wavelengths shifted 0.3 nm off the nominal table, distinct gains/offsets."""
    wl = [w + 0.3 for w in ENMAP_L2A_NOMINAL_WAVELENGTHS_NM[:n]]
    fwhm = [6.5 if w < 1000 else 10.0 for w in wl]
    gains = [1e-4 * (1.0 + 0.01 * (i % 7)) for i in range(n)]
    offsets = [-0.001 * (i % 3) for i in range(n)]
    return {"wavelengths": wl, "fwhm": fwhm, "gains": gains, "offsets": offsets}


def metadata_xml(table: dict, start: str = "2022-07-24T10:45:26.123456Z", name: str = ENMAP_NAME,
                 omit: tuple[int, str] | None = None) -> str:
    """An L2A METADATA.XML with the real element names; `omit` = (band number, field) to leave out."""
    rows = []
    for i in range(len(table["wavelengths"])):
        n = i + 1
        fields = {"wavelengthCenterOfBand": f"{table['wavelengths'][i]:.3f}", "FWHMOfBand": f"{table['fwhm'][i]:.2f}",
                  "GainOfBand": repr(table["gains"][i]), "OffsetOfBand": repr(table["offsets"][i])}
        inner = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items() if omit != (n, k))
        rows.append(f'      <bandID number="{n}">{inner}</bandID>')
    return ("<?xml version='1.0' encoding='UTF-8'?>\n<level_X>\n"
            f"  <metadata><name>{name}-METADATA.XML</name></metadata>\n"
            f"  <base><level>L2A</level><temporalCoverage><startTime>{start}</startTime>"
            f"<stopTime>2022-07-24T10:45:30.000000Z</stopTime></temporalCoverage></base>\n"
            "  <specific>\n    <bandCharacterisation>\n" + "\n".join(rows) +
            "\n    </bandCharacterisation>\n  </specific>\n</level_X>\n")


def enmap_dn(size: int = 12, n: int = N_BANDS, seed: int = 1) -> np.ndarray:
    """int16 DNs (n, size, size): a vegetation-like spectrum plus noise; empty bands all nodata."""
    rng = np.random.default_rng(seed)
    wl = np.asarray(ENMAP_L2A_NOMINAL_WAVELENGTHS_NM[:n])
    spectrum = np.where(wl < 700, 500.0, np.where(wl < 1300, 3500.0, 1500.0))
    dn = spectrum[:, None, None] + rng.normal(0, 50, (n, size, size))
    dn = np.rint(dn).astype(np.int16)
    for b in EMPTY_BANDS:
        if b <= n:
            dn[b - 1] = -32768
    dn[:, NODATA_PIXEL[0], NODATA_PIXEL[1]] = -32768
    return dn


def write_quality_layers(folder: Path, prefix: str, size: int, n: int, origin=(500000.0, 5000000.0),
                         res: float = 30.0, shape_override: dict | None = None) -> None:
    shape_override = shape_override or {}
    for q in ("QL_PIXELMASK", "QL_QUALITY_CLOUD", "QL_QUALITY_CLOUDSHADOW", "QL_QUALITY_HAZE",
              "QL_QUALITY_CIRRUS", "QL_QUALITY_SNOW", "QL_QUALITY_CLASSES", "QL_QUALITY_TESTFLAGS"):
        h = w = shape_override.get(q, size)
        layers = n if q == "QL_PIXELMASK" else 1
        fill = 1 if q == "QL_QUALITY_CLASSES" else 0
        a = np.full((layers, h, w), fill, np.uint8)
        if q in FLAGS:
            r, c = FLAGS[q]
            a[:, r, c] = {"QL_QUALITY_CLASSES": 3, "QL_QUALITY_CIRRUS": 2}.get(q, 1)
        if q == "QL_PIXELMASK":
            a[:40, 10, 10] = 1                   # flagged in 40 of 224 bands: below the 50 % rule
        write_raster(folder / f"{prefix}-{q}.TIF", a, crs="EPSG:32633", origin=origin, res=res,
                     nodata=3 if q == "QL_QUALITY_CLASSES" else None, compress="lzw")


def write_enmap_product(root: Path, fmt: str = "GTiff", size: int = 12, n: int = N_BANDS,
                        xml: str | None = None, table: dict | None = None, name: str = ENMAP_NAME,
                        shape_override: dict | None = None) -> Path:
    """A delivered EnMAP L2A product folder; fmt GTiff (.TIF) or ENVI (.BSQ + .HDR)."""
    table = table or enmap_band_table(n)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    dn = enmap_dn(size, n)
    if fmt == "GTiff":
        write_raster(folder / f"{name}-SPECTRAL_IMAGE.TIF", dn, crs="EPSG:32633", res=30.0, nodata=-32768,
                     interleave="band")
    elif fmt == "ENVI":
        img = folder / f"{name}-SPECTRAL_IMAGE.BSQ"
        write_raster(img, dn, crs="EPSG:32633", res=30.0, nodata=-32768, driver="ENVI", interleave="bsq")
        for f in os.listdir(folder):
            if f.endswith(".hdr"):
                os.replace(folder / f, folder / f"{name}-SPECTRAL_IMAGE.HDR")
            elif f.endswith(".aux.xml"):
                os.remove(folder / f)
    else:
        raise ValueError(fmt)
    (folder / f"{name}-METADATA.XML").write_text(xml if xml is not None else metadata_xml(table, name=name))
    write_quality_layers(folder, name, size, n, shape_override=shape_override)
    return folder


def zip_product(folder: Path, dest: Path) -> Path:
    """The delivered .ZIP: the product folder as the top-level entry."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"{folder.name}/{f.name}")
    return dest


def copy_hyspecnet_patch(dest_root: Path, patch: Path = HYSPECNET_PATCH) -> Path:
    dest = Path(dest_root) / patch.name
    shutil.copytree(patch, dest)
    for f in dest.iterdir():
        f.chmod(0o644)
    return dest


def rewrite_layer(path: Path, edit) -> None:
    """Apply `edit(array)` to a raster in place (same profile)."""
    with rasterio.open(path) as src:
        profile, a = src.profile, src.read()
    a = edit(a)
    path.unlink()
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(a)

"""Sentinel-2 L2A/L1C products given as a folder of per-band GeoTIFFs.

This is the layout of Major-TOM Core (`B01.tif` ... `B12.tif`, `B8A.tif`, `cloud_mask.tif`,
folder named after the product) and SSL4EO-S12 (`B1.tif` ... `B12.tif`, `metadata.json` with
the product id and processing baseline).

Radiometry: reflectance = (DN + ADD_OFFSET) / 10000 where ADD_OFFSET = -1000 only for
processing baseline 04.00 or later. The baseline comes from, in order: an `MTD_MSIL2A.xml` /
`MTD_MSIL1C.xml` beside the bands (its per-band offsets are used as given), the `_Nxxxx_` field
of the product name, `metadata.json`. `N9999` (Major-TOM: baseline unknown) is decided from the
data: with the offset, DN < 1000 means negative reflectance, so a product where a noticeable
share of valid DNs is below 1000 cannot carry it. When the data cannot tell (a bright scene),
the sensing date decides (baseline 04.00 started 2022-01-25). The decision and its evidence
are recorded in `Scene.radiometry`.

20 m and 60 m bands are resampled to the 10 m grid of B02 on read (bilinear by default); the
valid mask uses nearest-neighbour reads so resampling never invents valid pixels.
"""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from data_prep.bands import S2_L1C_BANDS, S2_L2A_BANDS, SENTINEL2, canonical_s2_band
from data_prep.sources.raster import Grid, check_aligned, open_raster, overview, read_on_grid
from data_prep.sources.scene import ProductError, Scene, Window

KIND = "sentinel2_folder"

NAME_RE = re.compile(
    r"(?P<mission>S2[ABCD])_MSI(?P<level>L1C|L2A)_(?P<sensing>\d{8}T\d{6})_N(?P<baseline>\d{4})_R\d{3}_T(?P<tile>\w{5})"
)
BASELINE_04_START = datetime(2022, 1, 25, tzinfo=timezone.utc)
NODATA_DN = 0
SATURATED_DN = 65535
# Scene classification classes masked for pretraining: nodata, saturated/defective, cloud
# shadow, cloud medium/high probability, thin cirrus.
SCL_INVALID = (0, 1, 3, 8, 9, 10)
# Share of valid DNs below 1000 above which the -1000 offset cannot apply.
DARK_SHARE_NO_OFFSET = 0.005


def _band_names(names) -> dict[str, str]:
    """{'B02': 'B2.tif', ...} for entries named exactly like S2 band files (B2.tif, B02.tif, B8A.tif)."""
    out = {}
    for n in sorted(names):
        stem, dot, ext = n.rpartition(".")
        if not dot or ext.lower() not in ("tif", "tiff") or not stem.upper().startswith("B"):
            continue
        try:
            out[canonical_s2_band(stem)] = n
        except ValueError:
            continue
    return out


def match(path: str, names: set[str], is_dir: bool) -> bool:
    """A folder holding per-band GeoTIFFs named like B02.tif / B2.tif (at least one 10 m band)."""
    return is_dir and bool({"B02", "B04"} & set(_band_names(names)))


def _read_metadata_json(folder: Path) -> dict:
    p = folder / "metadata.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise ProductError(f"{p}: unreadable metadata.json: {err}") from None


def _xml_offsets(folder: Path, level: str) -> tuple[str | None, dict[int, float] | None]:
    """(baseline, {band_id: add_offset}) from an MTD_MSIL*.xml beside the bands, if any."""
    p = folder / f"MTD_MSI{level}.xml"
    if not p.is_file():
        return None, None
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as err:
        raise ProductError(f"{p}: not valid XML: {err}") from None
    baseline = next((e.text for e in root.iter() if e.tag.endswith("PROCESSING_BASELINE")), None)
    tag = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    offsets = {int(e.attrib["band_id"]): float(e.text) for e in root.iter() if e.tag.endswith(tag)}
    return baseline, offsets or None


def _identity(folder: Path, meta: dict) -> dict:
    """Product id, level, sensing time and baseline from the folder name or metadata.json."""
    for candidate in (folder.name, str(meta.get("PRODUCT_ID", ""))):
        m = NAME_RE.search(candidate)
        if m:
            t = datetime.strptime(m["sensing"], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
            pb = m["baseline"]
            baseline = None if pb == "9999" else f"{pb[:2]}.{pb[2:]}"
            if baseline is None and meta.get("PROCESSING_BASELINE"):
                baseline = str(meta["PROCESSING_BASELINE"])
            return {"product_id": candidate if candidate == folder.name else meta["PRODUCT_ID"],
                    "level": m["level"], "time": t, "baseline": baseline, "tile": m["tile"]}
    raise ProductError(
        f"{folder}: cannot tell the product: folder name is not a Sentinel-2 product name "
        "(S2x_MSIL2A_<date>_Nxxxx_...) and metadata.json has no PRODUCT_ID"
    )


def _dark_share(sources: dict, bands: list[str]) -> float:
    """Share of valid (non-zero) DNs below 1000 over all bands, from a decimated read."""
    dark = total = 0
    for b in bands:
        a = overview(sources[b])
        v = a[(a != NODATA_DN) & (a != SATURATED_DN)]
        dark += int((v < 1000).sum())
        total += v.size
    return dark / max(total, 1)


def decide_offset(baseline: str | None, xml_offsets, sensing: datetime, dark_share) -> dict:
    """Decide the additive DN offset. `dark_share` is a callable (evaluated only if needed)."""
    if xml_offsets is not None:
        return {"add_offset": xml_offsets, "source": "MTD XML", "baseline": baseline}
    if baseline is not None:
        applies = float(baseline) >= 4.0
        return {"add_offset": -1000.0 if applies else 0.0, "source": "processing baseline", "baseline": baseline}
    share = dark_share()
    if share > DARK_SHARE_NO_OFFSET:
        return {"add_offset": 0.0, "source": "data", "baseline": "unknown",
                "evidence": f"{share:.1%} of valid DNs below 1000 (impossible with the -1000 offset)"}
    applies = sensing >= BASELINE_04_START
    return {"add_offset": -1000.0 if applies else 0.0, "source": "data+date", "baseline": "unknown",
            "evidence": f"only {share:.2%} of valid DNs below 1000, data cannot tell; sensing date "
                        f"{sensing.date()} is {'after' if applies else 'before'} baseline 04.00 (2022-01-25)"}


def open_product(path: str, resampling: str = "bilinear") -> Scene:
    folder = Path(path)
    meta = _read_metadata_json(folder)
    ident = _identity(folder, meta)
    level = ident["level"]
    band_names = S2_L2A_BANDS if level == "L2A" else S2_L1C_BANDS
    files = {b: folder / n for b, n in _band_names(os.listdir(folder)).items()}
    missing = [b for b in band_names if b not in files]
    if missing:
        raise ProductError(f"{folder}: missing band file(s) {', '.join(missing)} (expected e.g. {missing[0]}.tif)")

    sources = {b: open_raster(str(files[b])) for b in band_names}
    grid = Grid.of(sources["B02"])
    check_aligned(sources, grid, {b: str(f) for b, f in files.items()})

    xml_baseline, xml_offsets = _xml_offsets(folder, level)
    baseline = xml_baseline or ident["baseline"]
    decision = decide_offset(baseline, xml_offsets, ident["time"], lambda: _dark_share(sources, band_names))
    add = decision["add_offset"]
    band_ids = {b: i for i, b in enumerate(S2_L1C_BANDS)}  # MTD band_id numbering includes B10
    offsets = [(add[band_ids[b]] if isinstance(add, dict) else add) / 10000.0 for b in band_names]

    mask_files = [folder / n for n in ("cloud_mask.tif", "SCL.tif") if (folder / n).is_file()]
    masks = {f.name: open_raster(str(f)) for f in mask_files}
    check_aligned(masks, grid, {f.name: str(f) for f in mask_files})

    def read(win: Window) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(band_names), win.height, win.width), dtype=np.uint16)
        valid = np.ones((win.height, win.width), dtype=bool)
        for i, b in enumerate(band_names):
            src = sources[b]
            out[i] = read_on_grid(src, grid, win, resampling, label=str(files[b]))
            # nearest-neighbour for the mask: resampling must never invent valid pixels
            nn = out[i] if Grid.of(src) == grid else read_on_grid(src, grid, win, "nearest", label=str(files[b]))
            valid &= (nn != NODATA_DN) & (nn != SATURATED_DN)
        for name, src in masks.items():
            m = read_on_grid(src, grid, win, "nearest", label=f"{folder}/{name}")
            valid &= ~np.isin(m, SCL_INVALID) if name == "SCL.tif" else (m == 0)
        return out, valid

    return Scene(
        product_id=ident["product_id"],
        path=str(folder),
        sensor=f"sentinel2_{level.lower()}",
        bands=list(band_names),
        wavelengths_nm=[SENTINEL2[b][0] for b in band_names],
        gsd_m=SENTINEL2["B02"][1],
        crs=grid.crs,
        transform=grid.transform,
        height=grid.height,
        width=grid.width,
        time=ident["time"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        scale=[1e-4] * len(band_names),
        offset=offsets,
        dtype="uint16",
        units="surface reflectance" if level == "L2A" else "top-of-atmosphere reflectance",
        reader=read,
        radiometry={**decision, "formula": "reflectance = (DN + add_offset) / 10000",
                    "resampling": resampling, "masks": [f.name for f in mask_files]},
        files=[str(files[b]) for b in band_names] + [str(f) for f in mask_files],
    )

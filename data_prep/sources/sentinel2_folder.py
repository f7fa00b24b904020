"""Sentinel-2 L2A/L1C products given as a folder of per-band GeoTIFFs, and the Sentinel-2 rules
shared with the SAFE reader (MTD XML radiometry, offset decision, valid mask, windowed reads).

Folder layouts read here:
- Major-TOM Core: `B01.tif` ... `B12.tif`, `B8A.tif`, `cloud_mask.tif`, folder named after the product.
- SSL4EO-S12: `B1.tif` ... `B12.tif`, `metadata.json` with the product id and processing baseline.
- BigEarthNet v2: `<patch_id>_B02.tif` ..., the patch id being a product name (`..._N9999_...`).
- Planetary Computer style COGs: `T<tile>_<datetime>_B04_10m.tif`.
- STAC downloads: a STAC Item JSON (`"type": "Feature"` with `assets`) beside the band files,
  which may be named after the asset (`red.tif`) or the href (`B04.tif`).

Radiometry: reflectance = (DN + ADD_OFFSET) / 10000 where ADD_OFFSET = -1000 only for
processing baseline 04.00 or later. Decided, in order, from: the STAC Item's
`raster:bands[0].scale/offset` (win when given), an `MTD_MSIL2A.xml` / `MTD_MSIL1C.xml` beside the
bands (its quantification and per-band offsets as given), the `_Nxxxx_` field of the product
name, `metadata.json`, the STAC `s2:processing_baseline`. `N9999` (baseline unknown: Major-TOM,
BigEarthNet) is decided from the data: with the offset, DN < 1000 means negative reflectance, so
a product where a noticeable share of valid DNs is below 1000 cannot carry it. When the data
cannot tell (a bright scene), the sensing date decides (baseline 04.00 started 2022-01-25). The
decision and its evidence are recorded in `Scene.radiometry` (with human-readable `notes`).

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
from typing import Callable
from urllib.parse import urlparse

import numpy as np

from data_prep.bands import S2_L1C_BANDS, S2_L2A_BANDS, SENTINEL2, canonical_s2_band
from data_prep.sources.raster import Grid, check_aligned, open_raster, overview, stack_reader
from data_prep.sources.folders import read_sidecar_json
from data_prep.sources.scene import ProductError, Scene, Window

KIND = "sentinel2_folder"

NAME_RE = re.compile(
    r"(?P<mission>S2[ABCD])_MSI(?P<level>L1C|L2A)_(?P<sensing>\d{8}T\d{6})_N(?P<baseline>\d{4})_R\d{3}_T(?P<tile>\w{5})"
)
# `T33UUP_20230601T100559` (SAFE / Planetary Computer band file prefix)
TILE_DATE_RE = re.compile(r"(?:L2A_)?T\d{2}[A-Z]{3}_(?P<sensing>\d{8}T\d{6})", re.I)
# Band file stem: optional product prefix joined by "_", band token, optional "_10m" suffix.
FILE_RE = re.compile(r"^(?:(?P<prefix>.+)_)?(?P<band>B\d{1,2}|B8A|SCL)(?:_(?P<res>10|20|60)m)?$", re.I)
BASELINE_04_START = datetime(2022, 1, 25, tzinfo=timezone.utc)
NODATA_DN = 0
SATURATED_DN = 65535
# Scene classification classes masked for pretraining: nodata, saturated/defective, cloud
# shadow, cloud medium/high probability, thin cirrus.
SCL_INVALID = (0, 1, 3, 8, 9, 10)
# Share of valid DNs below 1000 above which the -1000 offset cannot apply.
DARK_SHARE_NO_OFFSET = 0.005
TIF_EXT = ("tif", "tiff")
# band_id numbering of the product metadata (Spectral_Information bandId, BOA_ADD_OFFSET /
# RADIO_ADD_OFFSET band_id): 0..12 in this order, B10 included, also in L2A.
S2_MTD_BAND_IDS = {b: i for i, b in enumerate(S2_L1C_BANDS)}
# STAC `eo:bands` common names (asset keys of e.g. Element84 earth-search v1).
S2_COMMON_NAMES = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
                   "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
                   "cirrus": "B10", "swir16": "B11", "swir22": "B12"}


# ---------------------------------------------------------------------------------------------
# Shared Sentinel-2 helpers (also used by sentinel2_safe)
# ---------------------------------------------------------------------------------------------

def parse_time(text: str) -> datetime:
    """'2020-08-13T22:09:21.024Z' / '20200813T220921' -> aware UTC datetime (ValueError if neither)."""
    text = text.strip()
    if re.fullmatch(r"\d{8}T\d{6}", text):
        return datetime.strptime(text, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def iso_time(t: datetime) -> str:
    """Seconds precision, UTC, 'Z' (no dots: times end up in sample keys)."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_mtd(data: bytes, label: str) -> dict:
    """Radiometry and identity from a product-level MTD_MSIL1C.xml / MTD_MSIL2A.xml (bytes).

    Element names as delivered (PSD 14+): Product_Info/PROCESSING_BASELINE, PRODUCT_START_TIME,
    PRODUCT_URI; Product_Image_Characteristics/QUANTIFICATION_VALUES_LIST/BOA_QUANTIFICATION_VALUE
    (L2A; `L2A_BOA_QUANTIFICATION_VALUE` in early Sen2Cor products) or QUANTIFICATION_VALUE (L1C);
    BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET[@band_id] (L2A) or
    Radiometric_Offset_List/RADIO_ADD_OFFSET[@band_id] (L1C), present from baseline 04.00;
    Spectral_Information[@bandId, @physicalBand]; Special_Values (NODATA, SATURATED).
    Missing required fields raise ProductError naming `label` and the field.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise ProductError(f"{label}: not valid XML: {err}") from None
    first: dict[str, str] = {}
    for e in root.iter():
        first.setdefault(_local(e.tag), (e.text or "").strip())

    root_tag = _local(root.tag)
    level_text = f"{root_tag} {first.get('PROCESSING_LEVEL', '')} {first.get('PRODUCT_TYPE', '')}"
    if "2A" in level_text:
        level = "L2A"
    elif "1C" in level_text:
        level = "L1C"
    else:
        raise ProductError(f"{label}: not Sentinel-2 L1C/L2A product metadata (root element <{root_tag}>)")

    def required(*names: str) -> str:
        for n in names:
            if first.get(n):
                return first[n]
        raise ProductError(f"{label}: missing {' / '.join(names)} (required to decide the radiometry)")

    baseline = required("PROCESSING_BASELINE")
    try:
        pb = float(baseline)
    except ValueError:
        raise ProductError(f"{label}: PROCESSING_BASELINE {baseline!r} is not a number like 05.10") from None
    quant_tags = ("BOA_QUANTIFICATION_VALUE", "L2A_BOA_QUANTIFICATION_VALUE") if level == "L2A" \
        else ("QUANTIFICATION_VALUE",)
    quant_text = required(*quant_tags)
    try:
        quant = float(quant_text)
        assert quant > 0
    except (ValueError, AssertionError):
        raise ProductError(f"{label}: {quant_tags[0]} {quant_text!r} is not a positive number") from None

    band_of_id = {i: b for b, i in S2_MTD_BAND_IDS.items()}
    for e in root.iter():
        if _local(e.tag) == "Spectral_Information" and "bandId" in e.attrib and "physicalBand" in e.attrib:
            try:
                band_of_id[int(e.attrib["bandId"])] = canonical_s2_band(e.attrib["physicalBand"])
            except ValueError:
                continue

    offset_tag = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    offsets: dict[str, float] = {}
    for e in root.iter():
        if _local(e.tag) != offset_tag:
            continue
        try:
            band = band_of_id[int(e.attrib["band_id"])]
            offsets[band] = float(e.text)
        except (KeyError, ValueError, TypeError):
            raise ProductError(f"{label}: unreadable {offset_tag} element "
                               f"(band_id={e.attrib.get('band_id')!r}, value={e.text!r})") from None

    special = {}
    for e in root.iter():
        if _local(e.tag) == "Special_Values":
            kids = {_local(k.tag): (k.text or "").strip() for k in e}
            try:
                special[kids.get("SPECIAL_VALUE_TEXT", "").upper()] = int(kids["SPECIAL_VALUE_INDEX"])
            except (KeyError, ValueError):
                continue

    start = None
    if first.get("PRODUCT_START_TIME"):
        try:
            start = parse_time(first["PRODUCT_START_TIME"])
        except ValueError:
            raise ProductError(f"{label}: unreadable PRODUCT_START_TIME {first['PRODUCT_START_TIME']!r}") from None
    return {"label": label, "level": level, "baseline": baseline, "baseline_value": pb,
            "quantification": quant, "quantification_tag": quant_tags[0], "offset_tag": offset_tag,
            "offsets": offsets, "band_ids": {b: i for i, b in band_of_id.items()},
            "nodata": special.get("NODATA", NODATA_DN), "saturated": special.get("SATURATED", SATURATED_DN),
            "start_time": start, "product_uri": first.get("PRODUCT_URI") or None}


def mtd_radiometry(mtd: dict, bands: list[str]) -> tuple[list[float], list[float], dict]:
    """(scale, offset, decision) for `bands` from a parse_mtd() result; strict about missing values."""
    label, tag, q = mtd["label"], mtd["offset_tag"], mtd["quantification"]
    offsets, notes = mtd["offsets"], []
    missing = [b for b in bands if b not in offsets]
    if offsets and missing:
        raise ProductError(f"{label}: {tag} missing for band(s) "
                           + ", ".join(f"{b} (band_id {mtd['band_ids'].get(b, '?')})" for b in missing))
    if not offsets:
        if mtd["baseline_value"] >= 4.0:
            raise ProductError(f"{label}: processing baseline {mtd['baseline']} (>= 04.00) requires {tag} "
                               f"values, but the XML has none: refusing to assume an offset")
        notes.append(f"processing baseline {mtd['baseline']} is before 04.00 and {os.path.basename(label)} "
                     f"has no {tag}: offset 0")
    add = {b: offsets.get(b, 0.0) for b in bands}
    decision = {"source": "MTD XML", "xml": label, "baseline": mtd["baseline"], "quantification": q,
                "add_offset": add, "formula": f"reflectance = (DN + add_offset) / {q:g}", "notes": notes}
    return [1.0 / q] * len(bands), [add[b] / q for b in bands], decision


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


def dark_share(sources: dict, bands: list[str]) -> float:
    """Share of valid (non-zero) DNs below 1000 over all bands, from a decimated read."""
    dark = total = 0
    for b in bands:
        a = overview(sources[b])
        v = a[(a != NODATA_DN) & (a != SATURATED_DN)]
        dark += int((v < 1000).sum())
        total += v.size
    return dark / max(total, 1)


def scl_invalid(a: np.ndarray) -> np.ndarray:
    return np.isin(a, SCL_INVALID)


def nonzero_invalid(a: np.ndarray) -> np.ndarray:
    return a != 0


def window_reader(bands: list[str], sources: dict, labels: dict[str, str], grid: Grid, resampling: str,
                  masks: list[tuple] = (), nodata: int = NODATA_DN, saturated: int = SATURATED_DN
                  ) -> Callable[[Window], tuple[np.ndarray, np.ndarray]]:
    """Scene.read for S2: bands onto `grid`; valid = no band at nodata/saturated (nearest reads)
    and no mask saying invalid. `masks`: (dataset, label, band index, fn(array) -> invalid bool)."""
    return stack_reader(bands, sources, labels, grid, resampling, np.uint16,
                        lambda _b, v: (v == nodata) | (v == saturated), masks)


# ---------------------------------------------------------------------------------------------
# Folder of per-band GeoTIFFs
# ---------------------------------------------------------------------------------------------

def _prefix_ok(prefix: str | None) -> bool:
    """Band files may carry a product prefix only when it is a Sentinel-2 product/patch name
    (BigEarthNet) or a tile_datetime (SAFE/Planetary Computer names) - not HLS or Landsat names."""
    return prefix is None or bool(NAME_RE.match(prefix)) or bool(TILE_DATE_RE.fullmatch(prefix))


def parse_band_file(name: str) -> tuple[str, str | None] | None:
    """'B2.tif' -> ('B02', None); 'S2A_MSIL2A_..._75_43_B8A.tif' -> ('B8A', prefix); SCL -> ('SCL', ...)."""
    stem, dot, ext = name.rpartition(".")
    if not dot or ext.lower() not in TIF_EXT:
        return None
    m = FILE_RE.match(stem)
    if not m or not _prefix_ok(m["prefix"]):
        return None
    if m["band"].upper() == "SCL":
        return "SCL", m["prefix"]
    try:
        return canonical_s2_band(m["band"]), m["prefix"]
    except ValueError:
        return None


def _band_files(names) -> tuple[dict[str, str], set[str]]:
    """({'B02': 'B2.tif', 'SCL': ...}, {prefixes}) for entries named like S2 band files."""
    out, prefixes = {}, set()
    for n in sorted(names):
        parsed = parse_band_file(n)
        if parsed is None:
            continue
        band, prefix = parsed
        out.setdefault(band, n)
        prefixes.add(prefix)
    return out, prefixes


def _band_names(names) -> dict[str, str]:
    """{'B02': 'B2.tif', ...} for entries named like S2 band files (B2.tif, B02.tif, <product>_B8A.tif)."""
    return {b: n for b, n in _band_files(names)[0].items() if b != "SCL"}


def match(path: str, names: set[str], is_dir: bool) -> bool:
    """A folder holding per-band GeoTIFFs named like B02.tif / B2.tif / <product>_B02.tif (at least
    one 10 m band), or STAC-named asset files (red.tif, blue.tif) beside a JSON item."""
    if not is_dir:
        return False
    if {"B02", "B04"} & set(_band_names(names)):
        return True
    lower = {n.lower() for n in names}
    return bool({"red.tif", "blue.tif"} & lower) and any(n.endswith(".json") for n in lower)


def _read_stac_item(folder: Path) -> tuple[Path | None, dict]:
    """The STAC Item JSON in the folder (a `*.json` with "type": "Feature" and `assets`), if any."""
    found = []
    for p in sorted(folder.glob("*.json")):
        if p.stat().st_size > 20 * 2**20:
            continue
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("type") == "Feature" and isinstance(d.get("assets"), dict):
            found.append((p, d))
    if len(found) > 1:
        raise ProductError(f"{folder}: more than one STAC item ({', '.join(p.name for p, _ in found)}); "
                           "one product per folder expected")
    return found[0] if found else (None, {})


def _asset_band(key: str, asset: dict) -> str | None:
    """The S2 band (or 'SCL') an asset holds, from its href name, key or eo:bands."""
    href_name = os.path.basename(urlparse(str(asset.get("href", ""))).path)
    stem = href_name.rpartition(".")[0] if "." in href_name else href_name
    m = FILE_RE.match(stem)
    if m and _prefix_ok(m["prefix"]):
        token = m["band"].upper()
        try:
            return "SCL" if token == "SCL" else canonical_s2_band(token)
        except ValueError:
            pass
    for cand in (stem, key):
        c = cand.lower()
        if c in S2_COMMON_NAMES:
            return S2_COMMON_NAMES[c]
        if c == "scl":
            return "SCL"
        try:
            return canonical_s2_band(cand)
        except ValueError:
            pass
    for eb in asset.get("eo:bands") or []:
        if isinstance(eb, dict):
            if str(eb.get("common_name", "")).lower() in S2_COMMON_NAMES:
                return S2_COMMON_NAMES[str(eb["common_name"]).lower()]
            try:
                return canonical_s2_band(str(eb.get("name", "")))
            except ValueError:
                pass
    return None


def _stac_assets(item: dict, names: set[str]) -> dict[str, tuple[str | None, dict]]:
    """band -> (local file name or None, asset) from a STAC item; GeoTIFF assets preferred."""
    out: dict[str, tuple[str | None, dict]] = {}
    for key, asset in sorted(item.get("assets", {}).items()):
        if not isinstance(asset, dict):
            continue
        band = _asset_band(key, asset)
        if band is None:
            continue
        href_name = os.path.basename(urlparse(str(asset.get("href", ""))).path)
        local = next((n for n in (href_name, f"{key}.tif", f"{key}.tiff") if n in names
                      and n.rpartition(".")[2].lower() in TIF_EXT), None)
        prev = out.get(band)
        if prev is None or (prev[0] is None and local is not None):
            out[band] = (local, asset)
    return out


def _stac_identity(item: dict, label: str) -> dict | None:
    props = item.get("properties") or {}
    platform = str(props.get("platform") or props.get("constellation") or "")
    if platform and not platform.lower().replace("_", "-").startswith("sentinel-2"):
        raise ProductError(f"{label}: STAC item is for platform {platform!r}, not Sentinel-2")
    uri = str(props.get("s2:product_uri") or "")
    m = NAME_RE.search(uri) or NAME_RE.search(str(item.get("id", "")))
    level = m["level"] if m else None
    if level is None:
        text = f"{props.get('s2:product_type', '')} {props.get('processing:level', '')} {item.get('id', '')}".upper()
        level = "L2A" if ("2A" in text or "L2" in text) else "L1C" if "1C" in text or "L1" in text else None
    when = props.get("datetime") or props.get("start_datetime")
    try:
        t = parse_time(str(when)) if when else (parse_time(m["sensing"]) if m else None)
    except ValueError:
        raise ProductError(f"{label}: unreadable STAC datetime {when!r}") from None
    if level is None or t is None:
        return None
    baseline = props.get("s2:processing_baseline")
    if baseline is None and m and m["baseline"] != "9999":
        baseline = f"{m['baseline'][:2]}.{m['baseline'][2:]}"
    pid = uri[:-5] if uri.upper().endswith(".SAFE") else (uri or str(item.get("id") or ""))
    return {"product_id": pid, "level": level, "time": t,
            "baseline": str(baseline) if baseline is not None else None}


def _identity(folder: Path, meta: dict, prefixes: set, stac: dict, stac_label: str) -> dict:
    """Product id, level, sensing time and baseline from the folder name, the band file prefix,
    metadata.json or a STAC item."""
    stac_ident = _stac_identity(stac, stac_label) if stac else None
    candidates = [folder.name] + sorted(p for p in prefixes if p) + [str(meta.get("PRODUCT_ID", ""))]
    for candidate in candidates:
        m = NAME_RE.search(candidate)
        if m:
            t = datetime.strptime(m["sensing"], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
            pb = m["baseline"]
            baseline = None if pb == "9999" else f"{pb[:2]}.{pb[2:]}"
            if baseline is None and meta.get("PROCESSING_BASELINE"):
                baseline = str(meta["PROCESSING_BASELINE"])
            if baseline is None and stac_ident and stac_ident["baseline"]:
                baseline = stac_ident["baseline"]
            return {"product_id": candidate, "level": m["level"], "time": t, "baseline": baseline, "tile": m["tile"]}
    if stac_ident:
        return {**stac_ident, "tile": None}
    raise ProductError(
        f"{folder}: cannot tell the product: folder name is not a Sentinel-2 product name "
        "(S2x_MSIL2A_<date>_Nxxxx_...), metadata.json has no PRODUCT_ID and there is no STAC item"
    )


def _stac_radiometry(stac_assets, bands, files, stac, stac_path, sources) -> dict | None:
    """Per-band scale/offset from STAC raster:bands (those win), or None when the item has none."""
    got = {}
    for b in bands:
        local, asset = stac_assets.get(b, (None, None))
        if asset is None or (local is not None and local != files[b].name):
            continue
        rb = asset.get("raster:bands") or []
        if rb and isinstance(rb[0], dict) and rb[0].get("scale") is not None:
            got[b] = (float(rb[0]["scale"]), float(rb[0].get("offset") or 0.0))
    if not got:
        return None
    props = stac.get("properties") or {}
    notes = []
    lacking = [b for b in bands if b not in got]
    if lacking:
        notes.append(f"STAC item gives no raster:bands scale for {', '.join(lacking)}")
    decision = {"source": "STAC raster:bands", "stac_item": str(stac_path),
                "scale": {b: s for b, (s, _) in got.items()}, "offset": {b: o for b, (_, o) in got.items()},
                "formula": "physical = DN * scale + offset"}
    for key in ("s2:processing_baseline", "earthsearch:boa_offset_applied"):
        if key in props:
            decision[key] = props[key]
    # Consistency check: an offset of -1000 DN with many valid DNs below 1000 means negative
    # reflectance, i.e. the item's metadata does not fit its data (seen on some 2022 items).
    shifted = [b for b, (s, o) in got.items() if s > 0 and o / s < -500]
    if shifted:
        share = dark_share(sources, shifted)
        if share > DARK_SHARE_NO_OFFSET:
            notes.append(f"STAC offset implies -1000 DN but {share:.1%} of valid DNs are below 1000 "
                         "(negative reflectance): the item's metadata may not fit its data")
    decision["notes"] = notes
    return decision


def open_product(path: str, resampling: str = "bilinear") -> Scene:
    folder = Path(path)
    try:
        names = set(os.listdir(folder))
    except OSError as err:
        raise ProductError(f"{folder}: cannot list folder: {err}") from None
    meta = read_sidecar_json(folder)
    stac_path, stac = _read_stac_item(folder)
    found, prefixes = _band_files(names)
    if len(prefixes) > 1:
        raise ProductError(f"{folder}: band files of more than one product "
                           f"({', '.join(sorted(p or '<none>' for p in prefixes))}); one product per folder expected")
    ident = _identity(folder, meta, prefixes, stac, str(stac_path))
    level = ident["level"]
    band_names = S2_L2A_BANDS if level == "L2A" else S2_L1C_BANDS
    stac_assets = _stac_assets(stac, names) if stac else {}
    for b, (local, _) in stac_assets.items():
        if local is not None:
            found.setdefault(b, local)
    files = {b: folder / found[b] for b in band_names if b in found}
    missing = [b for b in band_names if b not in files]
    if missing:
        raise ProductError(f"{folder}: missing band file(s) {', '.join(missing)} (expected e.g. {missing[0]}.tif)")

    sources = {b: open_raster(str(files[b])) for b in band_names}
    grid = Grid.of(sources["B02"])
    check_aligned(sources, grid, {b: str(f) for b, f in files.items()})

    notes: list[str] = []
    mtd_path = folder / f"MTD_MSI{level}.xml"
    decision = _stac_radiometry(stac_assets, band_names, files, stac, stac_path, sources) if stac else None
    if decision is not None:
        fallback = None
        if len(decision["scale"]) < len(band_names):
            fallback = decide_offset(ident["baseline"], None, ident["time"],
                                     lambda: dark_share(sources, band_names))
            decision["fallback"] = fallback
        scale, offset = [], []
        for b in band_names:
            if b in decision["scale"]:
                scale.append(decision["scale"][b])
                offset.append(decision["offset"][b])
            else:
                scale.append(1e-4)
                offset.append(fallback["add_offset"] / 10000.0)
    elif mtd_path.is_file():
        try:
            data = mtd_path.read_bytes()
        except OSError as err:
            raise ProductError(f"{mtd_path}: unreadable: {err}") from None
        scale, offset, decision = mtd_radiometry(parse_mtd(data, str(mtd_path)), band_names)
    else:
        decision = decide_offset(ident["baseline"], None, ident["time"], lambda: dark_share(sources, band_names))
        scale, offset = [1e-4] * len(band_names), [decision["add_offset"] / 10000.0] * len(band_names)
        decision["formula"] = "reflectance = (DN + add_offset) / 10000"
        if decision["source"] == "data":
            notes.append(f"processing baseline unknown; offset {decision['add_offset']:g} decided from the data: "
                         f"{decision['evidence']}")
        elif decision["source"] == "data+date":
            notes.append(f"processing baseline unknown and the data cannot tell; offset "
                         f"{decision['add_offset']:g} decided from the sensing date")
    notes = decision.pop("notes", []) + notes

    mask_files = [n for n in ("cloud_mask.tif",) if n in names]
    scl_name = found.get("SCL") or next((n for n in sorted(names) if n.lower() == "scl.tif"), None)
    if scl_name is None and "SCL" in stac_assets and stac_assets["SCL"][0]:
        scl_name = stac_assets["SCL"][0]
    if scl_name:
        mask_files.append(scl_name)
    masks = {n: open_raster(str(folder / n)) for n in mask_files}
    check_aligned(masks, grid, {n: str(folder / n) for n in mask_files})
    mask_specs = [(src, str(folder / n), 1, scl_invalid if n == scl_name else nonzero_invalid)
                  for n, src in masks.items()]
    if not mask_files and level == "L2A":
        notes.append("no cloud mask or SCL beside the bands: only nodata/saturated pixels are masked")

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
        time=iso_time(ident["time"]),
        scale=scale,
        offset=offset,
        dtype="uint16",
        units="surface reflectance" if level == "L2A" else "top-of-atmosphere reflectance",
        reader=window_reader(band_names, sources, {b: str(f) for b, f in files.items()}, grid, resampling,
                             mask_specs),
        radiometry={**decision, "resampling": resampling, "masks": mask_files, "notes": notes},
        files=[str(files[b]) for b in band_names] + [str(folder / n) for n in mask_files]
              + ([str(mtd_path)] if decision.get("source") == "MTD XML" else [])
              + ([str(stac_path)] if stac_path else []),
    )

"""Sentinel-2 fixture products in the layouts as delivered, tiny (60x60 px at 10 m).

- `make_safe`: an L2A or L1C `.SAFE` folder (SAFE_COMPACT naming, MTD_MSIL2A/1C.xml with the ESA
  element names and nesting, JP2 bands written with GDAL's JP2OpenJPEG driver, lossless).
- `zip_safe`: the same product zipped the way the hubs deliver it (`<name>.SAFE/...` inside).
- `make_stac_folder`: an Element84 earth-search style download (COGs + STAC Item JSON).
- `make_band_folder`: a Major-TOM style folder of per-band GeoTIFFs.

Pixel values are chosen so tests can tell which file a band was read from: every band file is
constant at BASE[band] when delivered at the band's native resolution, and BASE[band] + res when
it is a resampled copy (e.g. B02 in R20m is 1220, in R60m 1260). Markers: B04 (10 m) holds
B04_MARK at B04_MARK_PX; B05 (20 m) holds B05_MARK on the 20 m block B05_MARK_BLOCK.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from data_prep.bands import S2_L1C_BANDS, S2_L2A_BANDS, SENTINEL2
from tests.fixtures import write_raster

CRS = "EPSG:32633"
ORIGIN = (300000.0, 5000040.0)        # upper-left corner of the tile (x, y)
TILE = "33UUP"
SENSING = "20230601T100559"
START_TIME = "2023-06-01T10:05:59.024Z"
N10 = 60                               # pixels per side at 10 m (30 at 20 m, 10 at 60 m)

BASE = {"B01": 1100, "B02": 1200, "B03": 1300, "B04": 1400, "B05": 1500, "B06": 1600, "B07": 1700,
        "B08": 1800, "B8A": 1850, "B09": 1900, "B10": 1950, "B11": 2100, "B12": 2200}
B04_MARK, B04_MARK_PX = 2500, (5, 7)
B05_MARK, B05_MARK_BLOCK = 3000, (10, 12)        # 20 m rows/cols 10..11 -> 10 m 20..23
SCL_DEFAULT = 4                                    # vegetation

# Files per resolution folder of an L2A product (baseline >= 04.00 also has B01 in R20m).
L2A_CONTENT = {
    10: ["B02", "B03", "B04", "B08", "AOT", "WVP", "TCI"],
    20: ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "AOT", "WVP", "SCL", "TCI"],
    60: ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "AOT", "WVP", "SCL", "TCI"],
}
PHYSICAL_BAND = {b: ("B" + str(int(b[1:])) if b != "B8A" else "B8A") for b in S2_L1C_BANDS}   # B1 ... B8A


def product_name(level: str = "L2A", baseline: str = "05.10", mission: str = "S2B") -> str:
    return f"{mission}_MSI{level}_{SENSING}_N{baseline.replace('.', '')}_R022_T{TILE}_20230601T131512"


def default_scl() -> np.ndarray:
    """30x30 SCL: vegetation, with class k on 20 m pixel (2, 2k) for k = 0..11."""
    scl = np.full((N10 // 2, N10 // 2), SCL_DEFAULT, np.uint8)
    for k in range(12):
        scl[2, 2 * k] = k
    return scl


def band_array(band: str, res: int) -> np.ndarray:
    n = N10 * 10 // res
    native = int(SENTINEL2[band][1])
    a = np.full((n, n), BASE[band] + (0 if res == native else res), np.uint16)
    if band == "B04" and res == 10:
        a[B04_MARK_PX] = B04_MARK
    if band == "B05" and res == 20:
        r, c = B05_MARK_BLOCK
        a[r:r + 2, c:c + 2] = B05_MARK
    return a


def write_jp2(path: Path, data: np.ndarray, res: float) -> Path:
    """Lossless JPEG 2000 through GDAL's JP2OpenJPEG driver, georeferenced like a real tile."""
    return write_raster(path, data, crs=CRS, origin=ORIGIN, res=res, driver="JP2OpenJPEG",
                        QUALITY=100, REVERSIBLE="YES")


def mtd_xml(level: str, baseline: str, name: str, image_files: list[str], granule: str,
            offsets: bool | None = None, omit: tuple = (), offset_value: int = -1000,
            quantification: int = 10000) -> str:
    """Product metadata with the ESA element names and nesting (PSD 14/15 User_Product).

    offsets: write BOA_ADD_OFFSET / RADIO_ADD_OFFSET (default: baseline >= 04.00, as delivered).
    omit: element names to leave out (e.g. "BOA_ADD_OFFSET", "PROCESSING_BASELINE"); an entry
    "BOA_ADD_OFFSET:3" drops only band_id 3.
    """
    if offsets is None:
        offsets = float(baseline) >= 4.0
    l2a = level == "L2A"
    root = "Level-2A_User_Product" if l2a else "Level-1C_User_Product"
    xsd = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{'2A' if l2a else '1C'}.xsd"

    def el(tag, text, attrs=""):
        return "" if tag in omit else f"<{tag}{attrs}>{text}</{tag}>"

    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    off_tag = "BOA_ADD_OFFSET" if l2a else "RADIO_ADD_OFFSET"
    off_rows = "\n".join(f'        <{off_tag} band_id="{i}">{offset_value}</{off_tag}>' for i in range(13)
                         if off_tag not in omit and f"{off_tag}:{i}" not in omit)
    if l2a:
        quant = ("      <QUANTIFICATION_VALUES_LIST>\n        "
                 + el("BOA_QUANTIFICATION_VALUE", quantification, ' unit="none"')
                 + '\n        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>'
                 + '\n        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>'
                 + "\n      </QUANTIFICATION_VALUES_LIST>")
        offs = f"      <BOA_ADD_OFFSET_VALUES_LIST>\n{off_rows}\n      </BOA_ADD_OFFSET_VALUES_LIST>" if offsets else ""
    else:
        quant = "      " + el("QUANTIFICATION_VALUE", quantification, ' unit="none"')
        offs = f"      <Radiometric_Offset_List>\n{off_rows}\n      </Radiometric_Offset_List>" if offsets else ""
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{PHYSICAL_BAND[b]}">\n'
        f"          <RESOLUTION>{int(SENTINEL2[b][1])}</RESOLUTION>\n"
        f'          <Wavelength><CENTRAL unit="nm">{SENTINEL2[b][0]}</CENTRAL></Wavelength>\n'
        f"        </Spectral_Information>" for i, b in enumerate(S2_L1C_BANDS))
    scl_list = ""
    if l2a:
        classes = ["NODATA", "SATURATED_DEFECTIVE", "DARK_FEATURE_SHADOW", "CLOUD_SHADOW", "VEGETATION",
                   "NOT_VEGETATED", "WATER", "UNCLASSIFIED", "CLOUD_MEDIUM_PROBA", "CLOUD_HIGH_PROBA",
                   "THIN_CIRRUS", "SNOW_ICE"]
        scl_list = ("      <Scene_Classification_List>\n" + "\n".join(
            f"        <Scene_Classification_ID><SCENE_CLASSIFICATION_TEXT>SC_{c}</SCENE_CLASSIFICATION_TEXT>"
            f"<SCENE_CLASSIFICATION_INDEX>{i}</SCENE_CLASSIFICATION_INDEX></Scene_Classification_ID>"
            for i, c in enumerate(classes)) + "\n      </Scene_Classification_List>")
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="{xsd}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="{xsd}">
  <n1:General_Info>
    <Product_Info>
      {el("PRODUCT_START_TIME", START_TIME)}
      {el("PRODUCT_STOP_TIME", START_TIME)}
      {el("PRODUCT_URI", name + ".SAFE")}
      {el("PROCESSING_LEVEL", "Level-2A" if l2a else "Level-1C")}
      {el("PRODUCT_TYPE", "S2MSI2A" if l2a else "S2MSI1C")}
      {el("PROCESSING_BASELINE", baseline)}
      <GENERATION_TIME>2023-06-01T13:15:12.000000Z</GENERATION_TIME>
      <PREVIEW_IMAGE_URL>Not applicable</PREVIEW_IMAGE_URL>
      <PREVIEW_GEO_INFO>Not applicable</PREVIEW_GEO_INFO>
      <Datatake datatakeIdentifier="GS2B_{SENSING}_032465_N{baseline}">
        <SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{START_TIME}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>22</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="S2B_OPER_MSI_{level}_DS_2BPS_20230601T131512_S20230601T100559_N{baseline}" granuleIdentifier="S2B_OPER_MSI_{level}_TL_2BPS_20230601T131512_A032465_T{TILE}_N{baseline}" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Image_Display_Order>
        <RED_CHANNEL>3</RED_CHANNEL>
        <GREEN_CHANNEL>2</GREEN_CHANNEL>
        <BLUE_CHANNEL>1</BLUE_CHANNEL>
      </Image_Display_Order>
{quant}
{offs}
      <Reflectance_Conversion>
        <U>0.971463</U>
      </Reflectance_Conversion>
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
{scl_list}
    </Product_Image_Characteristics>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Coordinate_Reference_System><GEO_TABLES version="1">EPSG</GEO_TABLES></Coordinate_Reference_System>
  </n1:Geometric_Info>
  <n1:Quality_Indicators_Info>
    <Cloud_Coverage_Assessment>12.5</Cloud_Coverage_Assessment>
  </n1:Quality_Indicators_Info>
</n1:{root}>
"""


def make_safe(root: Path, level: str = "L2A", baseline: str = "05.10", scl: np.ndarray | None = None,
              edit: Callable[[str, int, np.ndarray], np.ndarray] | None = None, b08_60m: bool = False,
              extras: bool = True, classi: np.ndarray | None = None, **xml) -> Path:
    """Write `<product>.SAFE` under `root` and return its path.

    edit(band, res, array) -> array lets a test change pixels before a band file is written.
    b08_60m adds a B08_60m.jp2 (not in ESA products; some third-party repackagings carry it).
    extras writes AOT/WVP/TCI and the non-image files of the SAFE as well.
    classi: L1C MSK_CLASSI_B00 (3, 10, 10) uint8 (default: written, all zero, for baseline >= 04.00).
    `xml` goes to mtd_xml (offsets=, omit=, offset_value=, quantification=).
    """
    name = product_name(level, baseline)
    safe = Path(root) / f"{name}.SAFE"
    granule = f"{level}_T{TILE}_A032465_{SENSING}"
    gdir = safe / "GRANULE" / granule
    image_files = []
    edit = edit or (lambda band, res, a: a)

    def write_band(token: str, res: int, rel_dir: str, fname: str):
        if token in S2_L1C_BANDS:
            data = edit(token, res, band_array(token, res))
        elif token == "SCL":
            s = default_scl() if scl is None else scl
            data = edit(token, res, s if res == 20 else s[1::3, 1::3].copy())
        elif token == "TCI":
            data = np.full((3, N10 * 10 // res, N10 * 10 // res), 90, np.uint8)
        else:   # AOT / WVP
            data = np.full((N10 * 10 // res, N10 * 10 // res), 150, np.uint16)
        write_jp2(gdir / rel_dir / f"{fname}.jp2", data, res)
        image_files.append(f"GRANULE/{granule}/{rel_dir}/{fname}")

    if level == "L2A":
        for res, tokens in L2A_CONTENT.items():
            tokens = list(tokens) + (["B08"] if res == 60 and b08_60m else [])
            for tok in tokens:
                if (tok == "B01" and res == 20 and float(baseline) < 4.0) or \
                        (not extras and tok in ("AOT", "WVP", "TCI")):
                    continue
                write_band(tok, res, f"IMG_DATA/R{res}m", f"T{TILE}_{SENSING}_{tok}_{res}m")
    else:
        for b in S2_L1C_BANDS + (["TCI"] if extras else []):
            res = 10 if b == "TCI" else int(SENTINEL2[b][1])
            write_band(b, res, "IMG_DATA", f"T{TILE}_{SENSING}_{b}")
        if classi is not None or float(baseline) >= 4.0:
            c = np.zeros((3, N10 // 6, N10 // 6), np.uint8) if classi is None else classi
            write_jp2(gdir / "QI_DATA" / "MSK_CLASSI_B00.jp2", c, 60)

    (safe / f"MTD_MSI{level}.xml").write_text(mtd_xml(level, baseline, name, image_files, granule, **xml))
    if extras:
        (gdir / "MTD_TL.xml").write_text(
            f'<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-{level[1:]}_Tile_ID '
            f'xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{level[1:]}_Tile_Metadata.xsd">'
            f"<n1:General_Info><TILE_ID>S2B_OPER_MSI_{level}_TL_2BPS_20230601T131512_A032465_T{TILE}_N{baseline}"
            f"</TILE_ID><SENSING_TIME>2023-06-01T10:15:03.123456Z</SENSING_TIME></n1:General_Info>"
            f"<n1:Geometric_Info><Tile_Geocoding><HORIZONTAL_CS_CODE>{CRS}</HORIZONTAL_CS_CODE>"
            f"</Tile_Geocoding></n1:Geometric_Info></n1:Level-{level[1:]}_Tile_ID>\n")
        (gdir / "QI_DATA").mkdir(exist_ok=True)
        (gdir / "AUX_DATA").mkdir(exist_ok=True)
        (safe / "DATASTRIP").mkdir(exist_ok=True)
        (safe / "HTML").mkdir(exist_ok=True)
        (safe / "rep_info").mkdir(exist_ok=True)
        (safe / "manifest.safe").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU '
                                            'xmlns:xfdu="urn:ccsds:schema:xfdu:1" version="esa/safe/sentinel/1.1">'
                                            "</xfdu:XFDU>\n")
        (safe / "INSPIRE.xml").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<gmd:MD_Metadata '
                                          'xmlns:gmd="http://www.isotc211.org/2005/gmd"/>\n')
    return safe


def zip_safe(safe: Path, zip_path: Path) -> Path:
    """Zip a SAFE folder as delivered: members `<name>.SAFE/...`, folders included."""
    safe = Path(safe)
    Path(zip_path).parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for dirpath, dirnames, filenames in os.walk(safe):
            dirnames.sort()
            rel = Path(dirpath).relative_to(safe.parent)
            z.write(dirpath, f"{rel.as_posix()}/")
            for f in sorted(filenames):
                z.write(Path(dirpath) / f, f"{rel.as_posix()}/{f}")
    return Path(zip_path)


def make_band_folder(root: Path, name: str, bands: list[str] = S2_L2A_BANDS, prefix: str = "",
                     cloud_mask: bool = True) -> Path:
    """Major-TOM style per-band GeoTIFFs (B01.tif ...), optionally `<prefix>_B01.tif` (BigEarthNet)."""
    folder = Path(root) / name
    for b in bands:
        res = int(SENTINEL2[b][1])
        write_raster(folder / f"{prefix + '_' if prefix else ''}{b}.tif", band_array(b, res), crs=CRS,
                     origin=ORIGIN, res=res, nodata=0)
    if cloud_mask:
        write_raster(folder / "cloud_mask.tif", np.zeros((N10, N10), np.uint8), crs=CRS, origin=ORIGIN, res=10)
    return folder


EARTH_SEARCH_KEYS = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
                     "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
                     "swir16": "B11", "swir22": "B12", "scl": "SCL"}


def make_stac_folder(root: Path, local_names: str = "href", scale: float | None = 0.0001,
                     offset: float | None = -0.1, baseline: str = "05.09", boa_offset_applied: bool = True,
                     dn_shift: int = 0) -> Path:
    """An Element84 earth-search (sentinel-2-l2a, v1) item downloaded to a folder: one COG per
    asset named after the href (`B04.tif`, local_names="href") or the asset key (`red.tif`,
    local_names="key"), plus the STAC Item JSON. dn_shift is added to every band's DNs."""
    item_id = f"S2B_{TILE}_20230601_0_L2A"
    folder = Path(root) / item_id
    base_url = f"https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/33/U/UP/2023/6/{item_id}"
    assets = {}
    for key, band in EARTH_SEARCH_KEYS.items():
        res = 20 if band == "SCL" else int(SENTINEL2[band][1])
        fname = f"{band}.tif" if local_names == "href" else f"{key}.tif"
        if band == "SCL":
            data = default_scl()
        else:
            data = (band_array(band, res).astype(np.int32) + dn_shift).clip(1, 65534).astype(np.uint16)
        write_raster(folder / fname, data, crs=CRS, origin=ORIGIN, res=res, nodata=0)
        rb = {"nodata": 0, "data_type": data.dtype.name, "spatial_resolution": res}
        if band != "SCL":
            rb["bits_per_sample"] = 15
            if scale is not None:
                rb["scale"] = scale
            if offset is not None:
                rb["offset"] = offset
        assets[key] = {"href": f"{base_url}/{band}.tif", "type": "image/tiff; application=geotiff; "
                       "profile=cloud-optimized", "title": band, "roles": ["data"], "raster:bands": [rb]}
        if band != "SCL":
            assets[key]["eo:bands"] = [{"name": key, "common_name": key}]
            assets[f"{key}-jp2"] = {"href": f"s3://sentinel-s2-l2a/tiles/33/U/UP/2023/6/1/0/{band}.jp2",
                                    "type": "image/jp2", "roles": ["data"], "raster:bands": [rb]}
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "properties": {
            "datetime": "2023-06-01T10:15:03.123000Z", "platform": "sentinel-2b", "constellation": "sentinel-2",
            "instruments": ["msi"], "eo:cloud_cover": 12.5, "proj:epsg": 32633, "mgrs:utm_zone": 33,
            "s2:product_type": "S2MSI2A", "s2:processing_baseline": baseline,
            "s2:product_uri": f"{product_name('L2A', baseline)}.SAFE",
            "earthsearch:boa_offset_applied": boa_offset_applied, "processing:software": {"sentinel2-to-stac": "0.1.1"},
        },
        "geometry": {"type": "Polygon", "coordinates": [[[14.0, 45.1], [14.01, 45.1], [14.01, 45.11], [14.0, 45.1]]]},
        "links": [], "assets": assets, "bbox": [14.0, 45.1, 14.01, 45.11],
        "stac_extensions": ["https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
    }
    (folder / f"{item_id}.json").write_text(json.dumps(item, indent=1))
    return folder

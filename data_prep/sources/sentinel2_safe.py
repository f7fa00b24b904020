"""Sentinel-2 L1C/L2A products as delivered: `.SAFE` folders and zipped SAFE archives.

Layout (SAFE_COMPACT, processing baselines 02.xx-05.xx):
  <name>.SAFE/MTD_MSIL2A.xml | MTD_MSIL1C.xml        product metadata: the ONLY radiometry source
  <name>.SAFE/GRANULE/L2A_<...>/IMG_DATA/R10m|R20m|R60m/T<tile>_<datetime>_<band>_<res>.jp2  (L2A; SCL in R20m/R60m)
  <name>.SAFE/GRANULE/L1C_<...>/IMG_DATA/T<tile>_<datetime>_<band>.jp2                    (L1C, native resolutions)
  <name>.SAFE/GRANULE/L1C_<...>/QI_DATA/MSK_CLASSI_B00.jp2   (L1C, baseline >= 04.00: opaque/cirrus/snow)
A zip (`<name>.SAFE.zip` or `S2x_MSIL2A_....zip`) holds the `<name>.SAFE/` folder; it is read in
place through GDAL `/vsizip/` paths (no extraction).

Radiometry: reflectance = (DN + ADD_OFFSET) / QUANTIFICATION_VALUE, both from the root MTD XML
(BOA_* for L2A, RADIO_ADD_OFFSET / QUANTIFICATION_VALUE for L1C), never guessed from the date;
baselines before 04.00 carry no offsets (offset 0, noted). Valid mask: DN 0 (nodata) and 65535
(saturated) in any band, plus SCL classes {0,1,3,8,9,10} for L2A (MSK_CLASSI opaque/cirrus for L1C
when delivered).

Target grid: 10 m (B02 from R10m); every band is read from its native-resolution file (B05 from
R20m, B01 from R60m) and resampled on read. An L2A product whose R10m/R20m files are missing
but whose R60m folder is usable is read on a 60 m grid (noted). R60m holds no B08 (B08 exists
only at 10 m), so at 60 m B08 is downsampled from R10m when present; without it the product is
rejected rather than given a fake band.
"""
from __future__ import annotations

import os
import re
import zipfile
from datetime import datetime

from data_prep.bands import S2_L1C_BANDS, S2_L2A_BANDS, SENTINEL2
from data_prep.sources.raster import Grid, check_aligned, open_raster
from data_prep.sources.scene import ProductError, Scene
from data_prep.sources.sentinel2_folder import (NAME_RE, iso_time, mtd_radiometry, nonzero_invalid, parse_mtd,
                                                parse_time, scl_invalid, window_reader)

KIND = "sentinel2_safe"

MTD_NAMES = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
ZIP_NAME_RE = re.compile(r"^S2[A-D]_MSIL(1C|2A)_.*\.zip$", re.I)
# GRANULE/<granule>/IMG_DATA/R10m/T33UUP_20230601T100559_B02_10m.jp2 (early L2A: L2A_T33UUP_...)
L2A_FILE_RE = re.compile(r"^GRANULE/(?P<granule>[^/]+)/IMG_DATA/R(?P<dir>10|20|60)m/[^/]*_"
                         r"(?P<band>B\d\d|B8A|SCL)_(?P<res>10|20|60)m\.jp2$", re.I)
# GRANULE/<granule>/IMG_DATA/T33UUP_20230601T100559_B02.jp2
L1C_FILE_RE = re.compile(r"^GRANULE/(?P<granule>[^/]+)/IMG_DATA/[^/]*_(?P<band>B\d\d|B8A)\.jp2$", re.I)
L1C_CLASSI_RE = re.compile(r"^GRANULE/(?P<granule>[^/]+)/QI_DATA/MSK_CLASSI_B00\.jp2$", re.I)


def match(path: str, names: set[str], is_dir: bool) -> bool:
    """A `.SAFE` folder with its root MTD XML, or a zip named like a Sentinel-2 L1C/L2A product."""
    base = os.path.basename(path.rstrip("/"))
    if is_dir:
        return bool(set(MTD_NAMES) & names) and (base.upper().endswith(".SAFE") or "GRANULE" in names)
    return bool(ZIP_NAME_RE.match(base))


class _Safe:
    """File access inside a SAFE folder or zip: member names relative to the SAFE root."""

    def __init__(self, path: str):
        self.path = path
        self.zip = None
        self.root = ""
        if os.path.isdir(path):
            self.root_name = os.path.basename(path.rstrip("/"))
            names = []
            for dirpath, _, filenames in os.walk(path):
                rel = os.path.relpath(dirpath, path).replace(os.sep, "/")
                names += [f if rel == "." else f"{rel}/{f}" for f in filenames]
            self.names = sorted(names)
        elif os.path.isfile(path):
            try:
                self.zip = zipfile.ZipFile(path)
                members = [n for n in self.zip.namelist() if not n.endswith("/")]
            except (zipfile.BadZipFile, OSError) as err:
                raise ProductError(f"{path}: not a readable zip archive: {err}") from None
            mtds = [n for n in members if n.rsplit("/", 1)[-1] in MTD_NAMES and n.count("/") <= 1]
            if not mtds:
                raise ProductError(f"{path}: no <name>.SAFE/MTD_MSIL1C.xml or MTD_MSIL2A.xml in the zip "
                                   "(not a zipped Sentinel-2 SAFE product?)")
            roots = sorted({n.rpartition("/")[0] for n in mtds})
            if len(roots) > 1:
                raise ProductError(f"{path}: holds {len(roots)} SAFE products ({', '.join(roots)}); one expected")
            self.root = roots[0]
            self.root_name = self.root
            cut = len(self.root) + 1 if self.root else 0
            self.names = sorted(n[cut:] for n in members if n.startswith(self.root + "/" if self.root else ""))
        else:
            raise ProductError(f"{path}: no such folder or zip file")

    def label(self, rel: str) -> str:
        return f"{self.path}!/{self.root}/{rel}" if self.zip else os.path.join(self.path, rel)

    def gdal_path(self, rel: str) -> str:
        if self.zip:
            inner = f"{self.root}/{rel}" if self.root else rel
            return f"/vsizip/{os.path.abspath(self.path)}/{inner}"
        return os.path.join(self.path, rel)

    def read_bytes(self, rel: str) -> bytes:
        try:
            if self.zip:
                return self.zip.read(f"{self.root}/{rel}" if self.root else rel)
            with open(os.path.join(self.path, rel), "rb") as f:
                return f.read()
        except (OSError, KeyError, zipfile.BadZipFile, EOFError, ValueError) as err:
            raise ProductError(f"{self.label(rel)}: unreadable: {err}") from None

    def files(self, rels: list[str]) -> list[str]:
        """Files to checksum: the zip itself, or each member file of the folder."""
        return [self.path] if self.zip else [os.path.join(self.path, r) for r in rels]


def _one_granule(safe: _Safe, granules: set[str]) -> None:
    if not granules:
        raise ProductError(f"{safe.path}: no band files under GRANULE/*/IMG_DATA (incomplete product?)")
    if len(granules) > 1:
        raise ProductError(f"{safe.path}: {len(granules)} granules ({', '.join(sorted(granules))}); "
                           "one tile per product expected")


def _plan_l2a(safe: _Safe, bands: list[str]) -> tuple[int, dict[str, str], str, list[str]]:
    """(target gsd, band -> member, SCL member, notes). Native resolution preferred; 60 m fallback.

    The plan's keys are the bands the product is read with: at the 60 m fallback without R10m,
    B08 (delivered only in R10m) is left out of the band list, never zero-filled."""
    avail: dict[int, dict[str, str]] = {10: {}, 20: {}, 60: {}}
    granules = set()
    for n in safe.names:
        m = L2A_FILE_RE.match(n)
        if m and m["dir"] == m["res"]:
            avail[int(m["res"])].setdefault(m["band"].upper(), n)
            granules.add(m["granule"])
    _one_granule(safe, granules)
    notes = []

    def at_or_finer(b: str, res: int) -> str | None:
        for r in (60, 20, 10):     # the closest to `res` first
            if r <= res and b in avail[r]:
                return avail[r][b]
        return None

    native = {b: int(SENTINEL2[b][1]) for b in bands}
    plan10 = {b: avail[native[b]].get(b) or at_or_finer(b, native[b]) for b in bands}
    if all(plan10.values()):
        gsd, plan = 10, plan10
        for b in bands:
            if plan[b] != avail[native[b]].get(b):
                notes.append(f"{b} not delivered at its native {native[b]} m: read from {plan[b].rsplit('/', 2)[-2]}")
    else:
        lacking = [b for b in bands if not plan10[b]]
        parts = []
        for r in (10, 20, 60):
            need = [b for b in lacking if native[b] == r]
            if need:
                parts.append(f"R{r}m missing" if not avail[r] else f"R{r}m lacks {', '.join(need)}")
        why = " and ".join(parts)
        plan60 = {b: avail[60].get(b) or avail[20].get(b) or avail[10].get(b) for b in bands}
        still = [b for b in bands if not plan60[b]]
        if still == ["B08"] and avail[60]:
            # R60m never holds B08: a product without R10m is still usable at 60 m with the 11
            # bands it has. The band list says so (and the sensor key differs, see open_product).
            del plan60["B08"]
            still = []
            notes.append("B08 is delivered only in R10m, which is missing: the product is read without B08 "
                         "(11 bands; not zero-filled)")
        if still or not avail[60]:
            extra = (" (B08 is delivered only in R10m, never in R20m/R60m)" if "B08" in still else "")
            raise ProductError(f"{safe.path}: {why}; cannot read the product at 10 m, nor at 60 m: "
                               f"no file for {', '.join(still) or 'any band'} at any resolution{extra}")
        gsd, plan = 60, plan60
        notes.append(f"{why}: product used at 60 m (bands from R60m)")
        for b in plan:
            if plan[b] != avail[60].get(b):
                notes.append(f"{b} not in R60m: downsampled to 60 m from {plan[b].rsplit('/', 2)[-2]}")
    order = (20, 60, 10) if gsd == 10 else (60, 20, 10)
    scl = next((avail[r]["SCL"] for r in order if "SCL" in avail[r]), None)
    if scl is None:
        raise ProductError(f"{safe.path}: no SCL (scene classification) file in R20m or R60m; every L2A "
                           "product carries one (damaged or trimmed product?)")
    if scl != avail[order[0]].get("SCL"):
        notes.append(f"SCL read from {scl.rsplit('/', 2)[-2]} (not at {order[0]} m)")
    return gsd, plan, scl, notes


def _plan_l1c(safe: _Safe, bands: list[str]) -> tuple[int, dict[str, str], str | None, list[str]]:
    avail, granules, classi = {}, set(), None
    for n in safe.names:
        m = L1C_FILE_RE.match(n)
        if m:
            avail.setdefault(m["band"].upper(), n)
            granules.add(m["granule"])
        elif L1C_CLASSI_RE.match(n):
            classi = n
    _one_granule(safe, granules)
    missing = [b for b in bands if b not in avail]
    if missing:
        raise ProductError(f"{safe.path}: missing band file(s) {', '.join(missing)} in "
                           f"GRANULE/{next(iter(granules))}/IMG_DATA (expected T<tile>_<datetime>_{missing[0]}.jp2)")
    notes = ([] if classi else ["L1C without MSK_CLASSI (baseline < 04.00): no cloud mask, only nodata/"
                                "saturated pixels are masked"])
    return 10, {b: avail[b] for b in bands}, classi, notes


def open_product(path: str, resampling: str = "bilinear") -> Scene:
    safe = _Safe(path)
    mtd_rel = next((n for n in MTD_NAMES if n in safe.names), None)
    if mtd_rel is None:
        raise ProductError(f"{path}: no MTD_MSIL1C.xml / MTD_MSIL2A.xml at the SAFE root")
    mtd = parse_mtd(safe.read_bytes(mtd_rel), safe.label(mtd_rel))
    level = mtd["level"]
    if level != mtd_rel[7:10]:
        raise ProductError(f"{safe.label(mtd_rel)}: metadata says {level} but the file is named {mtd_rel}")

    root = safe.root_name
    pid = root[:-5] if root.upper().endswith(".SAFE") else None
    if pid is None and mtd["product_uri"]:
        uri = mtd["product_uri"]
        pid = uri[:-5] if uri.upper().endswith(".SAFE") else uri
    pid = pid or os.path.basename(path.rstrip("/"))
    name_m = NAME_RE.search(pid)
    if mtd["start_time"] is not None:
        t: datetime = mtd["start_time"]
    elif name_m:
        t = parse_time(name_m["sensing"])
    else:
        raise ProductError(f"{safe.label(mtd_rel)}: no PRODUCT_START_TIME and the product name "
                           f"{pid!r} holds no sensing time")

    bands = S2_L2A_BANDS if level == "L2A" else S2_L1C_BANDS
    gsd, plan, mask_rel, notes = _plan_l2a(safe, bands) if level == "L2A" else _plan_l1c(safe, bands)
    bands = [b for b in bands if b in plan]
    # A different band set is a different "sensor" for statistics and normalisation.
    sensor = f"sentinel2_{level.lower()}" + ("" if len(bands) == len(plan) == (12 if level == "L2A" else 13)
                                             else "_no_b08")
    scale, offset, decision = mtd_radiometry(mtd, bands)
    if name_m and name_m["baseline"] not in ("9999", mtd["baseline"].replace(".", "")):
        notes.append(f"product name says N{name_m['baseline']} but {mtd_rel} says baseline {mtd['baseline']} "
                     "(the XML is used)")

    sources = {b: open_raster(safe.gdal_path(plan[b])) for b in bands}
    labels = {b: safe.label(plan[b]) for b in bands}
    ref = next((b for b in ("B02", *bands) if Grid.of(sources[b]).res == gsd), None)
    if ref is None:
        raise ProductError(f"{path}: no band file at the {gsd} m target resolution")
    grid = Grid.of(sources[ref])
    check_aligned(sources, grid, labels)
    masks, mask_names = [], []
    if mask_rel is not None:
        msrc = open_raster(safe.gdal_path(mask_rel))
        check_aligned({mask_rel: msrc}, grid, {mask_rel: safe.label(mask_rel)})
        if level == "L2A":
            masks.append((msrc, safe.label(mask_rel), 1, scl_invalid))
            mask_names.append("SCL")
        else:   # MSK_CLASSI_B00: band 1 opaque clouds, band 2 cirrus (band 3 snow is kept)
            masks += [(msrc, safe.label(mask_rel), i, nonzero_invalid) for i in (1, 2) if i <= msrc.count]
            mask_names.append("MSK_CLASSI (opaque, cirrus)")

    notes = decision.pop("notes") + notes
    decision.update(resampling=resampling, masks=mask_names, notes=notes, product_level=level,
                    files={b: plan[b] for b in bands})
    return Scene(
        product_id=pid,
        path=path,
        sensor=sensor,
        bands=list(bands),
        wavelengths_nm=[SENTINEL2[b][0] for b in bands],
        gsd_m=float(gsd),
        crs=grid.crs,
        transform=grid.transform,
        height=grid.height,
        width=grid.width,
        time=iso_time(t),
        scale=scale,
        offset=offset,
        dtype="uint16",
        units="surface reflectance" if level == "L2A" else "top-of-atmosphere reflectance",
        reader=window_reader(bands, sources, labels, grid, resampling, masks,
                             nodata=mtd["nodata"], saturated=mtd["saturated"]),
        radiometry=decision,
        files=safe.files([mtd_rel] + [plan[b] for b in bands] + ([mask_rel] if mask_rel else [])),
    )

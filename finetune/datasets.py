"""Readers for labelled downstream layouts -> `Raw` (physical values, labels, geometry).

  folder       <root>/images/<id>.tif (multi-band GeoTIFF) + <root>/labels/<id>.tif (one band:
               class index per pixel for segmentation, a value per pixel for regression),
               split from <root>/split.csv (`id,split`) or <root>/splits/{train,val,test}.txt
  eurosat      EuroSAT_MS: <root>/<ClassName>/<ClassName>_<n>.tif, 13-band Sentinel-2 L1C 64x64
  bigearthnet  BigEarthNet v2: <root>/BigEarthNet-S2/<tile>/<patch>/<patch>_B02.tif ... and
               <root>/Reference_Maps/<tile>/<patch>/<patch>_reference_map.tif (CORINE codes);
               multi-label (19-class nomenclature) or segmentation labels from the reference map

Values are physical (stored x scale + offset); normalisation, band selection, tiling and the
split happen afterwards (finetune.data.build_task), the same for every layout. Nothing is
zero-filled: a sample keeps exactly the bands its files have.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune import FinetuneError

KINDS = ("classification", "multilabel", "segmentation", "regression")
IGNORE = -1  # pixel label that does not count (segmentation)


@dataclass
class Raw:
    """N samples of one band set and size, before band selection, tiling, split, normalisation.

    kind: classification (targets (N,) int64), segmentation (targets (N, H, W) int64, IGNORE
    where unlabelled; multi-label tasks are derived from it), regression (targets (N, H, W)
    float32, NaN where unlabelled). physical (N, C, H, W) float32, valid (N, H, W) bool,
    gsd_m (N,). geo: per sample {crs, transform (6 numbers, GDAL order a b c d e f as in the
    sample contract), product_ids} for spatial blocks, or None. split: per sample 'train' /
    'val' / 'test' / '' from a split file, or None when the layout has none.
    """
    kind: str
    physical: np.ndarray
    valid: np.ndarray
    targets: np.ndarray
    classes: tuple[str, ...]
    bands: list[str]
    wavelengths_nm: list[float]
    units: str
    sensor: str
    gsd_m: np.ndarray
    keys: list[str]
    geo: list[dict] | None = None
    split: list[str] | None = None
    n_unlabelled: int = 0
    notes: list[str] = field(default_factory=list)


# ---- split files -------------------------------------------------------------------------------

def read_split_file(path: str | Path) -> dict[str, str]:
    """id -> split from a CSV of `id,split` rows (a header row is skipped) or a folder with
    train.txt / val.txt / test.txt (one id per line). Ids are file stems."""
    path = Path(path)
    out: dict[str, str] = {}
    if path.is_dir():
        files = {s: path / f"{s}.txt" for s in ("train", "val", "test") if (path / f"{s}.txt").is_file()}
        if not files:
            raise FinetuneError(f"{path}: split folder without train.txt / val.txt / test.txt")
        for split, f in files.items():
            for line in f.read_text().split():
                out[Path(line).stem] = split
        return out
    if not path.is_file():
        raise FinetuneError(f"{path}: split file not found")
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and row[-1].strip().lower() == "split"):
                continue
            if len(row) < 2 or row[1].strip() not in ("train", "val", "test"):
                raise FinetuneError(f"{path}: line {i + 1}: expected `id,split` with split train/val/test, got {row}")
            out[Path(row[0].strip()).stem] = row[1].strip()
    return out


def _split_for(keys: list[str], split_file: str | Path | None, root: Path) -> list[str] | None:
    """Per-key split from `split_file`, or the layout's own split.csv / splits/, or None."""
    if not split_file:
        split_file = next((p for p in (root / "split.csv", root / "splits") if p.exists()), None)
        if split_file is None:
            return None
    table = read_split_file(split_file)
    listed_missing = sorted(set(table) - set(keys))
    if listed_missing:
        raise FinetuneError(f"{split_file}: {len(listed_missing)} listed id(s) have no sample, e.g. {listed_missing[:3]}")
    return [table.get(k, "") for k in keys]


# ---- GeoTIFF helpers -----------------------------------------------------------------------------

def _open(path: Path):
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(path)
    except RasterioIOError as err:
        raise FinetuneError(f"{path}: cannot read the GeoTIFF: {err}") from None


def _geo(ds, product: str) -> dict:
    t = ds.transform
    return {"crs": str(ds.crs) if ds.crs else "", "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "product_ids": [product]}


def _physical(ds) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) float32 = stored x scale + offset (the file's own tags, default 1 / 0) and
    valid (H, W): no band at nodata, every band finite."""
    a = ds.read()
    valid = np.ones(a.shape[1:], bool)
    if ds.nodata is not None:
        valid &= ~(a == ds.nodata).any(0)
    x = a.astype(np.float32)
    valid &= np.isfinite(x).all(0)
    scales = np.asarray(ds.scales, np.float32)[:, None, None]
    offsets = np.asarray(ds.offsets, np.float32)[:, None, None]
    return x * scales + offsets, valid


def _stack(items: list[np.ndarray], what: str, root: Path) -> np.ndarray:
    shapes = {i.shape for i in items}
    if len(shapes) > 1:
        raise FinetuneError(f"{root}: {what} differ in shape {sorted(shapes)[:3]}; one size per dataset "
                            f"(cut them to one size, or set data.tile)")
    return np.stack(items)


# ---- EuroSAT (class folders) ---------------------------------------------------------------------

# EuroSAT_MS GeoTIFF band order (13 bands): B8A comes LAST, after B12, and B10 (cirrus, 1375 nm)
# is the 10th band. Checked on the real files: band 10 holds ~10 DN (cirrus over clear land),
# band 13 tracks B08 (NIR). Values are Level-1C DN = TOA reflectance x 10000; the images date
# from 2015-2017, before processing baseline 04.00, so there is no -1000 offset.
EUROSAT_MS_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
EUROSAT_SCALE = 1e-4


def read_eurosat(root: str | Path, split_file: str | None = None) -> Raw:
    """Class-folder layout: every subfolder holding *.tif is a class (sorted names)."""
    from data_prep.bands import SENTINEL2

    root = Path(root)
    if not root.is_dir():
        raise FinetuneError(f"{root}: EuroSAT folder not found")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*.tif")))
    if not class_dirs:
        raise FinetuneError(f"{root}: no class folders with .tif files (expected <root>/<ClassName>/*.tif; "
                            f"EuroSAT RGB JPEGs are not supported, use EuroSAT_MS)")
    images, labels, keys, geo, gsd = [], [], [], [], []
    for c, d in enumerate(class_dirs):
        for f in sorted(d.glob("*.tif")):
            with _open(f) as ds:
                if ds.count != len(EUROSAT_MS_BANDS):
                    raise FinetuneError(f"{f}: {ds.count} bands; EuroSAT_MS files have 13")
                images.append(ds.read().astype(np.float32) * EUROSAT_SCALE)
                geo.append(_geo(ds, f.stem))
                gsd.append(float(abs(ds.transform.a)))
            labels.append(c)
            keys.append(f.stem)
    physical = _stack(images, "images", root)
    return Raw(kind="classification", physical=physical, valid=np.ones((len(keys), *physical.shape[2:]), bool),
               targets=np.asarray(labels, np.int64), classes=tuple(d.name for d in class_dirs),
               bands=list(EUROSAT_MS_BANDS), wavelengths_nm=[SENTINEL2[b][0] for b in EUROSAT_MS_BANDS],
               units="top-of-atmosphere reflectance", sensor="sentinel2_l1c", gsd_m=np.asarray(gsd, np.float32),
               keys=keys, geo=geo, split=_split_for(keys, split_file, root),
               notes=["EuroSAT_MS: DN x 1e-4 = TOA reflectance (L1C, baseline < 04.00: no offset); band order "
                      "B01-B12 then B8A"])


# ---- BigEarthNet v2 (S2 patch folders + reference maps) ------------------------------------------

# The 19-class nomenclature of BigEarthNet (Sumbul et al. 2021), from CORINE level-3 codes.
# Codes not listed (e.g. 122-142 artificial non-urban, 241, 332, 334, 335, 423) belong to no class.
BIGEARTHNET_19 = [
    ("Urban fabric", (111, 112)),
    ("Industrial or commercial units", (121,)),
    ("Arable land", (211, 212, 213)),
    ("Permanent crops", (221, 222, 223)),
    ("Pastures", (231,)),
    ("Complex cultivation patterns", (242,)),
    ("Land principally occupied by agriculture, with significant areas of natural vegetation", (243,)),
    ("Agro-forestry areas", (244,)),
    ("Broad-leaved forest", (311,)),
    ("Coniferous forest", (312,)),
    ("Mixed forest", (313,)),
    ("Natural grassland and sparsely vegetated areas", (321, 333)),
    ("Moors, heathland and sclerophyllous vegetation", (322, 323)),
    ("Transitional woodland, shrub", (324,)),
    ("Beaches, dunes, sands", (331,)),
    ("Inland wetlands", (411, 412)),
    ("Coastal wetlands", (421, 422)),
    ("Inland waters", (511, 512)),
    ("Marine waters", (521, 522, 523)),
]


def corine_to_bigearthnet19(codes: np.ndarray) -> np.ndarray:
    """CORINE level-3 codes (any shape) -> 19-class indices, IGNORE for codes outside them."""
    lut = np.full(1000, IGNORE, np.int64)
    for i, (_, cs) in enumerate(BIGEARTHNET_19):
        lut[list(cs)] = i
    c = np.asarray(codes, np.int64)
    return np.where((c >= 0) & (c < 1000), lut[np.clip(c, 0, 999)], IGNORE)


def reference_map_path(root: Path, patch_dir: Path) -> Path:
    """Reference map of an S2 patch folder: same <tile>/<patch> under Reference_Maps/."""
    tile, patch = patch_dir.parent.name, patch_dir.name
    return root / "Reference_Maps" / tile / patch / f"{patch}_reference_map.tif"


def read_reference_map(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) 19-class indices (IGNORE where the code is outside the nomenclature or nodata)."""
    with _open(path) as ds:
        codes = ds.read(1)
        nodata = ds.nodata
    if codes.shape != tuple(shape):
        raise FinetuneError(f"{path}: reference map is {codes.shape}, the S2 patch {tuple(shape)}")
    out = corine_to_bigearthnet19(codes)
    if nodata is not None:
        out[codes == nodata] = IGNORE
    return out


def read_bigearthnet(root: str | Path, split_file: str | None = None, resampling: str = "bilinear") -> Raw:
    """S2 patches (all 12 L2A bands resampled to the 10 m grid by data_prep's Sentinel-2 folder
    reader, which also decides the radiometric offset) with labels from their reference maps.
    Patches without a reference map are skipped and counted (never labelled by guess)."""
    from data_prep.sources.scene import ProductError, Window
    from data_prep.sources.sentinel2_folder import open_product

    root = Path(root)
    s2 = root / "BigEarthNet-S2"
    patches = sorted(p for p in s2.glob("*/*") if p.is_dir()) if s2.is_dir() else []
    if not patches:
        raise FinetuneError(f"{root}: no S2 patch folders under BigEarthNet-S2/<tile>/<patch>/")
    images, valid, maps, keys, geo, gsd, missing = [], [], [], [], [], [], []
    scene = None
    for p in patches:
        ref = reference_map_path(root, p)
        if not ref.is_file():
            missing.append(ref)
            continue
        try:
            scene = open_product(str(p), resampling)
            stored, ok = scene.read(Window(0, 0, scene.height, scene.width))
        except ProductError as err:
            raise FinetuneError(str(err)) from None
        scale = np.asarray(scene.scale, np.float32)[:, None, None]
        offset = np.asarray(scene.offset, np.float32)[:, None, None]
        images.append(stored.astype(np.float32) * scale + offset)
        valid.append(ok)
        maps.append(read_reference_map(ref, stored.shape[1:]))
        keys.append(p.name)
        geo.append({"crs": str(scene.crs), "transform": list(scene.transform), "product_ids": [p.parent.name]})
        gsd.append(scene.gsd_m)
    if scene is None:
        raise FinetuneError(f"{root}: none of the {len(patches)} S2 patches has a reference map "
                            f"(expected e.g. {missing[0]})")
    return Raw(kind="segmentation", physical=_stack(images, "patches", root), valid=np.stack(valid),
               targets=np.stack(maps), classes=tuple(n for n, _ in BIGEARTHNET_19), bands=list(scene.bands),
               wavelengths_nm=list(scene.wavelengths_nm), units=scene.units, sensor=scene.sensor,
               gsd_m=np.asarray(gsd, np.float32), keys=keys, geo=geo, split=_split_for(keys, split_file, root),
               n_unlabelled=len(missing),
               notes=[f"{len(missing)} S2 patch(es) without a reference map skipped"
                      + (f", e.g. {missing[0]}" if missing else "")])


# ---- generic folder layout ---------------------------------------------------------------------

def read_folder(root: str | Path, kind: str, bands: list[str], wavelengths_nm: list[float], classes: list[str],
                sensor: str, units: str, ignore_value: float, split_file: str | None = None) -> Raw:
    """images/<id>.tif + labels/<id>.tif (same stem). Band names/wavelengths come from the
    recipe (data.folder.*); when not given, from the band descriptions if they are Sentinel-2
    names. Label pixels equal to `ignore_value` or the label file's nodata do not count."""
    from pretrain.export import ExportError, band_wavelengths

    root = Path(root)
    img_dir, lab_dir = root / "images", root / "labels"
    files = sorted(img_dir.glob("*.tif")) + sorted(img_dir.glob("*.tiff"))
    if not files:
        raise FinetuneError(f"{root}: no images/*.tif (the folder layout is images/<id>.tif + labels/<id>.tif)")
    if kind not in ("segmentation", "regression"):
        raise FinetuneError(f"{root}: the folder layout holds pixel labels: task must be segmentation or "
                            f"regression, got {kind!r}")
    images, valid, targets, keys, geo, gsd = [], [], [], [], [], []
    names = list(bands)
    for f in files:
        lab = next((lab_dir / (f.stem + e) for e in (".tif", ".tiff") if (lab_dir / (f.stem + e)).is_file()), None)
        if lab is None:
            raise FinetuneError(f"{f}: no label file {lab_dir / (f.stem + '.tif')}")
        with _open(f) as ds:
            if not names:
                names = [d or "" for d in ds.descriptions]
            if len(names) != ds.count:
                raise FinetuneError(f"{f}: {ds.count} bands, but {len(names)} band names "
                                    f"(data.folder.bands) {names}")
            x, ok = _physical(ds)
            geo.append(_geo(ds, f.stem))
            gsd.append(float(abs(ds.transform.a)))
            shape = (ds.height, ds.width)
        with _open(lab) as ds:
            if (ds.height, ds.width) != shape:
                raise FinetuneError(f"{lab}: label is {ds.height}x{ds.width}, the image {shape[0]}x{shape[1]}")
            y = ds.read(1)
            bad = (y == ignore_value) | (np.isnan(y) if y.dtype.kind == "f" else False)
            if ds.nodata is not None:
                bad |= y == ds.nodata
        if kind == "segmentation":
            if y.dtype.kind == "f" and not np.array_equal(y[~bad], np.round(y[~bad])):
                raise FinetuneError(f"{lab}: segmentation labels must be integers")
            y = np.where(bad, IGNORE, y.astype(np.int64))   # int64 first: -1 does not fit uint8
            if classes and y.max(initial=IGNORE) >= len(classes):
                raise FinetuneError(f"{lab}: label {int(y.max())} but only {len(classes)} classes "
                                    f"(data.folder.classes)")
        else:
            y = np.where(bad, np.nan, y.astype(np.float32))
        images.append(x)
        valid.append(ok)
        targets.append(y)
        keys.append(f.stem)
    if not all(names):
        raise FinetuneError(f"{files[0]}: bands have no names; set data.folder.bands (and wavelengths_nm)")
    try:
        wl = list(wavelengths_nm) or band_wavelengths({}, names)
    except ExportError as err:
        raise FinetuneError(f"{root}: {err}; set data.folder.wavelengths_nm") from None
    if len(wl) != len(names):
        raise FinetuneError(f"{root}: {len(names)} bands but {len(wl)} wavelengths (data.folder.wavelengths_nm)")
    t = _stack(targets, "labels", root)
    if kind == "segmentation" and not classes:
        classes = [f"class_{i}" for i in range(int(t.max(initial=0)) + 1)]
    return Raw(kind=kind, physical=_stack(images, "images", root), valid=np.stack(valid), targets=t,
               classes=tuple(classes) if kind == "segmentation" else ("value",), bands=names,
               wavelengths_nm=[float(w) for w in wl], units=units, sensor=sensor or "unknown",
               gsd_m=np.asarray(gsd, np.float32), keys=keys, geo=geo, split=_split_for(keys, split_file, root))

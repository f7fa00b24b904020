"""Source readers: one module per archive kind, in SOURCES (kind -> module).

Each module provides
  KIND                                   the registry key
  match(path, names, is_dir) -> bool     is this folder (entries `names`) or file one product of this kind?
  open_product(path, resampling) -> Scene   open a LOCAL product lazily (ProductError when unusable)

`find_products` walks a folder or any fsspec URL, asks the modules in SOURCES order which
product each folder or file is (a claimed folder is not descended into), and reports raster-
like files no module claims as unknown. `open_product` stages remote products into a local
cache first (GDAL reads local files; a prep worker reads each product whole anyway).
"""
from __future__ import annotations

import hashlib
import os
import tempfile

import fsspec

from data_prep.sources import enmap, hls, landsat_c2, sentinel1, sentinel2_folder, sentinel2_safe
from data_prep.sources.scene import ProductError, Scene, Window

# Order matters: more specific layouts first (a SAFE folder also holds band files).
SOURCES = {m.KIND: m for m in (sentinel2_safe, enmap, landsat_c2, hls, sentinel1, sentinel2_folder)}

RASTER_LIKE = (".tif", ".tiff", ".jp2", ".zip", ".img", ".bsq", ".bil", ".bip", ".safe")


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def find_products(url: str, kinds: list[str] | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """-> ([(kind, product url)], [(url, reason)] for raster-like entries of unknown kind)."""
    mods = [(k, m) for k, m in SOURCES.items() if kinds is None or k in kinds]
    unknown_kinds = sorted(set(kinds or []) - set(SOURCES))
    if unknown_kinds:
        raise ProductError(f"unknown source kind(s) {', '.join(unknown_kinds)} (known: {', '.join(SOURCES)})")
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        raise ProductError(f"{url}: no such file or folder")
    local = _is_local(fs)

    def full(p: str) -> str:
        return p if local else fs.unstrip_protocol(p)

    def claim(path: str, names: set[str], is_dir: bool) -> str | None:
        return next((k for k, m in mods if m.match(path, names, is_dir)), None)

    products, unknown = [], []
    if not fs.isdir(root):
        kind = claim(root, set(), False)
        return ([(kind, full(root))], []) if kind else ([], [(full(root), "unknown product kind")])
    for dirpath, dirnames, filenames in fs.walk(root, topdown=True):
        dirnames.sort()
        kind = claim(dirpath, set(dirnames) | set(filenames), True)
        if kind:
            products.append((kind, full(dirpath)))
            dirnames.clear()                      # a product's insides are not products
            continue
        strays = []
        for name in sorted(filenames):
            path = f"{dirpath}/{name}"
            kind = claim(path, set(), False)
            if kind:
                products.append((kind, full(path)))
            elif name.lower().endswith(RASTER_LIKE):
                strays.append(name)
        if strays:   # one entry per folder, not per file
            unknown.append((full(dirpath), f"unknown product kind: no reader recognises this folder or its "
                                           f"{len(strays)} raster file(s) ({', '.join(strays[:3])}"
                                           f"{', ...' if len(strays) > 3 else ''})"))
    return products, unknown


def stage(url: str) -> str:
    """Local path of a product: itself when local, else a copy in a cache folder."""
    fs, path = fsspec.core.url_to_fs(url)
    if _is_local(fs):
        return path
    cache = os.path.join(tempfile.gettempdir(), "eofm-stage", hashlib.sha1(url.encode()).hexdigest()[:16])
    local = os.path.join(cache, os.path.basename(path.rstrip("/")))
    if not os.path.exists(local):
        tmp = local + ".part"
        os.makedirs(cache, exist_ok=True)
        fs.get(path, tmp, recursive=fs.isdir(path))
        os.replace(tmp, local)
    return local


def open_product(kind: str, url: str, resampling: str = "bilinear") -> Scene:
    return SOURCES[kind].open_product(stage(url), resampling=resampling)


__all__ = ["SOURCES", "ProductError", "Scene", "Window", "find_products", "open_product", "stage"]

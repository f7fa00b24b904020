"""manifest.json: provenance and statistics of a prepared dataset.

Written last and atomically: a dataset folder with a manifest is complete.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import fsspec

import data_prep
from data_prep.jsondoc import parse_versioned

FORMAT = "eofm-dataset"
FORMAT_VERSION = 1
NAME = "manifest.json"

SAMPLE_FORMAT = {
    "image.npy": "stored integers (T, C, H, W); physical = stored * scale[c] + offset[c]",
    "valid.npy": "bool (T, H, W); False = nodata, cloud, shadow or saturated",
    "json": "sensor, bands, wavelengths_nm, gsd_m, times, lonlat, crs, transform, product_ids, scale, offset, units, dtype",
}


def code_version() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{data_prep.__version__}+g{sha}" if sha else data_prep.__version__


def sha256_files(paths: list[str]) -> str:
    """One digest over the files' contents, in the given order (names excluded)."""
    outer = hashlib.sha256()
    for p in paths:
        inner = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(inner.digest())
    return outer.hexdigest()


def recipe_digest(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def build(recipe: dict, products: list[dict], shards: list[dict], sensors: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code_version": code_version(),
        "recipe": recipe,
        "recipe_sha256": recipe_digest(recipe),
        "sample_format": SAMPLE_FORMAT,
        "samples": sum(s["samples"] for s in shards),
        "products": products,
        "shards": shards,
        "sensors": sensors,
    }


def write(url: str, manifest: dict) -> str:
    fs, root = fsspec.core.url_to_fs(url)
    fs.makedirs(root, exist_ok=True)
    final = f"{root}/{NAME}"
    tmp = final + ".part"
    with fs.open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    fs.mv(tmp, final)
    return final


class ManifestError(ValueError):
    """A dataset folder has no usable manifest.json; the message names the file."""


def read(url: str) -> dict:
    """Read and check the manifest of the dataset at `url` (folder or the manifest file)."""
    fs, root = fsspec.core.url_to_fs(url)
    path = root if root.endswith(".json") else f"{root}/{NAME}"
    if not fs.exists(path):
        raise ManifestError(f"{path}: no manifest.json (not a prepared eofm dataset, or preparation did not finish)")
    with fs.open(path, "r") as f:
        m = parse_versioned(f.read(), path, FORMAT, FORMAT_VERSION, ManifestError)
    return m


def shard_urls(url: str, manifest: dict) -> list[str]:
    """Full URLs of the dataset's shards (url = dataset folder or URL)."""
    base = url.rstrip("/")
    if base.endswith(".json"):
        base = base.rsplit("/", 1)[0]
    return [f"{base}/{s['path']}" for s in manifest["shards"]]

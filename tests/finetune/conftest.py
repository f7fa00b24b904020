"""Fixtures for finetune tests: a small real dataset (built with eofm-prep) and tiny exports.

The real samples are bundled (tests/data, data/quickstart); SHARED_REAL (../shared/data/real) is
optional: tests that need it (e.g. EuroSAT_MS_dev) call tests.conftest.needs_shared."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import BEN, EUROSAT, SHARED_REAL, SSL4EO_S2A  # noqa: F401  (re-exported)

REPO = Path(__file__).resolve().parents[2]
SSL4EO_S2 = SSL4EO_S2A


def make_export(folder: Path, normalization: dict, seed: int = 0, fmt: str = "eofm-export") -> Path:
    """Write an export folder like eofm-export does: tiny ViT (depth 2, patch 8) with random
    weights, model.safetensors (ViT key names) + config.json."""
    from safetensors.torch import save_file

    from pretrain.models import build_backbone

    torch.manual_seed(seed)
    model = build_backbone("vit", "tiny", depth=2, patch_size=8)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    sensor = next(iter(normalization))
    n = normalization[sensor]
    (folder / "config.json").write_text(json.dumps({
        "format": fmt, "format_version": 1, "architecture": "eofm_vit", "arch": "vit",
        "model_args": model.arch_args, "patch_size": 8, "embed_dim": model.embed_dim,
        "sensor": sensor, "bands": n["bands"], "wavelengths_nm": n["wavelengths_nm"], "gsd_m": n["gsd_m"],
        "normalization": normalization, "objective": "mae", "steps": 0, "data_manifest_sha256": "0" * 64,
    }))
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch single-threaded: these models are tiny, and with a second process busy on a
    2-core machine, multi-threaded CPU kernels spin-wait and run >10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(name="make_export")
def make_export_fixture():
    """The `make_export(folder, normalization, seed=0, fmt=...)` helper, as a fixture: test files
    cannot import from conftest reliably (tests/conftest.py shares the module name)."""
    return make_export


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """32 Sentinel-2 L2A chips of 32x32 (2 dates of one SSL4EO-S12 location), via eofm-prep."""
    out = tmp_path_factory.mktemp("ft") / "data"
    cmd = [sys.executable, "-m", "data_prep", "run", str(REPO / "configs/prep/real_s2.yaml"),
           f"output.path={out}", f"sources=[{{kind: auto, paths: [{SSL4EO_S2}]}}]",
           "chips.size=32", "--quiet"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, small_dataset) -> Path:
    """Random-weight tiny export carrying the small dataset's normalisation statistics (seed 1,
    so it differs from the seed-0 random baseline)."""
    from data_prep.manifest import read
    from pretrain.data.normalize import normalization_table

    return make_export(tmp_path_factory.mktemp("ft") / "export", normalization_table(read(str(small_dataset))),
                       seed=1)


BEN_TILE = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
BEN_S2_PATCH, BEN_REF_PATCH = f"{BEN_TILE}_75_43", f"{BEN_TILE}_26_57"


@pytest.fixture(scope="session")
def bigearthnet_paired(tmp_path_factory) -> Path:
    """The real BigEarthNet layout, with the one real S2 patch filed under the patch id of the
    one real reference map (the bundled sample's S2 patch and map are of different places: fine
    for reader and pipeline tests, meaningless as a benchmark)."""
    import shutil

    root = tmp_path_factory.mktemp("ben")
    dst = root / "BigEarthNet-S2" / BEN_TILE / BEN_REF_PATCH
    dst.mkdir(parents=True)
    for f in (BEN / "BigEarthNet-S2" / BEN_TILE / BEN_S2_PATCH).glob("*.tif"):
        shutil.copy(f, dst / f.name.replace(BEN_S2_PATCH, BEN_REF_PATCH))
    shutil.copytree(BEN / "Reference_Maps", root / "Reference_Maps")
    return root


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory) -> Path:
    """Generic folder layout from real pixels: the BigEarthNet S2 10 m bands (B02, B03, B04, B08)
    stacked into 4-band GeoTIFFs, cut into four 56x56 images (the 120x120 patch's corners), with the real reference map's
    CORINE codes as class indices (211 -> 0, 231 -> 1, 311 -> 2, 313 -> 3; corner pixels set to
    255 = ignore), plus the real S1 VV (dB) as a regression label, and a split.csv."""
    import numpy as np
    import rasterio

    from tests.fixtures import write_raster

    s2 = BEN / "BigEarthNet-S2" / BEN_TILE / BEN_S2_PATCH
    bands = ["B02", "B03", "B04", "B08"]
    stack = np.stack([rasterio.open(s2 / f"{BEN_S2_PATCH}_{b}.tif").read(1) for b in bands])
    ref = next((BEN / "Reference_Maps").rglob("*_reference_map.tif"))
    codes = rasterio.open(ref).read(1)
    classes = np.searchsorted([211, 231, 311, 313], codes).astype(np.uint8)
    classes[:2, :2] = 255
    vv = rasterio.open(next((BEN / "BigEarthNet-S1").rglob("*_VV.tif"))).read(1)
    root = tmp_path_factory.mktemp("folder")
    rows = []
    for i, (r, c) in enumerate([(0, 0), (0, 64), (64, 0), (64, 64)]):
        name = f"img{i}"
        origin = (390000.0 + 10 * c, 5348400.0 - 10 * r)
        write_raster(root / "images" / f"{name}.tif", stack[:, r:r + 56, c:c + 56], origin=origin, nodata=0,
                     descriptions=bands)
        write_raster(root / "labels" / f"{name}.tif", classes[r:r + 56, c:c + 56], origin=origin)
        write_raster(root / "values" / f"{name}.tif", vv[r:r + 56, c:c + 56], origin=origin)
        rows.append(f"{name},{'test' if i == 3 else 'train'}")
    (root / "split.csv").write_text("id,split\n" + "\n".join(rows) + "\n")
    return root

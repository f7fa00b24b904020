"""Fixtures for finetune tests: a small real dataset (built with eofm-prep) and tiny exports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SHARED_REAL = REPO.parent / "shared/data/real"
SSL4EO_S2 = SHARED_REAL / "SSL4EO-S12/s2a"


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
    if not SSL4EO_S2.is_dir():
        pytest.skip(f"shared data not found at {SSL4EO_S2}")
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

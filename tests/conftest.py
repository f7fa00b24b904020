"""Shared fixtures. Real products come from ../shared/data/real (always present in CI)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
MAJOR_TOM = REAL / "Major-TOM-Core" / "S2L2A"
MT_N0400 = MAJOR_TOM / "0U/0U_199R/S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
MT_N9999 = MAJOR_TOM / "199U/199U_1099R/S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543"
SSL4EO_S2A = REAL / "SSL4EO-S12" / "s2a" / "0000200"


def pytest_sessionstart(session):
    if not REAL.is_dir():
        raise pytest.UsageError(f"real test data not found at {REAL} (../shared/data/real beside the repo)")


@pytest.fixture
def ssl4eo_copy(tmp_path) -> Path:
    """A writable copy of the two SSL4EO-S12 L2A products (264 px, small)."""
    dst = tmp_path / "ssl4eo"
    shutil.copytree(SSL4EO_S2A, dst)
    return dst


def prep_recipe(tmp_path: Path, paths: list, out: Path, size: int = 32, **chips) -> Path:
    """Write a prep recipe YAML and return its path."""
    import yaml

    recipe = {
        "sources": [{"kind": "auto", "paths": [str(p) for p in paths]}],
        "chips": {"size": size, "stride": chips.get("stride", size),
                  "min_valid_fraction": chips.get("min_valid_fraction", 0.9)},
        "output": {"path": str(out), "target_shard_mb": chips.get("target_shard_mb", 1.0)},
    }
    p = tmp_path / f"prep_{out.name}.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


def prep_ssl4eo(tmp_path: Path, name: str = "ds", **chips) -> Path:
    """The two SSL4EO-S12 L2A products prepared as 32-px chips (16 per product) in tmp_path/name,
    in this process (`chips` as for prep_recipe) -> the dataset folder."""
    from data_prep.cli import main as prep

    out = tmp_path / name
    assert prep(["run", str(prep_recipe(tmp_path, [SSL4EO_S2A], out, size=32, **chips)), "--quiet"]) == 0
    return out

"""Shared fixtures and the real products the tests read.

Every real product a test needs is in the repository: trimmed copies in tests/data/ (sources,
licences and how each was cut: tests/data/README.md) and the Sentinel-2 L2A subset in
data/quickstart/. ../shared/data/real, when present beside the repository, only adds optional
larger cases: `needs_shared` skips them with a one-line reason when it is absent.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"                              # bundled, trimmed real products
QUICKSTART = ROOT / "data" / "quickstart" / "S2L2A"         # bundled real Sentinel-2 L2A
MAJOR_TOM = DATA / "Major-TOM-Core" / "S2L2A"               # both cells, nested as Major TOM stores them
MT_N0400 = MAJOR_TOM / "0U/0U_199R/S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"  # 300 px
MT_N9999 = QUICKSTART / "Major-TOM-Core" / "S2B_MSIL2A_20200223T032739_N9999_R018_T48QUE_20230924T183543"  # 720 px
SSL4EO_S2A = QUICKSTART / "SSL4EO-S12"                      # two dates of location 0000200, whole 264 px
SSL4EO_S1 = DATA / "SSL4EO-S12" / "s1" / "0000200"          # the same two dates' S1, 128 px
BEN = DATA / "BigEarthNet"                                  # one S2 patch, one S1 patch, one reference map
EUROSAT = DATA / "EuroSAT_MS"                               # three tiles, one per class
HYSPECNET = DATA / "HySpecNet-11k"                          # two EnMAP L2A patches, 64 and 32 px

# Optional: the untrimmed products (and data sets too large to bundle, such as EuroSAT_MS_dev).
SHARED_REAL = ROOT.parent / "shared" / "data" / "real"
REAL = SHARED_REAL                                          # its older name


def needs_shared(*parts: str) -> Path:
    """SHARED_REAL/parts; skips the calling test (or fixture) when it is not there."""
    path = SHARED_REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"optional: {Path('../shared/data/real', *parts)} not beside the repository")
    return path


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

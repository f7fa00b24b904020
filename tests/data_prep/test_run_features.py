"""The prep engine with multi-date series, land-cover fractions and both output formats."""
import json

import numpy as np
import pytest
import rasterio

from data_prep.cli import main
from data_prep.sample import decode
from data_prep.tario import iter_tar_samples
from data_prep.zarr_io import iter_zarr_shard
from tests.conftest import SSL4EO_S1, SSL4EO_S2A, prep_recipe
from tests.fixtures import write_raster


def _recipe(tmp_path, paths, out, **extra):
    import yaml
    p = prep_recipe(tmp_path, paths, out, size=64)
    r = yaml.safe_load(p.read_text())
    for section, values in extra.items():
        r.setdefault(section, {}).update(values)
    p.write_text(yaml.safe_dump(r))
    return p


def _decoded(out) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    got = {}
    for rec in m["shards"]:
        if rec["format"] == "zarr":
            got.update(dict(iter_zarr_shard(str(out), rec["path"])))
        else:
            with open(out / rec["path"], "rb") as f:
                got.update({k: decode(files, k) for k, files in iter_tar_samples(f)})
    return got


def test_series_groups_dates_of_one_footprint(tmp_path):
    out = tmp_path / "ds"
    assert main(["run", str(_recipe(tmp_path, [SSL4EO_S2A, SSL4EO_S1], out, series={"mode": "all"})),
                 "--quiet", "--workers", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    samples = _decoded(out)
    by_sensor = {}
    for s in samples.values():
        by_sensor.setdefault(s["sensor"], []).append(s)
    assert set(by_sensor) == {"sentinel2_l2a", "sentinel1"}
    for sensor, group in by_sensor.items():
        for s in group:
            assert s["image"].shape[0] == 2 and s["valid"].shape[0] == 2          # T = 2 dates
            assert s["times"] == sorted(s["times"]) and len(set(s["product_ids"])) == 2
    assert len(by_sensor["sentinel2_l2a"]) == 16 and m["samples"] == len(samples)
    assert all(p["series"] for p in m["products"] if p["outcome"] == "written")
    assert main(["verify", str(out), "--quiet"]) == 0


def test_series_seasons_selects_one_frame_per_season(tmp_path):
    out = tmp_path / "ds"
    # June (JJA) and August (JJA) are one season: only one frame -> below min_frames 2 -> no sample
    r = main(["run", str(_recipe(tmp_path, [SSL4EO_S2A], out, series={"mode": "seasons", "min_frames": 1})),
              "--quiet", "--workers", "1"])
    assert r == 0
    m = json.loads((out / "manifest.json").read_text())
    outcomes = sorted(p["outcome"] for p in m["products"])
    assert outcomes == ["unused", "written"]
    assert all(s["image"].shape[0] == 1 for s in _decoded(out).values())


def test_landcover_fractions_are_attached(tmp_path):
    product = sorted(SSL4EO_S2A.iterdir())[0]
    with rasterio.open(product / "B2.tif") as src:
        left, bottom, right, top = src.bounds
    # a land-cover map in another CRS/resolution: west half tree cover (10), east half cropland (40)
    lc = np.full((200, 200), 10, np.uint8)
    lc[:, 100:] = 40
    res = (right - left) / 200
    write_raster(tmp_path / "lc.tif", lc, crs="EPSG:4326", origin=(left, top), res=res, nodata=0)
    out = tmp_path / "ds"
    recipe = _recipe(tmp_path, [product], out, landcover={"path": str(tmp_path / "lc.tif"), "classes": "worldcover"})
    assert main(["run", str(recipe), "--quiet", "--workers", "1"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    codes = m["landcover"]["codes"]
    assert codes[:4] == [10, 20, 30, 40] and m["landcover"]["names"][0] == "Tree cover"
    samples = _decoded(out)
    west = [s for s in samples.values() if s["transform"][2] < left + (right - left) / 4]
    for s in samples.values():
        frac = np.asarray(s["landcover"]["fractions"])
        assert frac.shape == (len(codes),) and abs(frac.sum() - 1) < 1e-5
    assert west and all(s["landcover"]["fractions"][0] > 0.99 for s in west)   # west chips: all tree cover


@pytest.mark.parametrize("workers", ["1", "2"])
def test_webdataset_and_zarr_decode_to_identical_samples(tmp_path, workers):
    tars, zarr = tmp_path / "tar", tmp_path / "zarr"
    assert main(["run", str(_recipe(tmp_path, [SSL4EO_S2A, SSL4EO_S1], tars)), "--quiet", "--workers", workers]) == 0
    assert main(["run", str(_recipe(tmp_path, [SSL4EO_S2A, SSL4EO_S1], zarr, output={"format": "zarr"})),
                 "--quiet", "--workers", workers]) == 0
    a, b = _decoded(tars), _decoded(zarr)
    assert set(a) == set(b) and len(a) == 2 * 16 + 2 * 4       # S2: 2 x 264 px, S1: 2 x 128 px, 64 px chips
    for k in a:
        np.testing.assert_array_equal(a[k]["image"], b[k]["image"])
        np.testing.assert_array_equal(a[k]["valid"], b[k]["valid"])
        assert {x: v for x, v in a[k].items() if x not in ("image", "valid")} == \
               {x: v for x, v in b[k].items() if x not in ("image", "valid")}
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (tars, zarr))
    assert ma["sensors"] == mb["sensors"]                       # identical statistics
    assert main(["verify", str(zarr), "--quiet"]) == 0


def test_engine_writes_to_an_fsspec_url(tmp_path):
    import fsspec
    from data_prep.config import PrepConfig
    from data_prep.recipe import load_recipe
    from data_prep.run import run
    from data_prep.verify import verify
    for fmt in ("webdataset", "zarr"):
        url = f"memory://eofm-engine-{fmt}/ds"
        cfg = load_recipe(PrepConfig, prep_recipe(tmp_path, [SSL4EO_S2A], tmp_path / "unused", size=64),
                          [f"output.path={url}", f"output.format={fmt}"])
        m = run(cfg, progress=False, workers=1)
        assert m["samples"] == 32
        fs = fsspec.filesystem("memory")
        assert fs.exists(f"/eofm-engine-{fmt}/ds/manifest.json") and not fs.exists(f"/eofm-engine-{fmt}/ds/.tmp")
        assert verify(url, progress=False) == []

"""Land-cover fractions per chip: presets, reprojection onto chip grids, coverage, real CORINE map."""
import pickle
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from data_prep.landcover import PRESETS, LandcoverMap, LandcoverSpec
from data_prep.sources import ProductError
from tests.conftest import BEN
from tests.fixtures import write_raster

BEN_MAPS = BEN / "Reference_Maps"

# A 64 x 64 chip of 10 m on UTM 33N, centred on the zone's central meridian (15 E), where the
# meridian is a straight vertical line on the grid.
CHIP_CRS = "EPSG:32633"
CHIP = (10.0, 0.0, 499680.0, 0.0, -10.0, 5000320.0)
H = W = 64


def chip_bounds_in(crs: str, margin: float):
    left, top = CHIP[2], CHIP[5]
    b = transform_bounds(CHIP_CRS, crs, left, top - 10 * H, left + 10 * W, top, densify_pts=21)
    return b[0] - margin, b[1] - margin, b[2] + margin, b[3] + margin


def test_presets_have_the_documented_classes():
    wc = dict(PRESETS["worldcover"])
    assert list(wc) == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    assert wc[95] == "Mangroves" and wc[100] == "Moss and lichen" and wc[50] == "Built-up"
    dw = dict(PRESETS["dynamic_world"])
    assert list(dw) == list(range(9))
    assert dw[0] == "water" and dw[3] == "flooded_vegetation" and dw[8] == "snow_and_ice"
    clc = dict(PRESETS["corine"])
    assert len(clc) == 44 and min(clc) == 111 and max(clc) == 523
    assert sorted(clc) == list(clc)
    per_level1 = {d: sum(1 for c in clc if c // 100 == d) for d in range(1, 6)}
    assert per_level1 == {1: 11, 2: 11, 3: 12, 4: 5, 5: 5}
    assert clc[211] == "Non-irrigated arable land" and clc[335] == "Glaciers and perpetual snow"
    assert clc[523] == "Sea and ocean" and clc[412] == "Peat bogs"
    for table in PRESETS.values():
        assert len({n for _, n in table}) == len(table)


def test_spec_validation_and_class_tables():
    with pytest.raises(ValueError, match="classes 'esa' unknown"):
        LandcoverSpec(classes="esa")
    with pytest.raises(ValueError, match="names has 1 entries for 2 codes"):
        LandcoverSpec(codes=[1, 2], names=["a"])
    with pytest.raises(ValueError, match="preset 'dynamic_world' has 9 classes"):
        LandcoverSpec(classes="dynamic_world", names=["water"])
    with pytest.raises(ValueError, match="duplicates"):
        LandcoverSpec(codes=[1, 2, 1])
    with pytest.raises(ValueError, match="min_coverage"):
        LandcoverSpec(min_coverage=1.5)
    assert LandcoverSpec(codes=[80, 10, 7]).table() == ([80, 10, 7], ["Permanent water bodies", "Tree cover",
                                                                      "class_7"])
    assert LandcoverSpec(codes=[1, 2], names=["x", "y"]).table() == ([1, 2], ["x", "y"])
    assert LandcoverSpec(classes="corine").table()[0][:3] == [111, 112, 121]


def test_halves_of_a_geographic_map_give_half_fractions_on_a_utm_chip(tmp_path):
    res = 0.00002                                  # ~1.6-2.2 m, finer than the chip
    west, south, east, north = chip_bounds_in("EPSG:4326", 0.001)
    n_west = int(np.ceil((15.0 - west) / res))     # 15 E falls exactly on a map pixel edge
    n_east = int(np.ceil((east - 15.0) / res))
    rows = int(np.ceil((north - south) / res))
    data = np.full((rows, n_west + n_east), 80, np.uint8)
    data[:, :n_west] = 10
    path = write_raster(tmp_path / "wc.tif", data, crs="EPSG:4326", origin=(15.0 - n_west * res, north),
                        res=res, nodata=0)
    lc = LandcoverMap(LandcoverSpec(path=str(path)))
    fr, cov = lc.fractions(CHIP_CRS, CHIP, H, W)
    assert fr.dtype == np.float32 and fr.shape == (11,)
    assert cov == 1.0
    assert fr[lc.codes.index(10)] == pytest.approx(0.5, abs=1 / W)
    assert fr[lc.codes.index(80)] == pytest.approx(0.5, abs=1 / W)
    assert fr.sum() == pytest.approx(1.0, abs=1e-6)
    # the chip's left half (x < 500000) is class 10, exactly
    cls = lc.class_map(CHIP_CRS, CHIP, H, W)
    assert (cls[:, :32] == lc.codes.index(10)).all() and (cls[:, 32:] == lc.codes.index(80)).all()


def test_partial_map_in_laea_with_nodata_and_unknown_codes_matches_pointwise_lookup(tmp_path):
    res = 25.0
    west, south, east, north = chip_bounds_in("EPSG:3035", 100.0)
    x0, y0 = np.floor(west / res) * res, np.ceil(north / res) * res
    rows = int(np.ceil((y0 - south) / res))
    cols = int(np.ceil((east - x0) / res)) // 2      # the map ends around the chip's middle
    i, j = np.mgrid[0:rows, 0:cols]
    pattern = np.array([10, 30, 80, 0, 123], np.uint16)   # 0 = nodata, 123 = not a WorldCover code
    data = pattern[(i // 6 + j // 6) % 5]
    path = write_raster(tmp_path / "lc3035.tif", data, crs="EPSG:3035", origin=(x0, y0), res=res, nodata=0)
    lc = LandcoverMap(LandcoverSpec(path=str(path), min_coverage=0.6))

    # reference: look every chip pixel centre up in the map (what nearest resampling does)
    r, c = np.mgrid[0:H, 0:W]
    xs, ys = CHIP[2] + (c.ravel() + 0.5) * 10, CHIP[5] - (r.ravel() + 0.5) * 10
    mx, my = warp_transform(CHIP_CRS, "EPSG:3035", xs, ys)
    mc, mr = np.floor((np.array(mx) - x0) / res).astype(int), np.floor((y0 - np.array(my)) / res).astype(int)
    inside = (mc >= 0) & (mc < cols) & (mr >= 0) & (mr < rows)
    codes = np.zeros(H * W, np.int64)
    codes[inside] = data[mr[inside], mc[inside]]
    known = np.isin(codes, [10, 30, 80])
    expect_cov = known.mean()
    assert 0.15 < expect_cov < 0.5                   # really partial: outside, nodata and unknown all occur
    assert (~inside).sum() > 1000 and (codes[inside] == 0).sum() > 100 and (codes[inside] == 123).sum() > 100

    fr, cov = lc.fractions(CHIP_CRS, CHIP, H, W)
    assert cov == pytest.approx(expect_cov, abs=0.01)
    for code in (10, 30, 80):
        assert fr[lc.codes.index(code)] == pytest.approx((codes[known] == code).mean(), abs=0.02)
    assert fr.sum() == pytest.approx(1.0, abs=1e-5)
    assert lc.entry(CHIP_CRS, CHIP, H, W) is None            # coverage below min_coverage 0.6
    lenient = LandcoverMap(LandcoverSpec(path=str(path), min_coverage=0.1))
    entry = lenient.entry(CHIP_CRS, CHIP, H, W)
    assert entry["coverage"] == pytest.approx(cov, abs=1e-6) and len(entry["fractions"]) == 11
    assert sum(entry["fractions"]) == pytest.approx(1.0, abs=1e-4)


def test_chip_outside_the_map_has_no_coverage(tmp_path):
    path = write_raster(tmp_path / "far.tif", np.full((50, 50), 10, np.uint8), crs="EPSG:4326",
                        origin=(-60.0, -20.0), res=0.001, nodata=0)
    lc = LandcoverMap(LandcoverSpec(path=str(path), min_coverage=0.0))
    fr, cov = lc.fractions(CHIP_CRS, CHIP, H, W)
    assert cov == 0.0 and not fr.any()
    assert lc.entry(CHIP_CRS, CHIP, H, W) is None


def test_only_the_window_under_the_chip_is_read(tmp_path, monkeypatch):
    big = np.full((3000, 3000), 30, np.uint8)
    west, _, _, north = chip_bounds_in("EPSG:4326", 0.05)
    path = write_raster(tmp_path / "big.tif", big, crs="EPSG:4326", origin=(west, north), res=0.0001,
                        nodata=0, compress="deflate", tiled=True)
    lc = LandcoverMap(LandcoverSpec(path=str(path)))
    seen = []
    original = LandcoverMap._read_window

    def spy(self, win):
        seen.append(win)
        return original(self, win)
    monkeypatch.setattr(LandcoverMap, "_read_window", spy)
    fr, cov = lc.fractions(CHIP_CRS, CHIP, H, W)
    assert cov == 1.0 and fr[lc.codes.index(30)] == 1.0
    assert len(seen) == 1 and seen[0].width < 100 and seen[0].height < 100   # ~83 x 59 pixels + padding, of 3000 x 3000


def test_remote_map_is_staged_and_errors_name_the_file(tmp_path):
    import fsspec
    data = np.full((150, 150), 40, np.uint8)
    west, _, _, north = chip_bounds_in("EPSG:4326", 0.002)
    local = write_raster(tmp_path / "lc.tif", data, crs="EPSG:4326", origin=(west, north), res=0.0001, nodata=0)
    url = f"memory://eofm-landcover-test/{uuid.uuid4().hex}/lc.tif"   # stage() caches by URL
    fsspec.filesystem("memory").pipe(url, Path(local).read_bytes())
    lc = LandcoverMap(LandcoverSpec(path=url))
    fr, cov = lc.fractions(CHIP_CRS, CHIP, H, W)
    assert cov == 1.0 and fr[lc.codes.index(40)] == 1.0
    clone = pickle.loads(pickle.dumps(lc))                   # picklable for worker processes
    assert clone.fractions(CHIP_CRS, CHIP, H, W)[1] == 1.0
    clone.close()
    lc.close()
    shutil.rmtree(Path(lc._local).parent, ignore_errors=True)   # the staged copy
    assert lc.describe() == {"source": url, "codes": [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100],
                             "names": [n for _, n in PRESETS["worldcover"]], "resampling": "nearest",
                             "min_coverage": 0.5}

    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(ProductError, match="broken.tif"):
        LandcoverMap(LandcoverSpec(path=str(bad)))
    floats = write_raster(tmp_path / "float.tif", np.zeros((4, 4), np.float32), crs="EPSG:4326")
    with pytest.raises(ProductError, match="float.tif: .*integer class codes"):
        LandcoverMap(LandcoverSpec(path=str(floats)))
    with pytest.raises(ProductError, match="no path"):
        LandcoverMap(LandcoverSpec())


def test_real_bigearthnet_reference_map_on_its_own_grid():
    path = next(BEN_MAPS.rglob("*_reference_map.tif"))
    lc = LandcoverMap(LandcoverSpec(path=str(path), classes="corine"))
    with rasterio.open(path) as src:
        data = src.read(1)
        crs, transform = src.crs.to_string(), tuple(src.transform)[:6]
    fr, cov = lc.fractions(crs, transform, data.shape[0], data.shape[1])
    assert cov == 1.0 and fr.shape == (44,)
    assert fr.sum() == pytest.approx(1.0, abs=1e-6)
    values, counts = np.unique(data, return_counts=True)
    expect = np.zeros(44)
    for v, n in zip(values, counts):
        expect[lc.codes.index(int(v))] = n / data.size
    np.testing.assert_allclose(fr, expect, atol=1e-6)
    assert len(values) >= 2                                   # a real mixture, not one class

    # a sub-chip (a window of the same grid) matches a direct count of that window
    a, b, c, d, e, f = transform
    sub = data[30:90, 45:105]
    fr_sub, cov_sub = lc.fractions(crs, (a, b, c + 45 * a, d, e, f + 30 * e), 60, 60)
    assert cov_sub == 1.0
    for v, n in zip(*np.unique(sub, return_counts=True)):
        assert fr_sub[lc.codes.index(int(v))] == pytest.approx(n / sub.size, abs=1e-6)

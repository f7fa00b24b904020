"""HLS v2.0 reader (S30, L30) on fixture granules written in the delivered per-band COG layout."""
import numpy as np
import pytest

from data_prep.config import PrepConfig
from data_prep.recipe import load_recipe
from data_prep.run import PrepError, run
from data_prep.sources import SOURCES, ProductError, Window, find_products
from data_prep.sources.hls import FMASK_INVALID_BITS, granule_time
from tests.conftest import prep_recipe
from tests.data_prep.optical_fixtures import (HLS_NODATA, L30_GRANULE, S30_GRANULE, SIZE, hls_dn, hls_granule,
                                              write_cog)

hls = SOURCES["hls"]
ALL = Window(0, 0, SIZE, SIZE)


def test_s30_bands_values_and_time(tmp_path):
    red = hls_dn(3)
    red[5, 7] = 1234
    scene = hls.open_product(str(hls_granule(tmp_path, dn={"B04": red})))
    assert scene.sensor == "hls_s30" and scene.product_id == S30_GRANULE and scene.dtype == "int16"
    assert scene.bands == ["coastal_aerosol", "blue", "green", "red", "red_edge_1", "red_edge_2", "red_edge_3",
                           "nir_broad", "nir_narrow", "water_vapour", "cirrus", "swir_1", "swir_2"]
    assert scene.radiometry["bands"]["nir_narrow"] == "B8A" and scene.radiometry["bands"]["cirrus"] == "B10"
    assert scene.scale == [1e-4] * 13 and scene.offset == [0.0] * 13
    assert scene.time == "2023-07-15T10:15:59Z"                 # 2023, day 196, 10:15:59 UTC
    stored, valid = scene.read(ALL)
    assert stored.dtype == np.int16 and stored.shape == (13, SIZE, SIZE) and valid.all()
    r = scene.bands.index("red")
    assert stored[r, 5, 7] == 1234 and stored[r, 5, 7] * scene.scale[r] + scene.offset[r] == pytest.approx(0.1234)
    np.testing.assert_array_equal(stored[scene.bands.index("swir_2")], hls_dn(12))
    assert scene.gsd_m == 30.0 and len(scene.files) == 14 and scene.files[-1].endswith(".Fmask.tif")


def test_l30_leaves_thermal_out_and_maps_oli_bands(tmp_path):
    nir = hls_dn(4)
    nir[0, 0] = 4321
    scene = hls.open_product(str(hls_granule(tmp_path, L30_GRANULE, dn={"B05": nir})))
    assert scene.sensor == "hls_l30" and scene.time == "2023-07-16T09:55:12Z"
    assert scene.bands == ["coastal_aerosol", "blue", "green", "red", "nir_narrow", "swir_1", "swir_2", "cirrus"]
    assert scene.radiometry["bands"] == {"coastal_aerosol": "B01", "blue": "B02", "green": "B03", "red": "B04",
                                         "nir_narrow": "B05", "swir_1": "B06", "swir_2": "B07", "cirrus": "B09"}
    assert not any(f.endswith((".B10.tif", ".B11.tif")) for f in scene.files)
    assert any("thermal" in n for n in scene.radiometry["notes"])
    stored, _ = scene.read(ALL)
    assert stored.shape[0] == 8 and stored[scene.bands.index("nir_narrow"), 0, 0] == 4321


def test_s30_and_l30_share_names_and_harmonised_wavelengths(tmp_path):
    s30 = hls.open_product(str(hls_granule(tmp_path, S30_GRANULE)))
    l30 = hls.open_product(str(hls_granule(tmp_path, L30_GRANULE)))
    s_wl, l_wl = dict(zip(s30.bands, s30.wavelengths_nm)), dict(zip(l30.bands, l30.wavelengths_nm))
    assert set(l30.bands) <= set(s30.bands)
    for name in ("coastal_aerosol", "blue", "green", "red", "nir_narrow", "swir_1", "swir_2"):
        assert s_wl[name] == l_wl[name]                       # bandpass-adjusted to OLI
    assert abs(s_wl["cirrus"] - l_wl["cirrus"]) < 10             # same physical band, each sensor's own centre
    assert s_wl["nir_broad"] < s_wl["nir_narrow"] and 700 < s_wl["red_edge_1"] < 710
    assert s30.wavelengths_nm == sorted(s30.wavelengths_nm[:10]) + s30.wavelengths_nm[10:]


def test_fmask_bits_nodata_and_fill_mask_exactly_those_pixels(tmp_path):
    fmask = np.zeros((SIZE, SIZE), np.uint8)
    expect = np.ones((SIZE, SIZE), bool)
    for bit in range(8):                                       # one single-bit value per pixel of row 1
        fmask[1, bit] = 1 << bit
        expect[1, bit] = bit not in FMASK_INVALID_BITS
    fmask[2, 0] = 255                                          # fill
    fmask[2, 1] = (1 << 5) | (3 << 6)                          # water + high aerosol: kept
    expect[2, 0] = False
    blue = hls_dn(1)
    blue[3, 3] = HLS_NODATA
    blue[3, 4] = -50                                           # slightly negative SR is data, not nodata
    expect[3, 3] = False
    scene = hls.open_product(str(hls_granule(tmp_path, dn={"B02": blue}, fmask=fmask)))
    stored, valid = scene.read(ALL)
    np.testing.assert_array_equal(valid, expect)
    assert [b for b in range(8) if not valid[1, b]] == [1, 2, 3, 4]
    assert stored[1, 3, 3] == HLS_NODATA and stored[1, 3, 4] == -50


def test_missing_band_and_fmask_are_named(tmp_path):
    with pytest.raises(ProductError, match=rf"missing band file\(s\) {S30_GRANULE}\.B8A\.tif"):
        hls.open_product(str(hls_granule(tmp_path / "a", skip=("B8A",))))
    with pytest.raises(ProductError, match=rf"{L30_GRANULE}\.Fmask\.tif"):
        hls.open_product(str(hls_granule(tmp_path / "b", L30_GRANULE, skip=("Fmask",))))


@pytest.mark.parametrize("kwargs,problem", [({"crs": "EPSG:32632"}, "CRS EPSG:32632 differs"),
                                            ({"shape": (SIZE, SIZE + 6)}, "footprint"),
                                            ({"dtype": np.uint16}, "expected one int16 band"),
                                            ({"scale": 0.01}, "declares scale 0.01")])
def test_band_on_another_grid_dtype_or_scale_names_the_file(tmp_path, kwargs, problem):
    granule = hls_granule(tmp_path)
    bad = granule / f"{S30_GRANULE}.B11.tif"
    write_cog(bad, np.full(kwargs.get("shape", (SIZE, SIZE)), 900, kwargs.get("dtype", np.int16)), nodata=HLS_NODATA,
              crs=kwargs.get("crs", "EPSG:32633"), scale=kwargs.get("scale"))
    with pytest.raises(ProductError, match=rf"{bad.name}: .*{problem}"):
        hls.open_product(str(granule))


def test_truncated_cog_is_a_product_error_naming_the_file(tmp_path):
    granule = hls_granule(tmp_path)
    band = granule / f"{S30_GRANULE}.B03.tif"
    data = band.read_bytes()
    band.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProductError, match=rf"{band.name}"):
        hls.open_product(str(granule)).read(ALL)


def test_undeclared_scale_falls_back_to_the_documented_one(tmp_path):
    scene = hls.open_product(str(hls_granule(tmp_path, declare_scale=False)))
    assert scene.scale == [1e-4] * 13


def test_flat_folder_of_several_granules_is_claimed_and_refused_listing_them(tmp_path):
    hls_granule(tmp_path, S30_GRANULE, folder="downloads")
    hls_granule(tmp_path, L30_GRANULE, folder="downloads")
    found, unknown = find_products(str(tmp_path))
    assert found == [("hls", str(tmp_path / "downloads"))] and not unknown
    with pytest.raises(ProductError, match=rf"2 HLS granule products \({L30_GRANULE}, {S30_GRANULE}\); put each product in its own folder"):
        hls.open_product(str(tmp_path / "downloads"))


def test_granule_time_from_the_id():
    assert granule_time("g", "2024060", "000000").isoformat() == "2024-02-29T00:00:00+00:00"   # leap year
    assert granule_time("g", "2023365", "235959").isoformat() == "2023-12-31T23:59:59+00:00"
    with pytest.raises(ProductError, match="invalid acquisition date"):
        granule_time("g", "2023366", "120000")


def test_all_fill_granule_alone_stops_the_run_with_the_reason(tmp_path):
    hls_granule(tmp_path / "archive", L30_GRANULE, fill=True)
    cfg = load_recipe(PrepConfig, str(prep_recipe(tmp_path, [tmp_path / "archive"], tmp_path / "ds", size=32)), [])
    with pytest.raises(PrepError, match=rf"no chips written: .*{L30_GRANULE}: no valid pixels"):
        run(cfg, progress=False)
    assert not (tmp_path / "ds" / "manifest.json").exists()

"""The Sentinel-1 reader: real SSL4EO-S12 and BigEarthNet dB patches, generated linear RTC layouts."""
import json

import numpy as np
import pytest
import rasterio

from data_prep.bands import SAR_PSEUDO_WAVELENGTH_NM
from data_prep.sources import ProductError, Window, find_products
from data_prep.sources import sentinel1 as s1
from tests.conftest import DATA, needs_shared
from tests.data_prep.sar_hsi_fixtures import (BEN_S1, S1_STYLES, SSL4EO_S1, linear_backscatter, write_s1_db_folder,
                                              write_s1_product)
from tests.fixtures import write_raster


def _full(scene):
    return scene.read(Window(0, 0, scene.height, scene.width))


def _raw(path):
    with rasterio.open(path) as src:
        return src.read(1).astype(np.float64)


@pytest.mark.parametrize("copy", ["bundled", "full"])
@pytest.mark.parametrize("product", sorted(p.name for p in SSL4EO_S1.iterdir()))
def test_ssl4eo_s12_db_is_stored_at_0_01_db(product, copy):
    # bundled: a 128 px window of the 264 px patch; full: the whole patch from ../shared (optional)
    folder, side = (SSL4EO_S1 / product, 128) if copy == "bundled" else \
        (needs_shared(*(SSL4EO_S1 / product).relative_to(DATA).parts), 264)
    scene = s1.open_product(str(folder))
    assert scene.sensor == "sentinel1" and scene.units == "backscatter dB" and scene.dtype == "int16"
    assert scene.bands == ["VV", "VH"] and scene.wavelengths_nm == [SAR_PSEUDO_WAVELENGTH_NM["VV"],
                                                                     SAR_PSEUDO_WAVELENGTH_NM["VH"]]
    assert scene.scale == [0.01, 0.01] and scene.offset == [0.0, 0.0]
    assert scene.time == f"{product[17:21]}-{product[21:23]}-{product[23:25]}T{product[26:28]}:{product[28:30]}:" \
                         f"{product[30:32]}Z"
    assert scene.crs == "EPSG:4326" and scene.gsd_m == 10.0 and "nominal 10 m" in scene.radiometry["gsd"]
    rad = scene.radiometry
    assert rad["input_scale"] == "dB" and "COPERNICUS/S1_GRD" in rad["scale_source"] and rad["quantity"] == "sigma0"
    stored, valid = _full(scene)
    assert stored.shape == (2, side, side) and valid.all()
    for i, pol in enumerate(scene.bands):
        raw = _raw(folder / f"{pol}.tif")
        assert np.abs(stored[i] * 0.01 - raw).max() <= 0.005 + 1e-9
        assert stored[i, 10, 20] == round(raw[10, 20] / 0.01)            # a known pixel, exactly rounded
    assert str(folder / "metadata.json") in scene.files


def test_bigearthnet_db_decided_from_the_values():
    scene = s1.open_product(str(BEN_S1))
    rad = scene.radiometry
    assert rad["input_scale"] == "dB" and rad["scale_source"].startswith("data: dB: negative median")
    assert rad["quantity"] == "as delivered" and any("not stated" in n for n in rad["notes"])
    assert scene.time == "2017-06-13T16:50:43Z" and scene.gsd_m == 10.0 and scene.crs == "EPSG:32633"
    stored, valid = scene.read(Window(30, 40, 50, 60))
    assert valid.all()
    raw = _raw(BEN_S1 / f"{BEN_S1.name}_VH.tif")[30:80, 40:100]
    np.testing.assert_allclose(stored[1] * 0.01, raw, atol=0.005 + 1e-9)
    assert -36 < stored[1].min() * 0.01 and stored[0].max() * 0.01 < 10


@pytest.mark.parametrize("style", sorted(S1_STYLES))
def test_linear_rtc_layouts_become_db(tmp_path, style):
    data = linear_backscatter()
    nodata = S1_STYLES[style]["nodata"]
    data["VV"][2, 3] = 0.0                  # zero power: nodata, never -60 dB
    data["VH"][5, 6] = np.nan
    data["VV"][7, 8] = -0.01                # impossible negative power: nodata
    data["VH"][9, 9] = 1e-9                 # tiny positive: floored at -60 dB, still valid
    folder = write_s1_product(tmp_path, style, data)
    found, _ = find_products(str(tmp_path))
    assert found == [("sentinel1", str(folder))]
    scene = s1.open_product(str(folder))
    rad = scene.radiometry
    assert rad["input_scale"] == "linear power" and rad["quantity"] == "gamma0"
    assert scene.time == S1_STYLES[style]["time"] and scene.gsd_m == S1_STYLES[style]["res"]
    if style == "majortom":
        assert rad["scale_source"].startswith("data: linear")
    else:
        assert ("HyP3 naming code 'RTC30_G_gpuned'" if style == "asf" else "OPERA") in rad["scale_source"]
    stored, valid = _full(scene)
    for i, pol in enumerate(scene.bands):
        x = data[pol].astype(np.float64)
        for r, c in [(0, 0), (4, 11), (23, 23)]:
            assert abs(stored[i, r, c] * 0.01 - 10 * np.log10(x[r, c])) <= 0.005 + 1e-6
    invalid = {(2, 3), (5, 6), (7, 8)}
    assert {tuple(rc) for rc in np.argwhere(~valid)} == invalid
    assert all((stored[:, r, c] == -32768).all() for r, c in invalid)
    assert stored[1, 9, 9] == -6000                                      # -60 dB floor
    if nodata == 0.0:
        assert len(scene.files) == 2 and all(f.endswith(("_VV.tif", "_VH.tif")) for f in scene.files)


def test_hyp3_amplitude_code_uses_20_log10(tmp_path):
    amp = {p: np.sqrt(v) for p, v in linear_backscatter().items()}
    folder = write_s1_product(tmp_path, "asf", amp, folder="S1A_IW_20180128T161201_DVP_RTC30_G_saunem_A1B2")
    scene = s1.open_product(str(folder))
    assert scene.radiometry["input_scale"] == "linear amplitude" and scene.radiometry["quantity"] == "sigma0"
    stored, _ = _full(scene)
    assert abs(stored[0, 4, 4] * 0.01 - 20 * np.log10(float(amp["VV"][4, 4]))) <= 0.005 + 1e-6


def test_tags_saying_db_win_but_contradicting_values_are_refused(tmp_path):
    db = {p: (10 * np.log10(v)).astype(np.float32) for p, v in linear_backscatter().items()}
    ok = write_s1_db_folder(tmp_path, "S1A_IW_GRDH_1SDV_20200101T000000_x", db, crs="EPSG:32633",
                            tags={"BACKSCATTER_UNITS": "dB"})
    assert "GeoTIFF tags" in s1.open_product(str(ok)).radiometry["scale_source"]
    bad = write_s1_product(tmp_path, "asf", db, folder="S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_BAD0")
    with pytest.raises(ProductError, match="values disagree.*negative values"):
        s1.open_product(str(bad))


def test_values_that_are_neither_linear_nor_db_are_refused(tmp_path):
    odd = {"VV": np.full((8, 8), 250.0, np.float32), "VH": np.full((8, 8), 90.0, np.float32)}
    folder = write_s1_db_folder(tmp_path, "S1A_IW_GRDH_1SDV_20200101T000000_odd", odd, crs="EPSG:32633")
    with pytest.raises(ProductError, match="cannot tell linear from dB"):
        s1.open_product(str(folder))


def test_integer_dns_and_missing_time_are_refused(tmp_path):
    dn = {"VV": np.full((8, 8), 300, np.uint16)}
    folder = tmp_path / "S1A_IW_GRDH_1SDV_20200101T000000_dn"
    write_raster(folder / "VV.tif", dn["VV"])
    with pytest.raises(ProductError, match="uncalibrated GRD"):
        s1.open_product(str(folder))
    nameless = write_s1_db_folder(tmp_path, "site42", {"VV": np.full((8, 8), -12.0, np.float32)}, crs="EPSG:32633")
    with pytest.raises(ProductError, match="no acquisition time"):
        s1.open_product(str(nameless))
    with_json = write_s1_db_folder(tmp_path, "site43", {"VV": np.full((8, 8), -12.0, np.float32)}, crs="EPSG:32633",
                                   metadata_json=json.dumps({"system:time_start": 1591492080000}))
    assert s1.open_product(str(with_json)).time == "2020-06-07T01:08:00Z"


def test_misaligned_polarisations_are_refused(tmp_path):
    folder = write_s1_db_folder(tmp_path, "S1A_IW_GRDH_1SDV_20200101T000000_shift",
                                {"VV": np.full((8, 8), -12.0, np.float32)}, crs="EPSG:32633")
    write_s1_db_folder(tmp_path, "S1A_IW_GRDH_1SDV_20200101T000000_shift", {"VH": np.full((8, 8), -18.0, np.float32)},
                       crs="EPSG:32633", origin=(500500.0, 5000000.0))
    with pytest.raises(ProductError, match="VH.tif: footprint"):
        s1.open_product(str(folder))


@pytest.mark.parametrize("path,names,expected", [
    ("x/S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457", {"VV.tif", "VH.tif", "metadata.json"},
     True),
    ("x/site", {"vv.tif", "vh.tif"}, True),                                 # exact names need no S1 hint
    ("x/S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48", {"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_70_48_VV.tif"}, True),
    ("x/p", {"S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_FD6A_VV.tif",
             "S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_FD6A_VH.tif",
             "S1A_IW_20180128T161201_DVP_RTC30_G_gpuned_FD6A_rgb.tif", "x.README.md.txt"}, True),
    ("x/p", {"OPERA_L2_RTC-S1_T069-147170-IW1_20231019T010020Z_20231019T034720Z_S1A_30_v1.0_VV.tif"}, True),
    ("x/p", {"S1A_a_VV.tif", "S1A_b_VV.tif"}, False),                        # two products in one folder
    ("x/p", {"field_VV.tif", "field_VH.tif"}, False),                        # nothing says Sentinel-1
    ("x/p", {"B02.tif", "B04.tif"}, False),
    ("x/S1A_x", {"VV_notes.tif"}, False),
])
def test_match(path, names, expected):
    assert s1.match(path, names, True) is expected
    assert s1.match(path + "/VV.tif", set(), False) is False               # files are never products alone

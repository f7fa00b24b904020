"""The Sentinel-2 per-band GeoTIFF reader on real Major-TOM and SSL4EO-S12 products."""
import numpy as np
import pytest
import rasterio
from datetime import datetime, timezone

from data_prep.sources import SOURCES, ProductError, Window, find_products, open_product
from data_prep.sources.sentinel2_folder import decide_offset
from tests.conftest import MAJOR_TOM, MT_N0400, MT_N9999, SSL4EO_S2A

s2 = SOURCES["sentinel2_folder"]


def test_finds_products_in_nested_layouts():
    found, unknown = find_products(str(MAJOR_TOM))
    assert [(k, p.split("/")[-1][:10]) for k, p in found] == [("sentinel2_folder", "S2A_MSIL2A"),
                                                              ("sentinel2_folder", "S2B_MSIL2A")]
    assert not unknown
    assert len(find_products(str(SSL4EO_S2A))[0]) == 2


def test_products_behind_an_fsspec_url_are_found_and_staged():
    import fsspec
    fs = fsspec.filesystem("memory")
    product = sorted(SSL4EO_S2A.iterdir())[0]
    fs.put(str(product), f"/archive/{product.name}", recursive=True)
    fs.pipe("/archive/stray.tif", b"not a product")
    found, unknown = find_products("memory://archive")
    assert [(k, u.replace("memory:///", "memory://")) for k, u in found] == [
        ("sentinel2_folder", f"memory://archive/{product.name}")]
    assert unknown[0][0].endswith("/archive") and "unknown product kind" in unknown[0][1]
    assert "stray.tif" in unknown[0][1]
    scene = open_product(*found[0])
    stored, _ = scene.read(Window(0, 0, 16, 16))
    assert stored.shape == (12, 16, 16) and scene.product_id.startswith("S2B_MSIL2A_20200604")


def test_baseline_0400_applies_offset_from_product_name():
    scene = s2.open_product(str(MT_N0400))
    assert scene.radiometry["source"] == "processing baseline" and scene.radiometry["baseline"] == "04.00"
    assert scene.offset == [pytest.approx(-0.1)] * 12 and scene.scale == [1e-4] * 12
    stored, valid = scene.read(Window(0, 0, 64, 64))
    with rasterio.open(MT_N0400 / "B04.tif") as src:
        raw = src.read(1, window=((0, 64), (0, 64)))
    b04 = scene.bands.index("B04")
    np.testing.assert_array_equal(stored[b04], raw)  # 10 m bands pass through untouched
    refl = stored[b04] * 1e-4 - 0.1
    assert np.allclose(refl, (raw.astype(float) - 1000) / 10000)


def test_unknown_baseline_n9999_is_decided_from_data_and_recorded():
    scene = s2.open_product(str(MT_N9999))
    rad = scene.radiometry
    assert rad["source"] == "data" and rad["baseline"] == "unknown" and rad["add_offset"] == 0.0
    assert "below 1000" in rad["evidence"]
    assert scene.offset == [0.0] * 12


def test_ambiguous_data_falls_back_to_sensing_date():
    early, late = datetime(2020, 5, 1, tzinfo=timezone.utc), datetime(2023, 5, 1, tzinfo=timezone.utc)
    assert decide_offset(None, None, early, lambda: 0.0)["add_offset"] == 0.0
    late_decision = decide_offset(None, None, late, lambda: 0.0)
    assert late_decision["add_offset"] == -1000.0 and late_decision["source"] == "data+date"
    assert decide_offset("05.09", None, early, lambda: 1.0)["add_offset"] == -1000.0  # baseline wins over date


def test_ssl4eo_metadata_json_gives_identity_and_baseline():
    scene = s2.open_product(str(sorted(SSL4EO_S2A.iterdir())[0]))
    assert scene.product_id.startswith("S2B_MSIL2A_20200604T054639_N0214")
    assert scene.radiometry["baseline"] == "02.14" and scene.offset == [0.0] * 12
    assert scene.time == "2020-06-04T05:46:39Z" and scene.crs == "EPSG:4326"
    assert (scene.height, scene.width) == (264, 264)


def test_coarse_bands_are_resampled_onto_the_10m_grid():
    scene = s2.open_product(str(MT_N0400))
    stored, _ = scene.read(Window(100, 200, 60, 60))
    b05 = scene.bands.index("B05")
    with rasterio.open(MT_N0400 / "B05.tif") as src:   # 20 m: the same ground window is 30x30
        coarse = src.read(1, window=((50, 80), (100, 130))).astype(float)
    fine = stored[b05].astype(float).reshape(30, 2, 30, 2).mean(axis=(1, 3))
    assert np.corrcoef(fine.ravel(), coarse.ravel())[0, 1] > 0.95
    assert abs(fine.mean() - coarse.mean()) < 0.02 * coarse.mean()


def test_cloud_mask_and_nodata_make_pixels_invalid(ssl4eo_copy):
    product = sorted(ssl4eo_copy.iterdir())[0]
    with rasterio.open(product / "B4.tif", "r+") as dst:
        a = dst.read(1)
        a[:10, :10] = 0                                   # nodata in one band
        dst.write(a, 1)
    scene = s2.open_product(str(product))
    _, valid = scene.read(Window(0, 0, 32, 32))
    assert not valid[:10, :10].any() and valid[20:, 20:].all()


def test_missing_band_is_a_clear_error(ssl4eo_copy):
    product = sorted(ssl4eo_copy.iterdir())[0]
    (product / "B8A.tif").unlink()
    with pytest.raises(ProductError, match=r"missing band file\(s\) B8A"):
        s2.open_product(str(product))


def test_unreadable_geotiff_is_a_clear_error(ssl4eo_copy):
    product = sorted(ssl4eo_copy.iterdir())[0]
    (product / "B3.tif").write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(ProductError, match=r"B3.tif: cannot read raster"):
        s2.open_product(str(product))

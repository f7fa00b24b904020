"""The Sentinel-2 per-band GeoTIFF reader on real Major-TOM, SSL4EO-S12 and BigEarthNet products."""
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


# --- BigEarthNet v2 (band files with a product prefix), STAC items, name filters ------------------

from tests.conftest import BEN  # noqa: E402
from tests.data_prep.s2_fixtures import (B04_MARK_PX, BASE, N10, make_band_folder, make_stac_folder,  # noqa: E402
                                         mtd_xml)

BEN_S2 = BEN / "BigEarthNet-S2"
BEN_TILE = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP"
BEN_PATCH = BEN_S2 / BEN_TILE / f"{BEN_TILE}_75_43"


def test_bigearthnet_patch_is_found_and_read_at_10m():
    found, _ = find_products(str(BEN_S2))
    assert found == [("sentinel2_folder", str(BEN_PATCH))]
    scene = s2.open_product(str(BEN_PATCH))
    assert scene.product_id == BEN_PATCH.name and scene.sensor == "sentinel2_l2a" and len(scene.bands) == 12
    assert (scene.height, scene.width, scene.gsd_m) == (120, 120, 10.0) and scene.crs == "EPSG:32633"
    assert scene.time == "2017-06-13T10:10:31Z"                              # from the name
    rad = scene.radiometry                                                   # N9999: decided from the data
    assert rad["source"] == "data" and rad["baseline"] == "unknown" and rad["add_offset"] == 0.0
    assert "below 1000" in rad["evidence"] and any("decided from the data" in n for n in rad["notes"])
    assert scene.offset == [0.0] * 12 and scene.scale == [1e-4] * 12
    stored, valid = scene.read(Window(0, 0, 120, 120))
    with rasterio.open(BEN_PATCH / f"{BEN_PATCH.name}_B02.tif") as src:
        np.testing.assert_array_equal(stored[scene.bands.index("B02")], src.read(1))
    with rasterio.open(BEN_PATCH / f"{BEN_PATCH.name}_B01.tif") as src:   # 20x20 at 60 m
        b01 = src.read(1).astype(float)
    fine = stored[scene.bands.index("B01")].astype(float).reshape(20, 6, 20, 6).mean(axis=(1, 3))
    assert np.corrcoef(fine.ravel(), b01.ravel())[0, 1] > 0.95
    assert valid.all()


def test_match_accepts_s2_band_names_but_not_hls_or_landsat():
    m = s2.match
    ben = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43"
    assert m("/x", {f"{ben}_B02.tif", f"{ben}_B04.tif", f"{ben}_B8A.tif"}, True)
    assert m("/x", {"B2.tif", "B4.tif"}, True) and m("/x", {"B02.tif", "cloud_mask.tif"}, True)
    assert m("/x", {"T33UUP_20230601T100559_B04_10m.tif"}, True)            # Planetary Computer COG names
    hls = {f"HLS.S30.T33UUP.2021123T101031.v2.0.{b}.tif" for b in ("B02", "B03", "B04", "B8A", "Fmask")}
    assert not m("/x", hls, True)
    landsat = {f"LC08_L2SP_190026_20210508_20210518_02_T1_SR_B{i}.TIF" for i in range(1, 8)}
    assert not m("/x", landsat, True)
    assert not m("/x", {f"LC08_L1TP_190026_20210508_20210518_02_T1_B{i}.TIF" for i in (2, 4)}, True)
    assert not m("/x", {f"{ben}_reference_map.tif"}, True)
    assert not m("/x", {"red.tif", "blue.tif"}, True) and m("/x", {"red.tif", "blue.tif", "item.json"}, True)
    assert not m("/x/B02.tif", set(), False)


def test_band_files_of_two_products_in_one_folder_are_an_error(tmp_path):
    make_band_folder(tmp_path, "p", prefix="S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_43", cloud_mask=False)
    make_band_folder(tmp_path, "p", prefix="S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_75_44", cloud_mask=False)
    with pytest.raises(ProductError, match="more than one product"):
        s2.open_product(str(tmp_path / "p"))


@pytest.mark.parametrize("local_names", ["href", "key"])
def test_stac_item_scale_and_offset_are_used(tmp_path, local_names):
    folder = make_stac_folder(tmp_path, local_names=local_names)
    assert find_products(str(tmp_path))[0] == [("sentinel2_folder", str(folder))]
    scene = s2.open_product(str(folder))
    rad = scene.radiometry
    assert rad["source"] == "STAC raster:bands" and rad["stac_item"].endswith(".json")
    assert rad["s2:processing_baseline"] == "05.09" and rad["earthsearch:boa_offset_applied"] is True
    assert scene.scale == [0.0001] * 12 and scene.offset == [-0.1] * 12
    assert scene.product_id == "S2B_MSIL2A_20230601T100559_N0509_R022_T33UUP_20230601T131512"
    assert scene.time == "2023-06-01T10:15:03Z" and rad["masks"] == [f"{'SCL' if local_names == 'href' else 'scl'}.tif"]
    stored, valid = scene.read(Window(0, 0, N10, N10))
    i = scene.bands.index("B04")
    assert stored[i][B04_MARK_PX] * scene.scale[i] + scene.offset[i] == pytest.approx(0.15)
    assert stored[scene.bands.index("B11"), 30, 30] == BASE["B11"]
    assert not valid[4:6, 0:2].any() and valid[4:6, 8:10].all()               # SCL class 0 / 2
    assert scene.files[-1].endswith(".json")


def test_stac_scale_and_offset_win_over_the_product_name(tmp_path):
    # name says N0509 (offset -1000), but the item's raster:bands say offset 0: the item wins
    folder = make_stac_folder(tmp_path, scale=0.0001, offset=0.0)
    scene = s2.open_product(str(folder))
    assert scene.radiometry["source"] == "STAC raster:bands" and scene.offset == [0.0] * 12


def test_stac_offset_that_contradicts_the_data_is_noted(tmp_path):
    folder = make_stac_folder(tmp_path, dn_shift=-1000)     # DNs 100..1200: -1000 offset impossible
    scene = s2.open_product(str(folder))
    assert scene.offset == [-0.1] * 12
    assert any("may not fit its data" in n for n in scene.radiometry["notes"])


def test_stac_item_without_scale_falls_back_to_the_baseline(tmp_path):
    folder = make_stac_folder(tmp_path, scale=None, offset=None, baseline="05.09")
    scene = s2.open_product(str(folder))
    assert scene.radiometry["source"] == "processing baseline" and scene.offset == [pytest.approx(-0.1)] * 12


def test_stac_item_of_another_platform_is_an_error(tmp_path):
    import json
    folder = make_stac_folder(tmp_path)
    item_path = next(folder.glob("*.json"))
    item = json.loads(item_path.read_text())
    item["properties"]["platform"] = "landsat-8"
    item_path.write_text(json.dumps(item))
    with pytest.raises(ProductError, match="landsat-8"):
        s2.open_product(str(folder))


def test_mtd_xml_beside_the_bands_is_strict(tmp_path):
    name = "S2B_MSIL2A_20230601T100559_N0510_R022_T33UUP_20230601T131512"
    folder = make_band_folder(tmp_path, name)
    (folder / "MTD_MSIL2A.xml").write_text(mtd_xml("L2A", "05.10", name, [], "g", offset_value=-1000))
    scene = s2.open_product(str(folder))
    assert scene.radiometry["source"] == "MTD XML" and scene.offset == [pytest.approx(-0.1)] * 12
    assert str(folder / "MTD_MSIL2A.xml") in scene.files
    (folder / "MTD_MSIL2A.xml").write_text(mtd_xml("L2A", "05.10", name, [], "g", offsets=False))
    with pytest.raises(ProductError, match=r"MTD_MSIL2A\.xml: .*BOA_ADD_OFFSET"):
        s2.open_product(str(folder))

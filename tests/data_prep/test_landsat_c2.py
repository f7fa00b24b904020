"""Landsat Collection 2 Level-2 reader on fixture products written in the delivered layout."""
import json

import numpy as np
import pytest

from data_prep.cli import main
from data_prep.sources import SOURCES, ProductError, Window, find_products
from data_prep.sources.landsat_c2 import QA_INVALID_BITS, parse_mtl
from tests.conftest import prep_recipe
from tests.data_prep.optical_fixtures import (L1_ADD, L1_MULT, LANDSAT_ETM_ID, LANDSAT_L9_ID, LANDSAT_OLI_ID,
                                              LANDSAT_TM_ID, QA_CLEAR_LAND, QA_CLEAR_WATER, QA_FILL, S30_GRANULE,
                                              SIZE, hls_granule, landsat_dn, landsat_product, write_cog)

landsat = SOURCES["landsat_c2"]
ALL = Window(0, 0, SIZE, SIZE)


def _refl(scene, stored):
    return stored * np.asarray(scene.scale)[:, None, None] + np.asarray(scene.offset)[:, None, None]


@pytest.mark.parametrize("form", ["txt", "xml", "json"])
def test_each_mtl_form_gives_level2_reflectance(tmp_path, form):
    red = landsat_dn(4)
    red[5, 7] = 18639                                   # the USGS FAQ example: 18639 -> 0.313
    product = landsat_product(tmp_path, mtl=(form,), dn={4: red})
    scene = landsat.open_product(str(product))
    assert scene.radiometry["mtl"] == f"{LANDSAT_OLI_ID}_MTL.{form}"
    assert scene.scale == [2.75e-05] * 7 and scene.offset == [-0.2] * 7
    stored, valid = scene.read(ALL)
    assert stored.dtype == np.uint16 and stored.shape == (7, SIZE, SIZE) and valid.all()
    r = scene.bands.index("red")
    assert stored[r, 5, 7] == 18639
    assert _refl(scene, stored)[r, 5, 7] == pytest.approx(0.3125725, abs=1e-7)
    # the Level-1 group in the same MTL would give 18639 * 2e-5 - 0.1 = 0.273: clearly different
    assert 18639 * L1_MULT + L1_ADD == pytest.approx(0.27278)
    assert scene.time == "2023-07-15T09:58:12Z" and scene.product_id == LANDSAT_OLI_ID


def test_level1_values_sit_after_level2_in_the_fixture_and_are_ignored(tmp_path):
    product = landsat_product(tmp_path, mtl=("txt",), mult=3.0e-05)   # L2 value read, not hard-coded
    meta = parse_mtl(str(product / f"{LANDSAT_OLI_ID}_MTL.txt"))
    groups = list(meta)
    assert groups.index("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS") < groups.index("LEVEL1_RADIOMETRIC_RESCALING")
    assert meta["LEVEL1_RADIOMETRIC_RESCALING"]["REFLECTANCE_MULT_BAND_4"] == "2.0000E-05"
    assert landsat.open_product(str(product)).scale == [3.0e-05] * 7


def test_oli_band_table_and_scene_metadata(tmp_path):
    scene = landsat.open_product(str(landsat_product(tmp_path)))
    assert scene.sensor == "landsat_oli" and scene.dtype == "uint16" and scene.units == "surface reflectance"
    assert scene.bands == ["coastal_aerosol", "blue", "green", "red", "nir_narrow", "swir_1", "swir_2"]
    assert scene.wavelengths_nm == [440.0, 480.0, 560.0, 655.0, 865.0, 1610.0, 2200.0]
    assert scene.radiometry["bands"]["nir_narrow"] == "SR_B5"
    assert scene.gsd_m == 30.0 and scene.crs == "EPSG:32633" and (scene.height, scene.width) == (SIZE, SIZE)
    assert len(scene.files) == 9 and scene.files[-1].endswith("_MTL.txt")
    stored, _ = scene.read(Window(3, 4, 8, 8))          # windowed read matches the file
    np.testing.assert_array_equal(stored[scene.bands.index("swir_2")], landsat_dn(7)[3:11, 4:12])
    assert landsat.open_product(str(landsat_product(tmp_path / "l9", LANDSAT_L9_ID))).sensor == "landsat_oli"


@pytest.mark.parametrize("pid,sensor,wl", [
    (LANDSAT_TM_ID, "landsat_tm", [485.0, 560.0, 660.0, 830.0, 1650.0, 2215.0]),
    (LANDSAT_ETM_ID, "landsat_etm", [485.0, 560.0, 660.0, 835.0, 1650.0, 2220.0])])
def test_tm_and_etm_have_six_bands_with_band_7_as_swir2(tmp_path, pid, sensor, wl):
    b7 = landsat_dn(7)
    b7[0, 0] = 30000
    scene = landsat.open_product(str(landsat_product(tmp_path, pid, mtl=("json",), dn={7: b7})))
    assert scene.sensor == sensor and scene.wavelengths_nm == wl
    assert scene.bands == ["blue", "green", "red", "nir", "swir_1", "swir_2"]
    assert scene.radiometry["bands"]["swir_2"] == "SR_B7" and scene.radiometry["bands"]["swir_1"] == "SR_B5"
    stored, _ = scene.read(ALL)
    assert stored.shape[0] == 6 and stored[5, 0, 0] == 30000
    assert _refl(scene, stored)[5, 0, 0] == pytest.approx(30000 * 2.75e-05 - 0.2)


def test_qa_pixel_bits_mask_exactly_the_flagged_pixels(tmp_path):
    qa = np.full((SIZE, SIZE), QA_CLEAR_LAND, np.uint16)
    expect = np.ones((SIZE, SIZE), bool)
    for bit in range(16):                               # one single-bit value per pixel of row 1
        qa[1, bit] = 1 << bit
        expect[1, bit] = bit not in QA_INVALID_BITS
    qa[2, 0], qa[2, 1], qa[2, 2] = QA_CLEAR_WATER, QA_FILL, QA_CLEAR_LAND | (1 << 3)   # water, fill, cloud
    expect[2, 1] = expect[2, 2] = False
    scene = landsat.open_product(str(landsat_product(tmp_path, qa=qa)))
    _, valid = scene.read(ALL)
    np.testing.assert_array_equal(valid, expect)
    assert [b for b in range(16) if not valid[1, b]] == [0, 1, 2, 3, 4, 5]
    _, part = scene.read(Window(1, 0, 2, 8))            # windowed reads of the mask agree
    np.testing.assert_array_equal(part, expect[1:3, 0:8])


def test_sr_fill_is_invalid_and_out_of_range_dns_are_kept_as_delivered(tmp_path):
    b2 = landsat_dn(2)
    b2[10, 10], b2[10, 11], b2[10, 12] = 0, 5000, 50000       # fill, below 7273, above 43636
    scene = landsat.open_product(str(landsat_product(tmp_path, dn={2: b2})))
    stored, valid = scene.read(ALL)
    assert not valid[10, 10] and valid[10, 11] and valid[10, 12] and valid.sum() == SIZE * SIZE - 1
    assert stored[1, 10, 11] == 5000 and _refl(scene, stored)[1, 10, 11] < 0
    assert scene.radiometry["outside_valid_range"] == "kept" and scene.radiometry["valid_range_dn"] == [7273, 43636]


@pytest.mark.parametrize("drop,field", [
    (("IMAGE_ATTRIBUTES", "SCENE_CENTER_TIME"), "field IMAGE_ATTRIBUTES.SCENE_CENTER_TIME"),
    (("IMAGE_ATTRIBUTES", "DATE_ACQUIRED"), "field IMAGE_ATTRIBUTES.DATE_ACQUIRED"),
    (("PRODUCT_CONTENTS", "LANDSAT_PRODUCT_ID"), "field PRODUCT_CONTENTS.LANDSAT_PRODUCT_ID"),
    (("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "REFLECTANCE_MULT_BAND_3"),
     "field LEVEL2_SURFACE_REFLECTANCE_PARAMETERS.REFLECTANCE_MULT_BAND_3"),
    (("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "REFLECTANCE_ADD_BAND_7"),
     "field LEVEL2_SURFACE_REFLECTANCE_PARAMETERS.REFLECTANCE_ADD_BAND_7"),
    (("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", None), "group LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"),
])
@pytest.mark.parametrize("form", ["txt", "json"])
def test_missing_mtl_field_names_the_mtl_and_the_field(tmp_path, drop, field, form):
    product = landsat_product(tmp_path, mtl=(form,), drop=[drop])
    with pytest.raises(ProductError, match=rf"{LANDSAT_OLI_ID}_MTL\.{form}: missing MTL {field}"):
        landsat.open_product(str(product))


def test_broken_mtls_are_clear_errors(tmp_path):
    product = landsat_product(tmp_path, mtl=("xml",))
    mtl = product / f"{LANDSAT_OLI_ID}_MTL.xml"
    mtl.write_text(mtl.read_text()[:500])                                   # truncated download
    with pytest.raises(ProductError, match=r"_MTL\.xml: not valid XML"):
        landsat.open_product(str(product))
    txt = landsat_product(tmp_path / "t", mtl=("txt",))
    path = txt / f"{LANDSAT_OLI_ID}_MTL.txt"
    path.write_text(path.read_text().replace(f'"{LANDSAT_OLI_ID}"', f'"{LANDSAT_L9_ID}"', 1))
    with pytest.raises(ProductError, match="from different products"):
        landsat.open_product(str(txt))
    path.write_text("\n".join(path.read_text().splitlines()[:40]))
    with pytest.raises(ProductError, match=r"_MTL\.txt: GROUP = .* is never closed"):
        landsat.open_product(str(txt))


def test_missing_files_are_named(tmp_path):
    product = landsat_product(tmp_path)
    (product / f"{LANDSAT_OLI_ID}_SR_B4.TIF").unlink()
    with pytest.raises(ProductError, match=rf"missing band file\(s\) {LANDSAT_OLI_ID}_SR_B4\.TIF"):
        landsat.open_product(str(product))
    product = landsat_product(tmp_path / "qa")
    (product / f"{LANDSAT_OLI_ID}_QA_PIXEL.TIF").unlink()
    with pytest.raises(ProductError, match=rf"{LANDSAT_OLI_ID}_QA_PIXEL\.TIF"):
        landsat.open_product(str(product))
    product = landsat_product(tmp_path / "mtl", mtl=())
    with pytest.raises(ProductError, match=rf"missing metadata file {LANDSAT_OLI_ID}_MTL\.txt"):
        landsat.open_product(str(product))


@pytest.mark.parametrize("kwargs,problem", [({"crs": "EPSG:32634"}, "CRS EPSG:32634 differs"),
                                            ({"shape": (SIZE - 8, SIZE)}, "footprint"),
                                            ({"dtype": np.int16}, "expected one uint16 band")])
def test_band_on_another_grid_or_dtype_names_the_file(tmp_path, kwargs, problem):
    product = landsat_product(tmp_path)
    shape = kwargs.get("shape", (SIZE, SIZE))
    bad = product / f"{LANDSAT_OLI_ID}_SR_B3.TIF"
    write_cog(bad, np.full(shape, 9000, kwargs.get("dtype", np.uint16)), nodata=0, crs=kwargs.get("crs", "EPSG:32633"))
    with pytest.raises(ProductError, match=rf"{bad.name}: .*{problem}"):
        landsat.open_product(str(product))


def test_truncated_cog_is_a_product_error_naming_the_file(tmp_path):
    product = landsat_product(tmp_path)
    band = product / f"{LANDSAT_OLI_ID}_SR_B5.TIF"
    data = band.read_bytes()
    band.write_bytes(data[: len(data) * 2 // 3])                # a cut download: header intact, tiles gone
    with pytest.raises(ProductError, match=rf"{band.name}"):
        landsat.open_product(str(product)).read(ALL)


def test_folder_with_several_products_is_claimed_and_refused_listing_them(tmp_path):
    landsat_product(tmp_path, LANDSAT_OLI_ID, folder="flat")
    landsat_product(tmp_path, LANDSAT_L9_ID, folder="flat")
    found, unknown = find_products(str(tmp_path))
    assert found == [("landsat_c2", str(tmp_path / "flat"))] and not unknown
    with pytest.raises(ProductError, match=rf"2 Landsat Collection 2 Level-2 products \({LANDSAT_OLI_ID}, {LANDSAT_L9_ID}\)"):
        landsat.open_product(str(tmp_path / "flat"))


def test_walker_finds_landsat_and_hls_side_by_side(tmp_path):
    landsat_product(tmp_path / "archive")
    hls_granule(tmp_path / "archive")
    found, unknown = find_products(str(tmp_path / "archive"))
    assert sorted(found) == [("hls", str(tmp_path / "archive" / S30_GRANULE)),
                             ("landsat_c2", str(tmp_path / "archive" / LANDSAT_OLI_ID))]
    assert not unknown
    assert not landsat.match(str(tmp_path), {f"{S30_GRANULE}.B02.tif"}, True)
    assert not landsat.match(str(tmp_path / "x.TIF"), set(), False)


def test_all_fill_product_is_skipped_in_a_run_beside_good_ones(tmp_path):
    root = tmp_path / "archive"
    red = landsat_dn(4)
    red[5, 7] = 18639
    landsat_product(root, dn={4: red})
    landsat_product(root, LANDSAT_L9_ID, fill=True)             # e.g. a scene-edge product, all fill
    hls_granule(root)
    out = tmp_path / "ds"
    assert main(["run", str(prep_recipe(tmp_path, [root], out, size=32)), "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    rec = {p["product_id"]: p for p in m["products"]}
    assert rec[LANDSAT_OLI_ID]["outcome"] == "written" and rec[LANDSAT_OLI_ID]["chips"] == 1
    assert rec[LANDSAT_L9_ID]["outcome"] == "skipped" and "no valid pixels" in rec[LANDSAT_L9_ID]["reason"]
    assert rec[S30_GRANULE]["outcome"] == "written"
    assert set(m["sensors"]) == {"landsat_oli", "hls_s30"} and m["samples"] == 2
    assert rec[LANDSAT_OLI_ID]["radiometry"]["mtl"].endswith("_MTL.txt")
    red_stats = m["sensors"]["landsat_oli"]["stats"]["red"]
    assert red_stats["max"] == pytest.approx(0.3125725, abs=1e-12)   # exact: the planted DN is the chip's maximum
    assert red_stats["count"] == 32 * 32

"""The Sentinel-2 SAFE reader (folder and zip) on fixture products in the delivered layout."""
import shutil

import numpy as np
import pytest
import rasterio

from data_prep.sources import SOURCES, ProductError, Window, find_products, open_product
from data_prep.sources.sentinel2_folder import SCL_INVALID
from tests.data_prep.s2_fixtures import (B04_MARK, B04_MARK_PX, B05_MARK, BASE, N10, SENSING, TILE, default_scl,
                                         make_band_folder, make_safe, product_name, write_jp2, zip_safe)

safe_reader = SOURCES["sentinel2_safe"]
FULL = Window(0, 0, N10, N10)


def reflectance(scene, stored, band):
    i = scene.bands.index(band)
    return stored[i].astype(np.float64) * scene.scale[i] + scene.offset[i]


def img(safe, res, band):
    """Path of an L2A band file in the fixture product."""
    return next((safe / "GRANULE").glob(f"L2A_*/IMG_DATA/R{res}m/T{TILE}_{SENSING}_{band}_{res}m.jp2"))


# --- identity, radiometry, native files --------------------------------------------------------

def test_l2a_baseline_0510_applies_the_xml_offset(tmp_path):
    safe = make_safe(tmp_path, baseline="05.10")
    scene = safe_reader.open_product(str(safe))
    assert scene.product_id == product_name("L2A", "05.10") and scene.sensor == "sentinel2_l2a"
    assert scene.bands == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    assert scene.wavelengths_nm[scene.bands.index("B04")] == 664.6
    assert (scene.gsd_m, scene.height, scene.width, scene.crs) == (10.0, N10, N10, "EPSG:32633")
    assert scene.time == "2023-06-01T10:05:59Z"                     # PRODUCT_START_TIME, seconds
    rad = scene.radiometry
    assert rad["source"] == "MTD XML" and rad["baseline"] == "05.10" and rad["quantification"] == 10000
    assert rad["add_offset"] == {b: -1000.0 for b in scene.bands} and rad["masks"] == ["SCL"]
    assert scene.scale == [1e-4] * 12 and scene.offset == [pytest.approx(-0.1)] * 12

    stored, valid = scene.read(FULL)
    assert stored.dtype == np.uint16 and stored.shape == (12, N10, N10)
    r, c = B04_MARK_PX
    assert stored[scene.bands.index("B04"), r, c] == B04_MARK == 2500
    assert reflectance(scene, stored, "B04")[r, c] == pytest.approx((2500 - 1000) / 10000)   # 0.15
    assert reflectance(scene, stored, "B04")[0, 0] == pytest.approx((1400 - 1000) / 10000)


def test_l2a_baseline_0214_has_no_offset_and_says_so(tmp_path):
    safe = make_safe(tmp_path, baseline="02.14")          # delivered without BOA_ADD_OFFSET_VALUES_LIST
    assert "BOA_ADD_OFFSET" not in (safe / "MTD_MSIL2A.xml").read_text()
    scene = safe_reader.open_product(str(safe))
    assert scene.offset == [0.0] * 12 and scene.radiometry["add_offset"] == {b: 0.0 for b in scene.bands}
    assert any("before 04.00" in n and "offset 0" in n for n in scene.radiometry["notes"])
    stored, _ = scene.read(FULL)
    assert reflectance(scene, stored, "B04")[B04_MARK_PX] == pytest.approx(2500 / 10000)   # 0.25


def test_quantification_and_per_band_offsets_come_from_the_xml(tmp_path):
    safe = make_safe(tmp_path, baseline="05.10", offset_value=-900, quantification=20000)
    scene = safe_reader.open_product(str(safe))
    stored, _ = scene.read(FULL)
    assert reflectance(scene, stored, "B04")[B04_MARK_PX] == pytest.approx((2500 - 900) / 20000)


def test_each_band_comes_from_its_native_resolution_folder(tmp_path):
    # Copies at other resolutions hold BASE + res, so a wrong folder shows in the values.
    scene = safe_reader.open_product(str(make_safe(tmp_path)))
    files = scene.radiometry["files"]
    assert "/R10m/" in files["B02"] and "/R20m/" in files["B05"] and "/R60m/" in files["B01"]
    assert "/R60m/" in files["B09"] and "/R20m/" in files["B8A"]
    stored, _ = scene.read(FULL)
    inner = (slice(10, 18), slice(30, 50))                 # away from markers
    for b in ("B01", "B02", "B03", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"):
        assert (stored[scene.bands.index(b)][inner] == BASE[b]).all(), b
    # B05's 2x2 marker block at 20 m rows/cols 10..11 covers 10 m rows/cols 20..23; bilinear
    # keeps the exact value on the inner 10 m pixels 21..22.
    b05 = stored[scene.bands.index("B05")]
    assert (b05[21:23, 25:27] == B05_MARK).all() and b05[18, 24] == BASE["B05"]


def test_l1c_has_13_bands_radio_offset_and_optional_classi_mask(tmp_path):
    classi = np.zeros((3, 10, 10), np.uint8)
    classi[0, 0, 0] = 1        # opaque cloud on 60 m pixel (0, 0) -> 10 m 0..5
    classi[1, 9, 9] = 1        # cirrus on 60 m pixel (9, 9) -> 10 m 54..59
    classi[2, 5, 5] = 1        # snow: kept valid
    safe = make_safe(tmp_path, level="L1C", baseline="05.09", classi=classi)
    xml = (safe / "MTD_MSIL1C.xml").read_text()
    assert "<Radiometric_Offset_List>" in xml and "<QUANTIFICATION_VALUE" in xml
    scene = safe_reader.open_product(str(safe))
    assert scene.sensor == "sentinel2_l1c" and len(scene.bands) == 13 and "B10" in scene.bands
    assert scene.units == "top-of-atmosphere reflectance"
    assert scene.radiometry["add_offset"]["B10"] == -1000.0
    stored, valid = scene.read(FULL)
    assert reflectance(scene, stored, "B04")[B04_MARK_PX] == pytest.approx(0.15)
    assert stored[scene.bands.index("B10"), 30, 30] == BASE["B10"]
    expected = np.ones((N10, N10), bool)
    expected[0:6, 0:6] = False
    expected[54:60, 54:60] = False
    np.testing.assert_array_equal(valid, expected)


def test_l1c_before_baseline_04_has_no_mask_and_no_offset(tmp_path):
    scene = safe_reader.open_product(str(make_safe(tmp_path, level="L1C", baseline="02.09")))
    assert scene.offset == [0.0] * 13 and scene.radiometry["masks"] == []
    assert any("no cloud mask" in n for n in scene.radiometry["notes"])
    assert scene.read(FULL)[1].all()


# --- valid mask ------------------------------------------------------------------------------

def test_scl_classes_and_nodata_saturated_dns_mask_exactly_the_expected_pixels(tmp_path):
    scl = default_scl()                          # vegetation + class k at 20 m pixel (2, 2k)
    scl[20:22, 20:22] = 11                       # snow: valid
    scl[25, 5] = 8

    def edit(band, res, a):
        if band == "B03" and res == 10:
            a[40, 40] = 0                        # nodata in a 10 m band
        if band == "B11" and res == 20:
            a[25, 25] = 65535                    # saturated in a 20 m band -> bilinear taps: 10 m 49..52
        if band == "B09" and res == 60:
            a[9, 0] = 0                          # nodata in a 60 m band -> bilinear taps: rows 51..59, cols 0..8
        return a

    scene = safe_reader.open_product(str(make_safe(tmp_path, scl=scl, edit=edit)))
    _, valid = scene.read(FULL)
    expected = ~np.isin(np.kron(scl, np.ones((2, 2), np.uint8)), SCL_INVALID)
    expected[40, 40] = False
    # A 10 m pixel whose bilinear value mixes in a flagged coarse pixel is invalid: source pixel
    # i contributes to target t when i in {floor(u - 0.5), floor(u - 0.5) + 1}, u = (t + 0.5) / k.
    expected[49:53, 49:53] = False
    expected[51:60, 0:9] = False
    np.testing.assert_array_equal(valid, expected)
    assert set(SCL_INVALID) == {0, 1, 3, 8, 9, 10}
    # the same on a window that is not at the origin
    _, part = scene.read(Window(3, 17, 31, 29))
    np.testing.assert_array_equal(part, expected[3:34, 17:46])


def test_missing_scl_is_an_error(tmp_path):
    safe = make_safe(tmp_path)
    for res in (20, 60):
        img(safe, res, "SCL").unlink()
    with pytest.raises(ProductError, match=r"no SCL"):
        safe_reader.open_product(str(safe))


# --- 60 m fallback ---------------------------------------------------------------------------

def test_without_r20m_the_product_is_used_at_60m(tmp_path):
    safe = make_safe(tmp_path)
    shutil.rmtree(img(safe, 20, "B05").parent)
    scene = safe_reader.open_product(str(safe))
    assert (scene.gsd_m, scene.height, scene.width) == (60.0, N10 // 6, N10 // 6)
    assert scene.transform[0] == 60.0
    notes = " | ".join(scene.radiometry["notes"])
    assert "R20m missing" in notes and "product used at 60 m" in notes
    assert "B08 not in R60m: downsampled to 60 m from R10m" in notes
    stored, valid = scene.read(Window(0, 0, 10, 10))
    assert (stored[scene.bands.index("B02")] == BASE["B02"] + 60).all()      # from R60m
    assert (stored[scene.bands.index("B05")] == BASE["B05"] + 60).all()
    assert (stored[scene.bands.index("B08")] == BASE["B08"]).all()           # R10m, downsampled
    scl60 = default_scl()[1::3, 1::3]
    np.testing.assert_array_equal(valid, ~np.isin(scl60, SCL_INVALID))


def test_without_r10m_and_r20m_the_delivered_r60m_gives_an_11_band_60m_product(tmp_path):
    # ESA's R60m holds every L2A band but B08: the product is still usable at 60 m, without B08
    # (never zero-filled), and says so; its band set gets its own sensor key for statistics.
    safe = make_safe(tmp_path)
    shutil.rmtree(img(safe, 10, "B02").parent)
    shutil.rmtree(img(safe, 20, "B05").parent)
    scene = safe_reader.open_product(str(safe))
    assert scene.gsd_m == 60.0 and "B08" not in scene.bands and len(scene.bands) == 11
    assert scene.sensor == "sentinel2_l2a_no_b08" and len(scene.wavelengths_nm) == len(scene.scale) == 11
    notes = " | ".join(scene.radiometry["notes"])
    assert "product used at 60 m" in notes and "read without B08" in notes
    stored, valid = scene.read(Window(0, 0, 10, 10))
    assert stored.shape == (11, 10, 10)
    assert (stored[scene.bands.index("B04")] == BASE["B04"] + 60).all()


def test_without_r60m_too_nothing_is_usable(tmp_path):
    safe = make_safe(tmp_path)
    shutil.rmtree(img(safe, 10, "B02").parent)
    shutil.rmtree(img(safe, 20, "B05").parent)
    shutil.rmtree(img(safe, 60, "B01").parent)
    with pytest.raises(ProductError, match=r"no band files under GRANULE"):
        safe_reader.open_product(str(safe))


def test_without_r10m_and_r20m_a_complete_r60m_gives_a_60m_product(tmp_path):
    safe = make_safe(tmp_path, b08_60m=True)             # a repackaged product with B08 at 60 m
    shutil.rmtree(img(safe, 10, "B02").parent)
    shutil.rmtree(img(safe, 20, "B05").parent)
    scene = safe_reader.open_product(str(safe))
    assert scene.gsd_m == 60.0 and (scene.height, scene.width) == (10, 10)
    assert any("R10m missing and R20m missing: product used at 60 m" in n for n in scene.radiometry["notes"])
    stored, _ = scene.read(Window(0, 0, 10, 10))
    assert (stored[scene.bands.index("B04")] == BASE["B04"] + 60).all()
    assert all("/R60m/" in f for f in scene.radiometry["files"].values())


# --- zipped SAFE -----------------------------------------------------------------------------

@pytest.mark.parametrize("zip_name", ["{name}.SAFE.zip", "{name}.zip"])
def test_zipped_safe_reads_the_same_values_as_the_folder(tmp_path, zip_name):
    scl = default_scl()
    scl[10:14, 8] = 9                    # 10 m rows 20..27, cols 16..17
    safe = make_safe(tmp_path / "folder", scl=scl)
    name = safe.name[:-5]
    z = zip_safe(safe, tmp_path / zip_name.format(name=name))
    assert safe_reader.match(str(z), set(), False)
    a = safe_reader.open_product(str(safe))
    b = safe_reader.open_product(str(z))
    assert b.product_id == a.product_id == name and b.files == [str(z)]
    assert (b.scale, b.offset, b.time, b.crs, b.transform) == (a.scale, a.offset, a.time, a.crs, a.transform)
    for win in (FULL, Window(7, 11, 23, 31)):
        sa, va = a.read(win)
        sb, vb = b.read(win)
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_array_equal(va, vb)
    assert not va.all()


def test_a_zip_without_a_safe_inside_is_a_clear_error(tmp_path):
    import zipfile
    z = tmp_path / f"{product_name()}.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("readme.txt", "hello")
    with pytest.raises(ProductError, match=r"no <name>.SAFE/MTD_MSIL1C.xml or MTD_MSIL2A.xml"):
        safe_reader.open_product(str(z))
    z.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ProductError, match=r"not a readable zip"):
        safe_reader.open_product(str(z))


# --- broken products -------------------------------------------------------------------------

@pytest.mark.parametrize("omit, field", [
    (("BOA_ADD_OFFSET",), r"BOA_ADD_OFFSET values, but the XML has none"),
    (("BOA_ADD_OFFSET:8",), r"BOA_ADD_OFFSET missing for band\(s\) B8A \(band_id 8\)"),
    (("BOA_QUANTIFICATION_VALUE",), r"missing BOA_QUANTIFICATION_VALUE"),
    (("PROCESSING_BASELINE",), r"missing PROCESSING_BASELINE"),
])
def test_xml_missing_a_required_field_names_the_xml_and_the_field(tmp_path, omit, field):
    safe = make_safe(tmp_path, baseline="04.00", extras=False, omit=omit)
    with pytest.raises(ProductError, match=r"MTD_MSIL2A\.xml: .*" + field):
        safe_reader.open_product(str(safe))


def test_l1c_xml_without_radio_offsets_at_baseline_05_is_an_error(tmp_path):
    safe = make_safe(tmp_path, level="L1C", baseline="05.09", extras=False, offsets=False)
    with pytest.raises(ProductError, match=r"MTD_MSIL1C\.xml: .*RADIO_ADD_OFFSET"):
        safe_reader.open_product(str(safe))


def test_unparsable_xml_is_an_error(tmp_path):
    safe = make_safe(tmp_path, extras=False)
    (safe / "MTD_MSIL2A.xml").write_text("<n1:Level-2A_User_Product>")
    with pytest.raises(ProductError, match=r"MTD_MSIL2A\.xml: not valid XML"):
        safe_reader.open_product(str(safe))


def test_band_with_mismatched_shape_is_an_error(tmp_path):
    safe = make_safe(tmp_path, extras=False)
    write_jp2(img(safe, 10, "B03"), np.full((50, 50), 1300, np.uint16), 10)
    with pytest.raises(ProductError, match=r"B03_10m\.jp2: footprint .* differs"):
        safe_reader.open_product(str(safe))


def test_band_with_another_crs_is_an_error(tmp_path):
    safe = make_safe(tmp_path, extras=False)
    path = img(safe, 20, "B06")
    path.unlink()
    from tests.fixtures import write_raster
    from tests.data_prep.s2_fixtures import ORIGIN
    write_raster(path, np.full((30, 30), 1600, np.uint16), crs="EPSG:32632", origin=ORIGIN, res=20,
                 driver="JP2OpenJPEG", QUALITY=100, REVERSIBLE="YES")
    with pytest.raises(ProductError, match=r"B06_20m\.jp2: CRS EPSG:32632 differs"):
        safe_reader.open_product(str(safe))


def test_truncated_jp2_is_an_error_when_read(tmp_path):
    safe = make_safe(tmp_path, extras=False)
    path = img(safe, 10, "B04")
    rng = np.random.default_rng(0)            # incompressible content, so the codestream is large
    write_jp2(path, rng.integers(1000, 3000, (N10, N10)).astype(np.uint16), 10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ProductError, match=r"B04_10m\.jp2: (read failed|cannot read raster)"):
        scene = safe_reader.open_product(str(safe))
        scene.read(FULL)


def test_missing_band_without_a_usable_fallback_is_an_error(tmp_path):
    safe = make_safe(tmp_path, extras=False)
    img(safe, 60, "B09").unlink()             # B09 exists only at 60 m
    with pytest.raises(ProductError, match=r"R60m lacks B09.*no file for B09"):
        safe_reader.open_product(str(safe))


# --- discovery -------------------------------------------------------------------------------

def test_match_claims_safe_folders_and_s2_zips_only():
    m = safe_reader.match
    assert m(f"/a/{product_name()}.SAFE", {"MTD_MSIL2A.xml", "GRANULE", "manifest.safe"}, True)
    assert m(f"/a/{product_name('L1C')}.SAFE", {"MTD_MSIL1C.xml", "GRANULE"}, True)
    assert not m(f"/a/{product_name()}.SAFE", {"GRANULE", "manifest.safe"}, True)
    assert not m("/a/GRANULE", {"L2A_T33UUP_A032465_20230601T100559"}, True)
    assert m(f"/a/{product_name()}.SAFE.zip", set(), False) and m(f"/a/{product_name('L1C')}.zip", set(), False)
    assert not m("/a/S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457.SAFE.zip", set(), False)
    assert not m("/a/S2A_MSIL2A_20200101.tif", set(), False) and not m("/a/archive.zip", set(), False)


def test_walker_finds_a_safe_a_zipped_safe_and_a_band_folder_once_each(tmp_path):
    root = tmp_path / "archive"
    safe = make_safe(root / "safes", baseline="05.10", extras=False)
    other = make_safe(tmp_path / "staging", level="L1C", baseline="04.00")
    z = zip_safe(other, root / "zips" / f"{other.name}.zip")
    mt = make_band_folder(root / "major_tom" / "0U", "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419")
    found, unknown = find_products(str(root))
    assert sorted(found) == sorted([("sentinel2_safe", str(safe)), ("sentinel2_safe", str(z)),
                                    ("sentinel2_folder", str(mt))])
    assert unknown == []
    scenes = [open_product(k, p) for k, p in sorted(found)]
    assert sorted((s.sensor, s.gsd_m) for s in scenes) == [("sentinel2_l1c", 10.0), ("sentinel2_l2a", 10.0),
                                                          ("sentinel2_l2a", 10.0)]


def test_files_list_every_file_read_for_checksums(tmp_path):
    safe = make_safe(tmp_path, extras=False)
    scene = safe_reader.open_product(str(safe))
    assert scene.files[0].endswith("MTD_MSIL2A.xml") and len(scene.files) == 1 + 12 + 1
    assert scene.files[-1].endswith("_SCL_20m.jp2")
    for f in scene.files:
        with open(f, "rb"):
            pass
    with rasterio.open(scene.files[1]) as src:
        assert src.driver == "JP2OpenJPEG"

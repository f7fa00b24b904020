"""The EnMAP reader: real HySpecNet-11k patches, generated delivered L2A products (GeoTIFF, ENVI, ZIP)."""
import shutil

import numpy as np
import pytest
import rasterio

from data_prep.sources import ProductError, Window, find_products
from data_prep.sources import enmap
from tests.conftest import DATA, needs_shared
from tests.data_prep.sar_hsi_fixtures import (EMPTY_BANDS, ENMAP_NAME, FLAGS, HYSPECNET, HYSPECNET_PATCH,
                                              NODATA_PIXEL, SSL4EO_S1, TORCHGEO_KEEP, copy_hyspecnet_patch,
                                              enmap_band_table, enmap_dn, metadata_xml, rewrite_layer,
                                              write_enmap_product, write_quality_layers, zip_product)
from tests.fixtures import write_raster


def _full(scene):
    return scene.read(Window(0, 0, scene.height, scene.width))


def _numbers(scene):
    return [int(b[1:]) for b in scene.bands]


# ----------------------------------------------------------------------------- HySpecNet-11k (real)

@pytest.mark.parametrize("copy", ["bundled", "full"])
def test_hyspecnet_patch_all_224_wavelengths_and_reflectance(copy):
    # bundled: a 64 px window of the 128 px patch; full: the whole patch from ../shared (optional)
    patch, side = (HYSPECNET_PATCH, 64) if copy == "bundled" else \
        (needs_shared(*HYSPECNET_PATCH.relative_to(DATA).parts), 128)
    scene = enmap.open_product(str(patch), drop_water_vapour=False, drop_empty_bands=False)
    wl = np.asarray(scene.wavelengths_nm)
    assert len(wl) == 224 and np.all(np.diff(wl) > 0) and 415 < wl[0] < 425 and 2435 < wl[-1] < 2450
    assert scene.sensor == "enmap" and scene.units == "surface reflectance" and scene.gsd_m == 30.0
    assert scene.time == "2022-11-03T16:24:38Z" and scene.crs == "EPSG:32618" and scene.dtype == "int16"
    assert (scene.height, scene.width) == (side, side)
    rad = scene.radiometry
    assert rad["gain_source"].startswith("HySpecNet-11k convention") and scene.scale == [1e-4] * 224
    assert rad["wavelength_source"].startswith("nominal EnMAP L2A")
    with rasterio.open(next(patch.glob("*-SPECTRAL_IMAGE.TIF"))) as src:
        raw = src.read(window=((50, 60), (50, 60)))
    stored, valid = scene.read(Window(50, 50, 10, 10))
    np.testing.assert_array_equal(stored, raw)
    assert not valid.any()               # 22 all-nodata bands kept: every pixel lacks them
    blue = int(np.argmin(np.abs(wl - 490)))
    refl = stored[blue, 4, 4] * scene.scale[blue] + scene.offset[blue]
    assert 0.005 < refl < 0.08           # a water patch (QL_QUALITY_CLASSES = 2): a few percent in the blue


def test_hyspecnet_default_keeps_the_202_band_selection_and_all_pixels():
    scene = enmap.open_product(str(HYSPECNET_PATCH))
    assert _numbers(scene) == TORCHGEO_KEEP and len(scene.bands) == 202
    rad = scene.radiometry
    assert [int(b[1:]) for b in rad["dropped_bands"]["water_vapour"]] == EMPTY_BANDS
    assert rad["dropped_bands"]["empty"] == [] and rad["masks"]["not_applied"] == ["QL_QUALITY_HAZE", "QL_QUALITY_SNOW"]
    stored, valid = _full(scene)
    assert valid.all() and (stored != -32768).all()
    refl = stored * np.asarray(scene.scale)[:, None, None]
    assert np.percentile(refl, 99) < 0.1 and np.percentile(refl, 1) > -0.05    # water: dark, near zero
    # without the wavelength rule the empty-band rule drops the same 22 bands
    no_wv = enmap.open_product(str(HYSPECNET_PATCH), drop_water_vapour=False)
    assert _numbers(no_wv) == TORCHGEO_KEEP and len(no_wv.radiometry["dropped_bands"]["empty"]) == 22


def test_water_vapour_windows_reproduce_the_torchgeo_selection_on_enmap_wavelengths():
    keep = [i + 1 for i, w in enumerate(enmap.ENMAP_L2A_NOMINAL_WAVELENGTHS_NM) if not enmap.in_water_vapour_window(w)]
    assert keep == TORCHGEO_KEEP
    # robust to the spectral calibration uncertainty (1 nm SWIR)
    for shift in (-2.0, 2.0):
        assert [i + 1 for i, w in enumerate(enmap.ENMAP_L2A_NOMINAL_WAVELENGTHS_NM)
                if not enmap.in_water_vapour_window(w + shift)] == TORCHGEO_KEEP


def test_hyspecnet_quality_layers_invalidate_flagged_pixels(tmp_path):
    patch = copy_hyspecnet_patch(tmp_path)

    def flag(name, rows, cols, value=1, layers=None):
        path = next(patch.glob(f"*-{name}.TIF"))

        def edit(a):
            a[slice(None) if layers is None else layers, rows, cols] = value
            return a
        rewrite_layer(path, edit)

    flag("QL_QUALITY_CLOUD", slice(0, 10), slice(0, 10))
    flag("QL_QUALITY_CLOUDSHADOW", 20, 30)
    flag("QL_QUALITY_CIRRUS", 40, 40, value=2)
    flag("QL_QUALITY_HAZE", 50, 50)              # haze and snow: not masked
    flag("QL_QUALITY_SNOW", 51, 51)
    flag("QL_QUALITY_CLASSES", 60, 61, value=3)  # background
    flag("QL_PIXELMASK", 62, 62)                 # every band defective
    scene = enmap.open_product(str(patch))
    _, valid = _full(scene)
    expected = np.ones((64, 64), bool)
    expected[0:10, 0:10] = False
    for r, c in [(20, 30), (40, 40), (60, 61), (62, 62)]:
        expected[r, c] = False
    np.testing.assert_array_equal(valid, expected)


def test_patch_without_any_wavelength_information_is_refused(tmp_path):
    folder = tmp_path / "patch_0001"
    write_raster(folder / "patch_0001-SPECTRAL_IMAGE.TIF", enmap_dn(12, 10), nodata=-32768, res=30.0)
    write_quality_layers(folder, "patch_0001", 12, 10)
    assert find_products(str(tmp_path))[0] == [("enmap", str(folder))]
    with pytest.raises(ProductError, match="patch_0001-SPECTRAL_IMAGE.TIF: no wavelength information"):
        enmap.open_product(str(folder))


@pytest.mark.parametrize("how", ["band_tags_nm", "envi_list_um", "descriptions"])
def test_patch_wavelengths_and_gain_from_tags(tmp_path, how):
    n = 10
    wl = [450.0 + 50 * i for i in range(n)]
    kw = {}
    if how == "band_tags_nm":
        kw["band_tags"] = [{"wavelength": str(w), "wavelength_units": "Nanometers", "fwhm": "7.5"} for w in wl]
        kw["tags"] = {"data_gain_values": "{" + ", ".join(["0.0002"] * n) + "}",
                      "ACQUISITION_START_TIME": "2023-05-01T10:11:12Z"}
    elif how == "envi_list_um":
        kw["tags"] = {"wavelength": "{" + ", ".join(f"{w / 1000:.4f}" for w in wl) + "}",
                      "wavelength_units": "Micrometers", "ACQUISITION_START_TIME": "2023-05-01T10:11:12Z"}
    else:
        kw["descriptions"] = [f"band {i + 1} ({w / 1000:.4f} Micrometers)" for i, w in enumerate(wl)]
        kw["tags"] = {"ACQUISITION_START_TIME": "2023-05-01T10:11:12Z"}
    folder = tmp_path / "scene7"
    write_raster(folder / "scene7-SPECTRAL_IMAGE.TIF", enmap_dn(12, n), nodata=-32768, res=30.0, **kw)
    write_quality_layers(folder, "scene7", 12, n)
    scene = enmap.open_product(str(folder))
    np.testing.assert_allclose(scene.wavelengths_nm, wl, atol=1e-6)
    assert scene.time == "2023-05-01T10:11:12Z" and len(scene.bands) == n
    if how == "band_tags_nm":
        assert scene.scale == [0.0002] * n and scene.radiometry["gain_source"] == "ENVI 'data gain values'"
        assert scene.radiometry["fwhm_nm"] == [7.5] * n
    else:
        assert scene.scale == [1e-4] * n and scene.radiometry["gain_source"].startswith("HySpecNet-11k")


# ----------------------------------------------------------------------------- delivered L2A products

@pytest.fixture(scope="module")
def delivered(tmp_path_factory):
    root = tmp_path_factory.mktemp("enmap")
    tif = write_enmap_product(root / "tif")
    envi = write_enmap_product(root / "envi", fmt="ENVI")
    z = zip_product(tif, root / "zip" / f"{ENMAP_NAME}.ZIP")
    return {"tif": tif, "envi": envi, "zip": z}


def test_delivered_product_reflectance_is_dn_times_gain_plus_offset(delivered):
    scene = enmap.open_product(str(delivered["tif"]))
    table = enmap_band_table()
    keep = _numbers(scene)
    assert keep == TORCHGEO_KEEP
    assert scene.radiometry["gain_source"].startswith("METADATA.XML") and scene.time == "2022-07-24T10:45:26Z"
    assert scene.wavelengths_nm == pytest.approx([round(table["wavelengths"][b - 1], 3) for b in keep])
    assert scene.scale == pytest.approx([table["gains"][b - 1] for b in keep], rel=1e-12)
    assert scene.offset == pytest.approx([table["offsets"][b - 1] for b in keep], abs=1e-15)
    assert scene.radiometry["fwhm_nm"][0] == 6.5 and scene.gsd_m == 30.0 and scene.crs == "EPSG:32633"
    stored, valid = _full(scene)
    dn = enmap_dn()
    for b in (1, 100, 200, 224):
        i = keep.index(b)
        for r, c in [(4, 4), (11, 0)]:
            assert stored[i, r, c] == dn[b - 1, r, c]
            refl = stored[i, r, c] * scene.scale[i] + scene.offset[i]
            assert refl == pytest.approx(dn[b - 1, r, c] * table["gains"][b - 1] + table["offsets"][b - 1])
    expected = np.ones((12, 12), bool)
    for q in ("QL_QUALITY_CLOUD", "QL_QUALITY_CLOUDSHADOW", "QL_QUALITY_CIRRUS", "QL_PIXELMASK", "QL_QUALITY_CLASSES"):
        expected[FLAGS[q]] = False
    expected[NODATA_PIXEL] = False
    np.testing.assert_array_equal(valid, expected)       # haze (5,5), snow (6,6), 40-band pixelmask (10,10) valid


def test_geotiff_envi_and_zip_forms_read_identically(delivered):
    scenes = {k: enmap.open_product(str(p)) for k, p in delivered.items()}
    ref_stored, ref_valid = _full(scenes["tif"])
    for k, s in scenes.items():
        stored, valid = _full(s)
        np.testing.assert_array_equal(stored, ref_stored, err_msg=k)
        np.testing.assert_array_equal(valid, ref_valid, err_msg=k)
        assert (s.bands, s.wavelengths_nm, s.scale, s.offset, s.time, s.transform) == \
               (scenes["tif"].bands, scenes["tif"].wavelengths_nm, scenes["tif"].scale, scenes["tif"].offset,
                scenes["tif"].time, scenes["tif"].transform), k
    assert scenes["zip"].files == [str(delivered["zip"])] and scenes["zip"].product_id == ENMAP_NAME
    assert any(f.endswith("-SPECTRAL_IMAGE.HDR") for f in scenes["envi"].files)
    assert any(f.endswith("-METADATA.XML") for f in scenes["tif"].files)


def test_xml_missing_a_gain_names_the_field(tmp_path):
    xml = metadata_xml(enmap_band_table(), omit=(17, "GainOfBand"))
    folder = write_enmap_product(tmp_path, xml=xml)
    with pytest.raises(ProductError, match=r"METADATA\.XML: missing GainOfBand for band 17 "
                                           r"\(specific/bandCharacterisation/bandID\[@number='17'\]/GainOfBand\)"):
        enmap.open_product(str(folder))
    no_time = metadata_xml(enmap_band_table()).replace("<startTime>2022-07-24T10:45:26.123456Z</startTime>", "")
    (folder / f"{ENMAP_NAME}-METADATA.XML").write_text(no_time)
    with pytest.raises(ProductError, match="missing base/temporalCoverage/startTime"):
        enmap.open_product(str(folder))


def test_mismatched_quality_layer_and_missing_cloud_layer_are_refused(tmp_path):
    folder = write_enmap_product(tmp_path / "a", shape_override={"QL_QUALITY_CLOUD": 6})
    with pytest.raises(ProductError, match="QL_QUALITY_CLOUD.TIF: quality layer is 6x6 pixels.*mismatched shape"):
        enmap.open_product(str(folder))
    folder = write_enmap_product(tmp_path / "b")
    (folder / f"{ENMAP_NAME}-QL_QUALITY_CIRRUS.TIF").unlink()
    with pytest.raises(ProductError, match="missing quality layer.*QL_QUALITY_CIRRUS"):
        enmap.open_product(str(folder))


def test_xml_band_count_must_match_the_image(tmp_path):
    small = {k: v[:10] for k, v in enmap_band_table().items()}
    folder = write_enmap_product(tmp_path, xml=metadata_xml(small))
    with pytest.raises(ProductError, match="10 bands in specific/bandCharacterisation.*has 224"):
        enmap.open_product(str(folder))


# ----------------------------------------------------------------------------- discovery

def test_walker_finds_each_product_once_with_its_kind(tmp_path, delivered):
    root = tmp_path / "archive"
    s1_product = sorted(SSL4EO_S1.iterdir())[0]
    shutil.copytree(s1_product, root / "s1" / s1_product.name)
    shutil.copytree(delivered["tif"], root / "enmap" / ENMAP_NAME)
    (root / "zips").mkdir()
    shutil.copy(delivered["zip"], root / "zips" / delivered["zip"].name)
    copy_hyspecnet_patch(root / "hyspecnet")
    flat = root / "flat"                       # two patches side by side: each spectral image is a product
    flat.mkdir()
    for p in sorted(HYSPECNET.iterdir()):
        for f in p.iterdir():
            shutil.copy(f, flat / f.name)
    found, unknown = find_products(str(root))
    assert sorted(found) == sorted([
        ("sentinel1", str(root / "s1" / s1_product.name)),
        ("enmap", str(root / "enmap" / ENMAP_NAME)),
        ("enmap", str(root / "zips" / delivered["zip"].name)),
        ("enmap", str(root / "hyspecnet" / HYSPECNET_PATCH.name)),
    ] + [("enmap", str(flat / next(p.glob("*-SPECTRAL_IMAGE.TIF")).name)) for p in sorted(HYSPECNET.iterdir())])
    # only the flat folder's loose QL files are left unclaimed (they belong to the two patches)
    assert [u[0] for u in unknown] == [str(flat)]
    flat_scene = enmap.open_product(str(flat / next(HYSPECNET_PATCH.glob("*-SPECTRAL_IMAGE.TIF")).name))
    assert len(flat_scene.bands) == 202 and flat_scene.product_id == HYSPECNET_PATCH.name


def test_prep_run_writes_enmap_and_sentinel1_samples(tmp_path):
    import json

    from data_prep.cli import main
    from tests.conftest import prep_recipe
    from tests.data_prep.sar_hsi_fixtures import BEN_S1

    out = tmp_path / "out"
    assert main(["run", str(prep_recipe(tmp_path, [HYSPECNET_PATCH, BEN_S1], out, size=32))]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted((p["sensor"], p["outcome"], p["chips"]) for p in manifest["products"]) == [
        ("enmap", "written", 4), ("sentinel1", "written", 9)]       # 64 px and 120 px patches
    sensors = manifest["sensors"]
    assert len(sensors["enmap"]["bands"]) == 202 and sensors["enmap"]["units"] == "surface reflectance"
    assert sensors["sentinel1"]["bands"] == ["VV", "VH"] and sensors["sentinel1"]["units"] == "backscatter dB"
    assert 0.0 < sensors["enmap"]["stats"]["B016"]["mean"] < 0.06           # water, ~491 nm
    assert -15 < sensors["sentinel1"]["stats"]["VV"]["mean"] < -8
    assert main(["verify", str(out)]) == 0

import numpy as np
import pytest

from data_prep.config import ChipSpec
from data_prep.recipe import ConfigError, load_recipe
from data_prep.regrid import coarsen
from data_prep.sources import ProductError, Window, open_product
from data_prep.config import PrepConfig
from tests.conftest import SSL4EO_S1, SSL4EO_S2A


def test_coarsen_is_the_mean_of_valid_pixels():
    scene = open_product("sentinel2_folder", str(sorted(SSL4EO_S2A.iterdir())[0]))
    coarse = coarsen(scene, 20.0)
    assert (coarse.gsd_m, coarse.height, coarse.width, coarse.transform[0]) == (20.0, 132, 132, scene.transform[0] * 2)
    fine, fvalid = scene.read(Window(0, 0, 8, 8))
    got, valid = coarse.read(Window(0, 0, 4, 4))
    phys = fine.astype(float) * np.asarray(scene.scale)[:, None, None] + np.asarray(scene.offset)[:, None, None]
    expect = phys.reshape(12, 4, 2, 4, 2).mean(axis=(2, 4))
    back = got * np.asarray(scene.scale)[:, None, None] + np.asarray(scene.offset)[:, None, None]
    assert np.abs(back - expect).max() <= 0.5e-4 + 1e-9 and valid.all()
    assert "coarsened from 10 m to 20 m" in coarse.radiometry["notes"][-1]


def test_sar_is_averaged_in_linear_power():
    scene = open_product("sentinel1", str(sorted(SSL4EO_S1.iterdir())[0]))
    fine, _ = scene.read(Window(0, 0, 2, 2))
    got, _ = coarsen(scene, scene.gsd_m * 2).read(Window(0, 0, 1, 1))
    db = fine.astype(float) * 0.01
    expect = 10 * np.log10((10 ** (db / 10)).mean(axis=(1, 2)))
    assert np.allclose(got[:, 0, 0] * 0.01, expect, atol=0.006)


def test_finer_or_fractional_targets_are_refused():
    scene = open_product("sentinel2_folder", str(sorted(SSL4EO_S2A.iterdir())[0]))
    for gsd in (5.0, 15.0):
        with pytest.raises(ProductError, match="not an integer multiple"):
            coarsen(scene, gsd)


def test_per_sensor_chip_settings():
    cfg = load_recipe(PrepConfig, None, ["sources=[{paths: [x]}]", "chips.size=64",
                                          "chips.per_sensor={sentinel1: {size: 32, gsd_m: 20}}"])
    assert cfg.chips.for_sensor("sentinel1") == ChipSpec(32, 0, 0.9, 20.0)
    assert cfg.chips.for_sensor("sentinel2_l2a") == ChipSpec(64, 0, 0.9, 0.0)
    with pytest.raises(ConfigError, match="chips.per_sensor.sentinel1.sise: unknown key"):
        load_recipe(PrepConfig, None, ["sources=[{paths: [x]}]", "chips.per_sensor={sentinel1: {sise: 3}}"])

"""ndvi_cover on synthetic reflectance with known NDVI."""
import numpy as np

from finetune.labels import LABELS, ndvi, ndvi_cover

BANDS = ["B02", "B04", "B08"]


def chip(ndvi_values, h=4, w=4):
    """(3, h, w) reflectance whose NDVI per pixel is the given (h, w) array (red fixed at 0.1)."""
    v = np.asarray(ndvi_values, np.float64)
    red = np.full((h, w), 0.1)
    nir = red * (1 + v) / (1 - v)          # inverts NDVI = (nir - red) / (nir + red)
    return np.stack([np.full((h, w), 0.05), red, nir]).astype(np.float32)


def test_ndvi_formula():
    x = np.zeros((3, 1, 2), np.float32)
    x[1] = [[0.1, 0.2]]
    x[2] = [[0.3, 0.2]]
    assert np.allclose(ndvi(x, BANDS), [[0.5, 0.0]])


def test_majority_class_and_edges():
    values = np.full((4, 4), 0.1)   # bare
    values[:2] = 0.7                # 8 dense
    values[2, :3] = 0.3             # 3 sparse -> 5 bare, 3 sparse, 8 dense
    assert ndvi_cover(chip(values), np.ones((4, 4), bool), BANDS) == 2
    # exactly 0.2 is bare (<= 0.2), exactly 0.5 is sparse (<= 0.5); the reflectances are exact
    # binary fractions so NDVI hits the edges exactly: 0.1875 / 0.9375 = 0.2, 0.5 / 1.0 = 0.5
    def pair(red, nir):
        return np.stack([np.full((2, 2), 0.05), np.full((2, 2), red), np.full((2, 2), nir)]).astype(np.float32)

    assert ndvi(pair(0.375, 0.5625), BANDS)[0, 0] == 0.2
    assert ndvi_cover(pair(0.375, 0.5625), np.ones((2, 2), bool), BANDS) == 0
    assert ndvi_cover(pair(0.25, 0.75), np.ones((2, 2), bool), BANDS) == 1


def test_invalid_pixels_do_not_vote():
    values = np.full((4, 4), 0.7)
    values[0, 0] = 0.3
    valid = np.zeros((4, 4), bool)
    valid[0, 0] = True               # only the sparse pixel is valid
    assert ndvi_cover(chip(values), valid, BANDS) == 1
    assert ndvi_cover(chip(values), np.zeros((4, 4), bool), BANDS) == -1


def test_non_positive_denominator_is_not_a_vote():
    x = chip(np.full((2, 2), 0.7), 2, 2)
    x[1, 0, :] = -0.05               # B04 + B08 <= 0 on the first row (offset -0.1 data)
    x[2, 0, :] = 0.0
    assert np.isnan(ndvi(x, BANDS)[0]).all()
    assert ndvi_cover(x, np.ones((2, 2), bool), BANDS) == 2


def test_registry_is_honest():
    src = LABELS["ndvi_cover"]
    assert src.classes == ("bare_or_built", "sparse_vegetation", "dense_vegetation")
    assert "NOT a benchmark" in src.description

import numpy as np
import pytest

from data_prep.stats import BandHistogram, DatasetStats


def _sample(values, valid, offset=-0.1, sensor="s"):
    img = np.asarray(values, np.uint16).reshape(1, 1, *np.shape(values))
    return {"sensor": sensor, "bands": ["B"], "image": img, "valid": np.asarray(valid).reshape(1, *np.shape(values)),
            "scale": [1e-4], "offset": [offset]}


def test_summary_matches_numpy_on_valid_pixels_only():
    rng = np.random.default_rng(0)
    dn = rng.integers(1000, 5000, size=(64, 64))
    valid = rng.random((64, 64)) > 0.3
    stats = DatasetStats()
    stats.add_sample(_sample(dn, valid))
    s = stats.summary()["s"]["B"]
    phys = (dn[valid].astype(np.float64) - 1000) / 10000
    assert s["count"] == valid.sum()
    np.testing.assert_allclose([s["mean"], s["std"], s["min"], s["max"]],
                               [phys.mean(), phys.std(), phys.min(), phys.max()], rtol=1e-9, atol=1e-12)
    # percentiles are exact order statistics (the inverted-CDF definition)
    assert s["p1"] == pytest.approx(np.percentile(phys, 1, method="inverted_cdf"), abs=1e-12)
    assert s["p99"] == pytest.approx(np.percentile(phys, 99, method="inverted_cdf"), abs=1e-12)


def test_merge_is_exact_and_order_free():
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 20000, size=(16, 16)) for _ in range(5)]
    whole = DatasetStats()
    for p in parts:
        whole.add_sample(_sample(p, np.ones_like(p, bool)))
    merged = DatasetStats()
    for p in reversed(parts):                      # e.g. one worker per product, any order
        one = DatasetStats()
        one.add_sample(_sample(p, np.ones_like(p, bool)))
        merged.merge(one)
    assert merged.summary() == whole.summary()
    np.testing.assert_array_equal(merged.sensors["s"]["B"].counts, whole.sensors["s"]["B"].counts)


def test_offsets_of_different_products_share_one_physical_grid():
    # the same reflectance stored with (N0400: DN=1500, offset -0.1) and (old: DN=500, offset 0)
    stats = DatasetStats()
    stats.add_sample(_sample([[1500]], [[True]], offset=-0.1))
    stats.add_sample(_sample([[500]], [[True]], offset=0.0))
    s = stats.summary()["s"]["B"]
    assert s["count"] == 2 and s["min"] == s["max"] == 0.05 and s["std"] == 0


def test_empty_histogram():
    assert BandHistogram(1e-4).summary()["count"] == 0

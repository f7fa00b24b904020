import numpy as np
import pytest

from data_prep.stats import BandStats, DatasetStats


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
    key = (1e-4, -0.1)
    np.testing.assert_array_equal(merged.sensors["s"]["B"].groups[key].counts, whole.sensors["s"]["B"].groups[key].counts)


def test_offsets_of_different_products_share_one_physical_grid():
    # the same reflectance stored with (N0400: DN=1500, offset -0.1) and (old: DN=500, offset 0)
    stats = DatasetStats()
    stats.add_sample(_sample([[1500]], [[True]], offset=-0.1))
    stats.add_sample(_sample([[500]], [[True]], offset=0.0))
    s = stats.summary()["s"]["B"]
    assert s["count"] == 2 and s["min"] == pytest.approx(0.05, abs=1e-15) == s["max"] and s["std"] < 1e-12


def test_empty_histogram():
    assert BandStats().summary()["count"] == 0


def test_exact_when_offset_is_not_a_multiple_of_the_scale():
    # Landsat C2 L2: 2.75e-5 * DN - 0.2; -0.2 is not a whole number of 2.75e-5 steps
    rng = np.random.default_rng(2)
    dn = rng.integers(7273, 43636, size=(32, 32))
    stats = DatasetStats()
    img = dn.astype(np.uint16).reshape(1, 1, 32, 32)
    stats.add_sample({"sensor": "l", "bands": ["B"], "image": img, "valid": np.ones((1, 32, 32), bool),
                      "scale": [2.75e-5], "offset": [-0.2]})
    s = stats.summary()["l"]["B"]
    phys = dn.astype(np.float64) * 2.75e-5 - 0.2
    assert s["mean"] == pytest.approx(phys.mean(), abs=1e-12) and s["min"] == pytest.approx(phys.min(), abs=1e-15)
    assert s["p99"] == pytest.approx(np.percentile(phys, 99, method="inverted_cdf"), abs=1e-15)


def test_serialised_stats_merge_exactly():
    from data_prep.stats import stats_from_bytes, stats_to_bytes
    rng = np.random.default_rng(3)
    a, b = DatasetStats(), DatasetStats()
    a.add_sample(_sample(rng.integers(1000, 9000, (8, 8)), np.ones((8, 8), bool)))
    b.add_sample(_sample(rng.integers(0, 900, (8, 8)), np.ones((8, 8), bool), offset=0.0))
    both = DatasetStats()
    both.merge(a)
    both.merge(b)
    again = stats_from_bytes(stats_to_bytes(a))
    again.merge(stats_from_bytes(stats_to_bytes(b)))
    assert again.summary() == both.summary()

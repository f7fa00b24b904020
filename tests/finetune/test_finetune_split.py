"""Spatial-block split: no block on both sides, deterministic, clear errors."""
import numpy as np
import pytest

from finetune import FinetuneError
from finetune.data import block_id, check_split, normalization_for, split_blocks


def utm_chip(x, y, product="P1", crs="EPSG:32633"):
    return {"transform": [10.0, 0.0, x, 0.0, -10.0, y], "crs": crs, "product_ids": [product]}


def test_block_ids_group_neighbours():
    a, b = block_id(utm_chip(1000, 5000), 1280), block_id(utm_chip(1200, 5000), 1280)
    c = block_id(utm_chip(2560, 5000), 1280)
    assert a == b != c
    assert block_id(utm_chip(1000, 5000, product="P2"), 1280) != a
    assert block_id(utm_chip(1000, 5000, crs="EPSG:32632"), 1280) != a


def test_geographic_crs_uses_metres():
    # 0.003 deg of longitude at 30 N is ~290 m: same 1280 m block; 0.03 deg (~2.9 km) is not
    base = {"transform": [1e-4, 0, 73.290, 0, -1e-4, 30.47], "crs": "EPSG:4326", "product_ids": ["P"]}
    near = {**base, "transform": [1e-4, 0, 73.2910, 0, -1e-4, 30.47]}
    far = {**base, "transform": [1e-4, 0, 73.320, 0, -1e-4, 30.47]}
    assert block_id(base, 1280) == block_id(near, 1280) != block_id(far, 1280)


def test_no_block_in_both_sets():
    rng = np.random.default_rng(0)
    chips = [utm_chip(*xy) for xy in rng.uniform(0, 20_000, size=(500, 2))]
    blocks = [block_id(c, 1280) for c in chips]
    is_test = split_blocks(blocks, 0.25, seed=3)
    train_blocks = {b for b, t in zip(blocks, is_test) if not t}
    test_blocks = {b for b, t in zip(blocks, is_test) if t}
    assert train_blocks and test_blocks and not train_blocks & test_blocks
    assert 0.1 < is_test.mean() < 0.4
    # a block's side depends only on (seed, block), not on order or the other chips
    assert (split_blocks(blocks[::-1], 0.25, 3) == is_test[::-1]).all()
    assert (split_blocks(blocks[:50], 0.25, 3) == is_test[:50]).all()
    assert (split_blocks(blocks, 0.25, 4) != is_test).any()


def test_check_split_errors():
    classes = ("a", "b")
    check_split(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1], bool), classes)
    with pytest.raises(FinetuneError, match="test split empty"):
        check_split(np.array([0, 1]), np.array([0, 0], bool), classes)
    with pytest.raises(FinetuneError, match="b occur only in the train"):
        check_split(np.array([0, 1, 0]), np.array([0, 0, 1], bool), classes)


def test_normalization_lookup_and_errors():
    cfg = {"normalization": {"s2": {"bands": ["B02", "B04", "B08"], "wavelengths_nm": [490, 665, 833],
                                    "mean": [1.0, 2.0, 3.0], "std": [0.1, 0.2, 0.3]}}}
    mean, std = normalization_for(cfg, "s2", ["B08", "B04"], [833, 665])
    assert mean.tolist() == [3.0, 2.0] and std.tolist() == pytest.approx([0.3, 0.2])
    with pytest.raises(FinetuneError, match="sensor 'landsat'"):
        normalization_for(cfg, "landsat", ["B04"], [665])
    with pytest.raises(FinetuneError, match="no statistics for B11"):
        normalization_for(cfg, "s2", ["B04", "B11"], [665, 1610])
    with pytest.raises(FinetuneError, match="different wavelengths"):
        normalization_for(cfg, "s2", ["B04"], [560])

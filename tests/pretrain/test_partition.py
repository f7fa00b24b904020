import itertools

import pytest

from pretrain.data.partition import shards_for_worker


@pytest.mark.parametrize("n_shards, world, workers", [(10, 2, 2), (3, 2, 4), (16, 4, 2), (1, 2, 1), (7, 3, 1)])
def test_equal_counts_and_full_coverage(n_shards, world, workers):
    for epoch in range(3):
        lists = [shards_for_worker(n_shards, r, world, w, workers, epoch, seed=5)
                 for r, w in itertools.product(range(world), range(workers))]
        assert len({len(x) for x in lists}) == 1                       # no rank runs dry before another
        assert set(itertools.chain(*lists)) == set(range(n_shards))   # every shard read each epoch
        if n_shards % (world * workers) == 0:
            assert sorted(itertools.chain(*lists)) == list(range(n_shards))  # exactly once when it divides


def test_seeded_and_changes_with_epoch():
    a = [shards_for_worker(100, 0, 2, 0, 2, 0, seed=1) for _ in range(2)]
    assert a[0] == a[1]
    assert shards_for_worker(100, 0, 2, 0, 2, 1, seed=1) != a[0]
    assert shards_for_worker(100, 0, 2, 0, 2, 0, seed=2) != a[0]


def test_bad_ids():
    with pytest.raises(ValueError):
        shards_for_worker(0, 0, 1, 0, 1, 0, 0)
    with pytest.raises(ValueError):
        shards_for_worker(4, 2, 2, 0, 1, 0, 0)

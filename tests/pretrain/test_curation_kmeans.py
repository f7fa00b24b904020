"""k-means, hierarchy and balanced sampling as pure functions."""
import pytest
import torch

from pretrain.curation.balanced import balanced_sample, cap_split
from pretrain.curation.kmeans import hierarchical_kmeans, kmeans


def _blobs(sizes, dim=8, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=g) * 5
    x = torch.cat([c + spread * torch.randn(n, dim, generator=g) for c, n in zip(centres, sizes)])
    mode = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return x, mode


def test_kmeans_finds_separated_blobs_and_is_deterministic():
    x, mode = _blobs([50, 40, 30, 20])
    c1, l1 = kmeans(x, 4, seed=3)
    c2, l2 = kmeans(x, 4, seed=3)
    assert torch.equal(c1, c2) and torch.equal(l1, l2)
    # every blob is one cluster (a bijection between modes and labels)
    pairs = {(int(m), int(l)) for m, l in zip(mode, l1)}
    assert len(pairs) == 4 and len({m for m, _ in pairs}) == 4 and len({l for _, l in pairs}) == 4


def test_kmeans_more_clusters_than_points():
    c, lab = kmeans(torch.randn(3, 2), 10)
    assert c.shape == (3, 2) and lab.shape == (3,)


def test_hierarchy_shapes():
    x, _ = _blobs([100, 60, 30, 10], dim=4)
    h = hierarchical_kmeans(x, [16, 4], seed=1, resample_steps=3)
    assert h.centroids[0].shape == (16, 4) and h.labels[0].shape == (200,)
    assert h.centroids[1].shape == (4, 4) and h.labels[1].shape == (16,)


def test_cap_split():
    g = torch.Generator().manual_seed(0)
    assert cap_split([90, 5, 5], 30, g) == [20, 5, 5]
    assert sum(cap_split([10, 10, 10], 20, g)) == 20
    assert cap_split([3, 4], 100, g) == [3, 4]


def test_balanced_sampling_rebalances_a_dominant_mode():
    # 90 % near-identical "ocean" points, three rare modes
    x, mode = _blobs([900, 40, 35, 25], dim=8)
    h = hierarchical_kmeans(x, [40, 4], seed=0, resample_steps=2)
    keep = balanced_sample(h, x, target=200, eta=0.0, seed=0)
    assert keep.numel() == 200 and torch.equal(keep, torch.unique(keep))
    share = torch.bincount(mode[keep], minlength=4).float() / 200
    assert share[0] <= 0.5                     # from 90 % of the data to at most half of the kept set (cap 100)
    assert (torch.bincount(mode[keep], minlength=4)[1:] == torch.tensor([40, 35, 25])).all()  # rare: all kept
    assert torch.equal(keep, balanced_sample(h, x, target=200, eta=0.0, seed=0))


def test_eta_moves_picks_towards_the_centroid():
    x, _ = _blobs([500], dim=4, spread=1.0)
    h = hierarchical_kmeans(x, [1], resample_steps=0)
    near = balanced_sample(h, x, 50, eta=1.0)
    spread = balanced_sample(h, x, 50, eta=0.0)
    d = ((x - h.centroids[0][0]) ** 2).sum(1)
    assert d[near].max() <= torch.sort(d).values[49] + 1e-6     # exactly the 50 nearest
    assert d[spread].mean() > 2 * d[near].mean()


def test_loss_curation_drops_below_mean_samples_and_keeps_its_state():
    from pretrain.curation.loss_mode import LossCuration
    lc = LossCuration(ratio=0.99, stop_fraction=1.0, seed=0, rank=0)
    batch = {"key": [f"k{i}" for i in range(8)], "image": torch.arange(8.0)[:, None], "sensor": "s2"}
    first = lc.plan(batch, step=0, total_steps=10)
    assert first["key"] == batch["key"] and torch.equal(first["sample_weight"], torch.ones(8))
    lc.update(first, {"per_sample_loss": torch.tensor([0.1, 0.1, 0.1, 0.1, 5, 5, 5, 5])})
    second = lc.plan(batch, step=1, total_steps=10)
    assert set(second["key"]) >= {"k4", "k5", "k6", "k7"} and len(second["key"]) < 8
    assert torch.equal(second["image"][:, 0], torch.tensor([float(k[1]) for k in second["key"]]))
    again = LossCuration(ratio=0.99, stop_fraction=1.0, seed=0, rank=0)
    again.load_state_dict(lc.state_dict())
    assert again.plan(batch, step=1, total_steps=10)["key"] == second["key"]    # same draws after a resume
    with pytest.raises(ValueError, match="per_sample_loss"):
        lc.update(second, {"loss": torch.tensor(1.0)})

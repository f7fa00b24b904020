"""The cross-validated logistic probe, the input-statistics features and repeated splits."""
import numpy as np
import pytest
import torch

from finetune import FinetuneError
from finetune.baselines import band_statistics
from finetune.data import build_task
from finetune.datasets import Raw
from finetune.probe import fit_logistic, logistic_probe, stratified_folds


def blobs(n_per_class=20, k=4, d=30, sep=1.0, seed=0):
    """k Gaussian classes in d dims, centres `sep` apart along random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    y = np.repeat(np.arange(k), n_per_class)
    return centres[y] + rng.normal(size=(len(y), d)), y


def test_fit_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = blobs()
    x = (x - x.mean(0)) / x.std(0)
    for l2 in (0.01, 1.0):
        w, b, _ = fit_logistic(torch.tensor(x), torch.tensor(y), 4, [np.arange(len(y))], [l2], max_iter=500)
        ref = sklearn.LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=10000).fit(x, y)
        p = torch.softmax(torch.tensor(x) @ w[0] + b[0], 1).numpy()
        assert np.abs(p - ref.predict_proba(x)).max() < 1e-4


def test_problems_solved_together_equal_alone():
    x, y = blobs(d=60)   # d > n per fold: the row-space basis matters
    x, y = torch.tensor(x), torch.tensor(y)
    rows = [np.arange(0, 80, 2), np.arange(80)]
    w, b, _ = fit_logistic(x, y, 4, rows, [0.1, 3.0], max_iter=300)
    for p in range(2):
        w1, b1, _ = fit_logistic(x, y, 4, [rows[p]], [[0.1, 3.0][p]], max_iter=300)
        assert torch.allclose(x @ w[p] + b[p], x @ w1[0] + b1[0], atol=1e-3)


def test_cv_finds_the_weak_penalty_a_fixed_strong_one_misses():
    # The class is a small offset of x1 against x2, both dominated by a shared nuisance z: only a
    # weakly penalised model learns x1 - x2; a strong penalty keeps w close to the class-mean
    # direction, which z swamps. Known answer: CV must pick l2 <= 0.01.
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 20)
    z = rng.normal(0, 3, len(y))
    x = np.stack([z + y + rng.normal(0, 0.05, len(y)), z + rng.normal(0, 0.05, len(y)),
                  *rng.normal(size=(3, len(y)))], 1)
    x = (x - x.mean(0)) / x.std(0)
    train, test = np.arange(80) % 4 != 0, np.arange(80) % 4 == 0
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    logits, info = logistic_probe(torch.tensor(x[train]), y[train], torch.tensor(x[test]), 4, grid)
    assert info["l2"] <= 0.01 and info["cv_folds"] == 5 and logits.shape == (20, 4)
    assert set(info["cv_accuracy"]) == {f"{g:g}" for g in grid}
    assert info["cv_accuracy"][f"{info['l2']:g}"] == max(info["cv_accuracy"].values())
    assert (logits.argmax(1) == y[test]).mean() >= 0.9
    strong, _ = logistic_probe(torch.tensor(x[train]), y[train], torch.tensor(x[test]), 4, [100.0])
    assert (strong.argmax(1) == y[test]).mean() < 0.6
    again, _ = logistic_probe(torch.tensor(x[train]), y[train], torch.tensor(x[test]), 4, grid)
    assert np.array_equal(logits, again)                      # deterministic
    # too few samples to cross-validate: the default strength, said so
    _, tiny = logistic_probe(torch.tensor(x[:3]), np.array([0, 1, 2]), torch.tensor(x[3:5]), 4, grid)
    assert tiny["cv_folds"] == 0 and tiny["cv_accuracy"] == {}


def test_constant_features_give_a_prior_only_model():
    # a collapsed encoder (every feature constant) must yield an intercept-only model, not a crash
    y = np.repeat(np.arange(3), [10, 6, 4])
    logits, info = logistic_probe(torch.zeros(20, 8), y, torch.zeros(5, 8), 3, [0.01, 1.0])
    assert logits.shape == (5, 3) and (logits.argmax(1) == 0).all() and info["l2"] in (0.01, 1.0)


def test_stratified_folds():
    y = np.repeat(np.arange(3), [5, 5, 10])
    fold = stratified_folds(y, 5, seed=0)
    for c in range(3):
        assert np.bincount(fold[y == c], minlength=5).tolist() == [(y == c).sum() // 5] * 5
    assert not np.array_equal(fold, stratified_folds(y, 5, seed=1))


def test_band_statistics_by_hand():
    img = np.zeros((1, 2, 2, 2), np.float32)
    img[0, 0] = [[1, 3], [5, 100]]
    img[0, 1] = [[2, 2], [2, -50]]
    valid = np.array([[[True, True], [True, False]]])     # the outlier pixel is invalid
    f = band_statistics(img, valid)
    assert f.shape == (1, 4)
    assert f[0].tolist() == pytest.approx([3.0, 2.0, np.std([1, 3, 5]), 0.0])
    assert band_statistics(img, ~np.ones_like(valid)).tolist() == [[0.0] * 4]


def raw_classes(n_per_class=8, k=4):
    rng = np.random.default_rng(0)
    n = n_per_class * k
    return Raw(kind="classification", physical=rng.random((n, 2, 4, 4), dtype=np.float32),
               valid=np.ones((n, 4, 4), bool), targets=np.repeat(np.arange(k), n_per_class),
               classes=tuple("abcd"[:k]), bands=["B04", "B08"], wavelengths_nm=[665.0, 842.0], units="reflectance",
               sensor="s2", gsd_m=np.full(n, 10.0, np.float32), keys=[f"s{i}" for i in range(n)])


def test_repeated_stratified_splits():
    task = build_task(raw_classes(), {}, split="random", test_fraction=0.375, seed=5, repeats=4)
    assert task.repeats == 4 and task.split_seeds == [5, 6, 7, 8] and task.splits.shape == (4, 32)
    tests = set()
    for r in range(4):
        t = task.with_split(r)
        assert np.bincount(t.targets[t.test_idx]).tolist() == [3] * 4    # 3 of each class's 8
        assert t.images is task.images                                   # shared, not copied
        tests.add(tuple(t.test_idx))
    assert len(tests) == 4
    # one normalisation for all splits, from every sample's pixels
    assert {n["source"] for n in task.normalization} == {"all 32 samples (pixels only; shared by the 4 splits)"}
    single = build_task(raw_classes(), {}, split="random", test_fraction=0.375, seed=5)
    assert single.repeats == 1 and np.array_equal(single.is_test, task.splits[0])
    assert {n["source"] for n in single.normalization} == {"training split"}
    raw = raw_classes()
    raw.split = ["test" if i % 4 == 0 else "train" for i in range(32)]
    with pytest.raises(FinetuneError, match="split file fixes one split"):
        build_task(raw, {}, split="file", repeats=3)

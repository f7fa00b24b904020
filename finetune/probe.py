"""The linear probe for image-level classification: L2-regularised multinomial logistic
regression, fit full-batch and deterministically, its strength chosen by stratified k-fold
cross-validation on the TRAINING samples only.

Objective for one strength l2: mean cross-entropy over the training rows + l2/2 * ||W||^2
(intercept not penalised); scikit-learn's LogisticRegression(C) is the same with
l2 = 1 / (C * n_train). Features are standardised with training statistics by the caller.

Speed on small sets (a few hundred samples): every (strength, fold) problem plus the final
fits on the whole training split are solved together in ONE torch LBFGS run. The weights are
written in the basis of the training features' right singular vectors (W = V diag(g) Z, exact:
the optimum lies in the span of the training rows) with g = 1 / sqrt(s^2/(4n) + l2), which makes
each problem's curvature close to 1 in every direction, so strong and weak strengths converge
together in ~100 iterations.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

DEFAULT_L2 = 0.1  # used when the training split is too small to cross-validate


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(n,) fold id in [0, k) per sample of labels y (n,): each class is shuffled (seeded) and
    dealt round-robin in turn, so every fold gets its share of every class."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)])
    fold = np.empty(len(y), np.int64)
    fold[order] = np.arange(len(y)) % k
    return fold


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, rows: list[np.ndarray],
                 l2: list[float], max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Solve P problems at once: problem p fits rows[p] of x (n, d) float64 / y (n,) int64 with
    strength l2[p]. Returns weights (P, d, K), intercepts (P, K) and the LBFGS iterations."""
    n, d = x.shape
    p_count = len(rows)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)        # every problem's rows are rows of x
    keep = s > s[:1] * 1e-9
    v, s2 = vh[keep].T, s[keep] ** 2 / n                     # (d, r), (r,): basis of the row space
    xv = x @ v                                                 # (n, r)
    lam = torch.as_tensor(l2, dtype=x.dtype)[None, :, None]    # (1, P, 1)
    g = 1.0 / torch.sqrt(s2[:, None, None] / 4 + lam)          # (r, P, 1) preconditioner
    w_rows = torch.zeros(n, p_count, dtype=x.dtype)            # (n, P): 1/|rows| on each problem's rows
    for p, r in enumerate(rows):
        w_rows[torch.as_tensor(r), p] = 1.0 / len(r)
    onehot = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)[:, None]   # (n, 1, K)
    z = torch.zeros(v.shape[1], p_count, num_classes, dtype=x.dtype, requires_grad=True)   # (r, P, K)
    b = torch.zeros(p_count, num_classes, dtype=x.dtype, requires_grad=True)               # (P, K)
    opt = torch.optim.LBFGS([z, b], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=1e-6,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        w = g * z
        logits = (xv @ w.reshape(len(w), p_count * num_classes)).reshape(n, p_count, num_classes) + b  # one GEMM
        ce = logits.logsumexp(-1) - (logits * onehot).sum(-1)                       # (n, P)
        loss = (w_rows * ce).sum() + 0.5 * (lam * w.pow(2)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    iters = int(opt.state[opt._params[0]].get("n_iter", 0))
    return torch.einsum("dr,rpk->pdk", v, (g * z).detach()), b.detach(), iters


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside: these kernels are tiny, and extra threads only spin-wait
    (and crawl when the machine is busy)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def logistic_probe(x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor, num_classes: int,
                   grid: list[float], folds: int = 5, seed: int = 0, max_iter: int = 100
                   ) -> tuple[np.ndarray, dict]:
    """Choose l2 from `grid` by stratified `folds`-fold CV accuracy on (x_train (n, d), y_train (n,))
    (ties: lower validation cross-entropy, then the stronger l2), refit on all n, predict x_test
    (m, d). Returns logits (m, K) and {l2, cv_accuracy per l2, folds, iterations}."""
    with one_thread():
        return _logistic_probe(x_train, y_train, x_test, num_classes, grid, folds, seed, max_iter)


def _logistic_probe(x_train, y_train, x_test, num_classes, grid, folds, seed, max_iter):
    x = torch.as_tensor(x_train, dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y_train), dtype=torch.int64)
    n = len(y)
    k = min(folds, n // 2)
    everything = np.arange(n)
    if k < 2 or len(grid) == 1:
        chosen, fold, cv = (grid[0] if len(grid) == 1 else DEFAULT_L2), None, {}
        rows, lams = [everything], [chosen]
    else:
        fold = stratified_folds(y.numpy(), k, seed)
        rows = [np.flatnonzero(fold != j) for j in range(k)] * len(grid) + [everything] * len(grid)
        lams = [lam for lam in grid for _ in range(k)] + list(grid)
    w, b, iters = fit_logistic(x, y, num_classes, rows, lams, max_iter)
    if fold is not None:
        scores = []
        for gi, lam in enumerate(grid):
            correct, ce = 0, 0.0
            for j in range(k):
                val = torch.as_tensor(np.flatnonzero(fold == j))
                logits = x[val] @ w[gi * k + j] + b[gi * k + j]
                correct += int((logits.argmax(1) == y[val]).sum())
                ce += float(torch.nn.functional.cross_entropy(logits, y[val], reduction="sum"))
            scores.append((correct / n, -ce / n, lam))
        best = max(range(len(grid)), key=lambda i: scores[i])
        chosen = grid[best]
        cv = {f"{lam:g}": round(sc[0], 4) for lam, sc in zip(grid, scores)}
        final = len(grid) * k + best
    else:
        final = 0
    logits = torch.as_tensor(x_test, dtype=torch.float64) @ w[final] + b[final]
    info = {"l2": chosen, "cv_accuracy": cv, "cv_folds": k if fold is not None else 0, "lbfgs_iterations": iters}
    return logits.float().numpy(), info

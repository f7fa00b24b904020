"""k-means and hierarchical k-means in plain torch (GPU or CPU), deterministic given a seed.

Our own implementation of the curation primitive described for SSL data curation (Vo et al.
2024; see ../shared/research/contrastive_pruning.md): k-means++ initialisation, Lloyd
iterations, and a hierarchy built bottom-up where level l+1 clusters the centroids of level l.
After the Lloyd iterations of a level, `resample_steps` rounds recompute every centroid from
only the `sample_size` input points closest to it, which pulls centroids towards dense cores
and away from the long tail (so the hierarchy does not spend its clusters on outliers).

Determinism: every random draw comes from one `torch.Generator` on the CPU seeded by `seed`;
distances are computed in float32 by blocks with fixed order, so the result on one device is
a pure function of (x, k, seed). Ties in argmin resolve to the lowest index.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 8192                     # rows per distance block: bounds memory to BLOCK x k floats


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N, K) squared euclidean distances (clamped at 0)."""
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None]).clamp_min_(0)


def assign(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point: (N, D), (K, D) -> labels (N,) long, sq. distance (N,)."""
    labels, dists = [], []
    for i in range(0, x.shape[0], BLOCK):
        d = _sq_dists(x[i:i + BLOCK], c)
        m, a = d.min(1)
        labels.append(a)
        dists.append(m)
    return torch.cat(labels), torch.cat(dists)


def kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: (N, D) -> (k, D) centroids chosen among the points."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [first]
    d = _sq_dists(x, x[first:first + 1])[:, 0]
    for _ in range(1, k):
        total = float(d.sum())
        if total <= 0:                          # fewer distinct points than k: repeat the first
            centres.append(first)
            continue
        u = float(torch.rand((), generator=gen, dtype=torch.float64)) * total
        nxt = int(torch.searchsorted(d.double().cumsum(0), torch.tensor([u], dtype=torch.float64, device=d.device)))
        nxt = min(nxt, n - 1)
        centres.append(nxt)
        d = torch.minimum(d, _sq_dists(x, x[nxt:nxt + 1])[:, 0])
    return x[centres].clone()


def _update(x: torch.Tensor, labels: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Mean of each cluster's points; an empty cluster keeps its centroid."""
    k = c.shape[0]
    sums = torch.zeros_like(c).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    out = c.clone()
    nonempty = counts > 0
    out[nonempty] = sums[nonempty] / counts[nonempty, None]
    return out


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, resample_steps: int = 0,
           sample_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D) float -> (centroids (k', D), labels (N,)) with k' = min(k, N).

    resample_steps > 0: after Lloyd, that many rounds setting each centroid to the mean of its
    `sample_size` nearest points (default: N // k')."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans needs a non-empty (N, D) tensor, got shape {tuple(x.shape)}")
    x = x.float()
    k = max(1, min(int(k), x.shape[0]))
    gen = torch.Generator().manual_seed(int(seed))
    c = kmeans_pp(x, k, gen)
    labels, _ = assign(x, c)
    for _ in range(iters):
        new = _update(x, labels, c)
        new_labels, _ = assign(x, new)
        c = new
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    if resample_steps:
        m = min(sample_size or max(1, x.shape[0] // k), x.shape[0])
        for _ in range(resample_steps):
            c = x[_nearest_points(x, c, m)].mean(0)        # (m, k, D) -> (k, D)
        labels, _ = assign(x, c)
    return c, labels


def _nearest_points(x: torch.Tensor, c: torch.Tensor, m: int) -> torch.Tensor:
    """Indices (m, K) of the m points nearest to each centroid, by blocks of points."""
    best_d = best_i = None
    for i in range(0, x.shape[0], BLOCK):
        d = _sq_dists(x[i:i + BLOCK], c)                     # (b, K)
        idx = torch.arange(i, i + d.shape[0], device=x.device)[:, None].expand_as(d)
        if best_d is not None:
            d, idx = torch.cat([best_d, d]), torch.cat([best_i, idx])
        top = torch.topk(d, min(m, d.shape[0]), dim=0, largest=False)
        best_d, best_i = top.values, torch.gather(idx, 0, top.indices)
    return best_i


@dataclass
class Hierarchy:
    """levels[0] clusters the points; levels[l] clusters the centroids of level l-1.

    centroids[l]: (K_l, D); labels[l]: (K_{l-1},) cluster of each element of level l-1 (for
    l = 0: (N,) cluster of each point)."""
    centroids: list[torch.Tensor]
    labels: list[torch.Tensor]


def hierarchical_kmeans(x: torch.Tensor, ks: list[int], iters: int = 20, seed: int = 0,
                        resample_steps: int = 10, sample_size: int = 0) -> Hierarchy:
    """Bottom-up hierarchy: ks = clusters per level from the finest (e.g. [1000, 100, 10])."""
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"levels must be a non-empty list of positive cluster counts, got {ks}")
    points, cents, labs = x.float(), [], []
    for level, k in enumerate(ks):
        c, lab = kmeans(points, k, iters=iters, seed=seed + level, resample_steps=resample_steps,
                        sample_size=sample_size)
        cents.append(c)
        labs.append(lab)
        points = c
    return Hierarchy(cents, labs)

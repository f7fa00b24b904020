"""Balanced top-down sampling over a k-means hierarchy: keep `target` points so that no cluster
dominates (an ocean cluster of 90 % of the archive keeps no more than the rare clusters do, up
to their size).

At each level, a cluster with budget n gives its children budgets by a cap t: every child keeps
min(t, its size), with t the largest integer such that the sum stays within n; what is left
(fewer than the number of children larger than t) goes one each to such children in a seeded
random order. In a leaf cluster (a level-0 k-means cluster of points) the points are chosen by
`eta` in [0, 1]: each point gets the score eta * (rank of its distance to the centroid, as a
fraction) + (1 - eta) * u, u uniform; the lowest scores are kept. eta = 1 keeps the points
nearest the centroid (typical samples), eta = 0 draws uniformly (spread over the cluster).
"""
from __future__ import annotations

import torch

from pretrain.curation.kmeans import Hierarchy


def cap_split(sizes: list[int], budget: int, gen: torch.Generator) -> list[int]:
    """Budgets per child: min(t, size) with the largest fitting cap t, remainder dealt at random."""
    total = sum(sizes)
    if budget >= total:
        return list(sizes)
    lo, hi = 0, max(sizes)                      # invariant: sum(min(lo, s)) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(mid, s) for s in sizes) <= budget:
            lo = mid
        else:
            hi = mid - 1
    out = [min(lo, s) for s in sizes]
    left = budget - sum(out)
    bigger = [i for i, s in enumerate(sizes) if s > lo]
    for j in torch.randperm(len(bigger), generator=gen).tolist()[:left]:
        out[bigger[j]] += 1
    return out


def _pick(points: torch.Tensor, dist: torch.Tensor, n: int, eta: float, gen: torch.Generator) -> torch.Tensor:
    """n of the leaf's point indices `points` (P,) with distances to their centroid `dist` (P,)."""
    if n >= points.numel():
        return points
    rank = torch.empty(points.numel())
    rank[torch.argsort(dist, stable=True)] = torch.arange(points.numel(), dtype=torch.float32)
    score = eta * rank / max(1, points.numel() - 1) + (1 - eta) * torch.rand(points.numel(), generator=gen)
    return points[torch.argsort(score, stable=True)[:n]]


def _groups(labels: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Indices of each label 0..k-1, in increasing index order (one sort, not k scans)."""
    order = torch.argsort(labels, stable=True)
    return list(torch.split(order, torch.bincount(labels, minlength=k).tolist()))


def balanced_sample(h: Hierarchy, x: torch.Tensor, target: int, eta: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Indices (sorted, long) of `target` points of x (N, D), balanced over the hierarchy."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    gen = torch.Generator().manual_seed(int(seed))
    x = x.float().cpu()
    labels = [lab.cpu() for lab in h.labels]
    n_points = labels[0].numel()
    target = max(0, min(int(target), n_points))
    # members[l][j]: indices of the level-(l-1) elements (points for l = 0) in cluster j of level l
    members = [_groups(lab, int(c.shape[0])) for lab, c in zip(labels, h.centroids)]
    size0 = torch.bincount(labels[0], minlength=h.centroids[0].shape[0])
    sizes = [size0]
    for lab, c in zip(labels[1:], h.centroids[1:]):        # points under each cluster, level by level
        sizes.append(torch.zeros(c.shape[0], dtype=torch.long).index_add_(0, lab, sizes[-1]))
    kept: list[torch.Tensor] = []

    def visit(level: int, cluster: int, budget: int) -> None:
        if budget <= 0:
            return
        children = members[level][cluster]
        if level == 0:
            d = ((x[children] - h.centroids[0][cluster].cpu()) ** 2).sum(1)
            kept.append(_pick(children, d, budget, eta, gen))
            return
        child_sizes = [int(sizes[level - 1][i]) for i in children.tolist()]
        for i, b in zip(children.tolist(), cap_split(child_sizes, budget, gen)):
            visit(level - 1, i, b)

    top = len(h.centroids) - 1
    top_sizes = [int(s) for s in sizes[top]]
    for j, b in enumerate(cap_split(top_sizes, target, gen)):
        visit(top, j, b)
    out = torch.cat(kept) if kept else torch.empty(0, dtype=torch.long)
    return torch.sort(out).values

"""Loss-based sample pruning in the style of InfoBatch (Qin et al., ICLR 2024), kept apart from
token selection so that each speed-up can be measured on its own. Off unless ratio > 0.

The SelectiveMAE release runs it always (prune ratio 0.5, stop at 87.5 % of training), which
silently adds ~25 % fewer iterations to the credited token-selection speed-up. Here: every
sample's last loss is remembered by key; a sample whose last loss is below the mean of the
remembered losses is skipped with probability `ratio` (before any compute: the encoder never
sees it), and well-learned samples that stay are weighted 1/(1 - ratio) so the expected
gradient is unchanged. Pruning stops at `stop_fraction` of training (annealing). The memory
is per process (per rank) and not checkpointed: after a resume it refills within an epoch.
"""

from __future__ import annotations

import torch

__all__ = ["LossPruner"]


class LossPruner:
    """plan(keys, progress) -> (kept indices (K,) long, weights (K,) float) ; update(keys, losses)."""

    def __init__(self, ratio: float = 0.5, stop_fraction: float = 0.875):
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"prune_ratio must be in [0, 1), got {ratio}")
        if not 0.0 <= stop_fraction <= 1.0:
            raise ValueError(f"prune_stop must be in [0, 1], got {stop_fraction}")
        self.ratio, self.stop_fraction = ratio, stop_fraction
        self.memory: dict[str, float] = {}
        self._sum = 0.0

    @property
    def active(self) -> bool:
        return self.ratio > 0

    def mean(self) -> float:
        return self._sum / len(self.memory) if self.memory else float("inf")

    def plan(self, keys: list, progress: float, device=None, generator: torch.Generator | None = None):
        """generator: a CPU generator for the drop draws (default: the global one on `device`)."""
        n = len(keys)
        if not self.active or progress >= self.stop_fraction or not self.memory:
            return torch.arange(n, device=device), torch.ones(n, device=device)
        thr = self.mean()
        easy = torch.tensor([self.memory.get(k, float("inf")) < thr for k in keys], device=device)
        u = torch.rand(n, device=device) if generator is None else torch.rand(n, generator=generator).to(easy.device)
        drop = easy & (u < self.ratio)
        if drop.all():  # never an empty batch: keep the first sample at its plain weight
            drop[0] = False
        kept = (~drop).nonzero().squeeze(1)
        weights = torch.where(easy[kept], 1.0 / (1.0 - self.ratio), 1.0).float()
        return kept, weights

    def update(self, keys: list, losses: torch.Tensor) -> None:
        for k, v in zip(keys, losses.detach().float().cpu().tolist()):
            self._sum += v - self.memory.get(k, 0.0)
            self.memory[k] = v

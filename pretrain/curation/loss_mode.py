"""Loss-based curation (`curation.mode: loss`), InfoBatch-style, for any objective that reports
per-sample losses (`per_sample_loss` (B,) in its outputs) and honours `sample_weight` (B,).

Before each forward, samples whose last recorded loss is below the running mean are dropped
with probability `loss_ratio` (the encoder never sees them: that is the saving); well-learned
samples that stay get weight 1 / (1 - loss_ratio) so the expected gradient is unchanged.
Nothing is dropped after `loss_stop` of training. The decision rule and the loss memory are
`objectives._pruning.LossPruner` (the same one SelectiveMAE can use internally). Every draw
comes from a generator seeded by (seed, rank, step), so a resumed run makes the same choices;
the loss memory is shared by all ranks (gathered after each step; about 100 bytes per sample
key) and saved with each checkpoint (`state_dict`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from pretrain.objectives._pruning import LossPruner


def subset_batch(batch: dict, idx: torch.Tensor) -> dict:
    """Rows `idx` of every batch entry that has the batch dimension (tensors (B, ...), key list)."""
    n = len(batch["key"])
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n:
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, list) and len(v) == n:
            out[k] = [v[i] for i in idx.tolist()]
        else:
            out[k] = v
    return out


class LossCuration:
    """plan(batch, step, total) -> the batch to train on; update(batch, outputs) after the forward."""

    def __init__(self, ratio: float, stop_fraction: float, seed: int, rank: int):
        self.pruner = LossPruner(ratio, stop_fraction)
        self.seed, self.rank = int(seed), int(rank)
        self.dropped = 0
        self.seen = 0

    def plan(self, batch: dict, step: int, total_steps: int) -> dict:
        keys = batch["key"]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7_919 + step)
        kept, weights = self.pruner.plan(keys, step / max(1, total_steps), generator=gen)
        self.seen += len(keys)
        self.dropped += len(keys) - kept.numel()
        out = subset_batch(batch, kept) if kept.numel() < len(keys) else dict(batch)
        out["sample_weight"] = weights
        return out

    def update(self, batch: dict, outputs: dict) -> None:
        if "per_sample_loss" not in outputs:
            raise ValueError("curation.mode loss needs an objective that reports per_sample_loss "
                             "(mae, selective_mae); this one does not")
        keys, losses = list(batch["key"]), outputs["per_sample_loss"].detach().float().cpu()
        if dist.is_initialized() and dist.get_world_size() > 1:
            # every rank remembers every rank's losses: one memory, the same on all ranks (so it is
            # checkpointed once, and the below-mean rule uses the global mean as InfoBatch does)
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (keys, losses.tolist()))
            keys = [k for ks, _ in parts for k in ks]
            losses = torch.tensor([v for _, vs in parts for v in vs])
        self.pruner.update(keys, losses)

    def state_dict(self) -> dict:
        return {"memory": dict(self.pruner.memory), "seen": self.seen, "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        self.pruner.memory = dict(state["memory"])
        self.pruner._sum = float(sum(self.pruner.memory.values()))
        self.seen, self.dropped = int(state["seen"]), int(state["dropped"])

"""Collectives that objectives need inside forward: gathers across ranks, with and without
gradient. Every function is a no-op (returns its input) when torch.distributed is not
initialised, so objectives run unchanged in one process.

Gradient convention. With the batch gathered, rank r's loss L_r (a mean over its own B queries)
depends on the embeddings of every rank. `all_gather_grad`'s backward therefore SUMS the
incoming gradients over ranks (each rank holds dL_r/dz for every z) and returns this rank's
slice: d(sum_r L_r)/dz_local. Summed over ranks, the parameter gradients are d(sum_r L_r)/dtheta;
DeepSpeed (like DDP) AVERAGES them over the W ranks, giving d(mean_r L_r)/dtheta = dL/dtheta of
one process holding all W*B samples, whose loss is the mean over W*B queries = mean_r L_r.
So: each rank's loss is a mean over its LOCAL queries, no extra scaling (tested with 2 ranks
against 1 rank, tests/pretrain/test_gather.py and the objectives' tests).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "rank_world", "all_gather_grad", "all_gather_nograd", "global_offset"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def global_offset(local_batch: int) -> int:
    """Index of this rank's first sample in the gathered batch (ranks in order, equal sizes)."""
    return rank_world()[0] * local_batch


def _gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


class _AllGatherGrad(torch.autograd.Function):
    """(B, ...) on every rank -> (W*B, ...); backward: sum over ranks, keep the local slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        return _gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start:start + ctx.batch]


def all_gather_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (B, ...) tensor along dim 0 -> (W*B, ...), differentiable (see the
    module docstring for the gradient). Every rank must pass the same shape."""
    if not is_distributed():
        return x
    return _AllGatherGrad.apply(x)


@torch.no_grad()
def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's (B, ...) tensor along dim 0 -> (W*B, ...), detached (teacher keys,
    labels, queue updates)."""
    if not is_distributed():
        return x.detach()
    return _gather(x.detach())

"""Instance contrast (SimCLR-style NT-Xent on two views of each chip, no labels, no teacher)."""
import math

import torch
import torch.nn.functional as F

from pretrain.objectives.instance_contrastive import nt_xent
from tests.pretrain.contrastive_helpers import make_batch, tiny_objective, train_losses


def test_nt_xent_known_answer():
    """Two chips whose views agree exactly and are orthogonal to the other chip: each query's
    positive has logit 1/T, its two negatives 0 -> loss = log(1 + 2 exp(-1/T))."""
    z1 = torch.eye(4)[:2]
    loss, per_sample = nt_xent(z1, z1.clone(), z1, z1.clone(), 0, temperature=0.5)
    expected = math.log(1 + 2 * math.exp(-2.0))
    assert abs(loss.item() - expected) < 1e-6 and torch.allclose(per_sample, torch.full((2,), expected))
    # swapping the second views makes every positive a stranger: the loss must rise
    swapped, _ = nt_xent(z1, z1.flip(0), z1, z1.flip(0), 0, temperature=0.5)
    assert swapped > loss + 1.0


def test_nt_xent_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = (F.normalize(torch.randn(5, 8, generator=g), dim=1) for _ in range(2))
    loss, _ = nt_xent(z1, z2, z1, z2, 0, temperature=0.2)
    z = torch.cat([z1, z2])
    sim = z @ z.T / 0.2
    sim.fill_diagonal_(-float("inf"))
    target = torch.cat([torch.arange(5, 10), torch.arange(0, 5)])
    assert torch.allclose(loss, F.cross_entropy(sim, target), atol=1e-6)


def test_needs_no_labels_reaches_every_trainable_parameter_and_learns():
    batch = {k: v for k, v in make_batch(b=6).items() if k != "landcover"}
    obj = tiny_objective("instance_contrastive")
    out = obj(batch)
    out["loss"].backward()
    missing = [n for n, p in obj.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, missing
    assert out["per_sample_loss"].shape == (6,)
    losses = train_losses(obj, batch)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5

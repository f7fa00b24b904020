"""all_gather with gradient (pretrain/distributed.py): a no-op in one process; with 2 real gloo
processes the forward concatenates in rank order and the backward gives each rank the sum over
ranks of the gradient of its slice."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.distributed import all_gather_grad, all_gather_nograd, global_offset, rank_world
from pretrain.engine import _free_port

B, D = 3, 4


def test_no_process_group_is_a_no_op():
    x = torch.randn(B, D, requires_grad=True)
    assert all_gather_grad(x) is x
    y = all_gather_nograd(x)
    assert torch.equal(y, x) and not y.requires_grad
    assert rank_world() == (0, 1) and global_offset(B) == 0


def _weights(rank: int) -> torch.Tensor:
    return torch.arange(2 * B * D, dtype=torch.float32).view(2 * B, D) * (rank + 1)


def _gather_check(rank: int, out: str) -> None:
    x = (torch.arange(B * D, dtype=torch.float32).view(B, D) + 100 * rank).requires_grad_(True)
    y = all_gather_grad(x)
    # rank r's loss sees every rank's rows with its own weights
    (y * _weights(rank)).sum().backward()
    torch.save({"y": y.detach(), "grad": x.grad, "nograd": all_gather_nograd(x * 2),
                "offset": global_offset(B), "rw": rank_world()}, f"{out}/rank{rank}.pt")


def test_two_ranks_forward_order_and_summed_local_gradient(two_ranks):
    tmp_path, _ = two_ranks
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    full = torch.cat([torch.arange(B * D, dtype=torch.float32).view(B, D) + 100 * r for r in range(2)])
    total_w = _weights(0) + _weights(1)          # d(sum_r loss_r)/dy
    for r, res_r in enumerate(res):
        assert torch.equal(res_r["y"], full)
        assert torch.equal(res_r["nograd"], full * 2)
        assert torch.equal(res_r["grad"], total_w[r * B:(r + 1) * B])
        assert res_r["offset"] == r * B and res_r["rw"] == (r, 2)


# ---- the contrastive objectives: 2 ranks x B under DeepSpeed == 1 rank x 2B ----------------------
CASES = [
    ("soft_contrastive", {}),                                            # symmetric: gradient through the gather
    ("soft_contrastive", {"soft_loss": "mse", "label_form": "multihot", "symmetric": False}),
    ("instance_contrastive", {}),                                        # both views' embeddings gathered with gradient
    ("season_contrastive", {"negatives": "batch"}),
    ("season_contrastive", {"negatives": "queue", "queue_size": 10, "mode": "season_invariant"}),
]


def _objective_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from pretrain.config import EngineSpec, OptimSpec
    from pretrain.engine import build_engine, setup_distributed
    from tests.pretrain.contrastive_helpers import slice_views, tiny_objective

    setup_distributed("gloo")
    try:
        _gather_check(rank, folder)
        for i, (name, kw) in enumerate(CASES):
            case = torch.load(f"{folder}/case{i}.pt", weights_only=False)
            obj = tiny_objective(name, **kw)
            obj.load_state_dict(case["state"])
            engine, _ = build_engine(obj, EngineSpec(zero_stage=0), OptimSpec(), B, 10)
            engine.train()
            out = engine.module.loss_from_views(slice_views(case["views"], rank * B, (rank + 1) * B))
            engine.backward(out["loss"])                 # DeepSpeed all-reduces (averages) the gradients here
            grads = {n: p.grad.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
            torch.save({"loss": out["loss"].detach(), "grads": grads,
                        "queue": getattr(engine.module, "queue", None)}, f"{folder}/case{i}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def case_queue_before(folder, i: int) -> torch.Tensor:
    return torch.load(folder / f"case{i}.pt", weights_only=False)["state"]["queue"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-process gloo run for the whole file (process start-up dominates the time): the
    1-rank references are computed here, the ranks write their results to the folder."""
    from tests.pretrain.contrastive_helpers import make_batch, tiny_objective

    tmp_path = tmp_path_factory.mktemp("two_ranks")
    refs = []
    for i, (name, kw) in enumerate(CASES):
        obj = tiny_objective(name, **kw).train()
        torch.manual_seed(5)
        views = obj.make_views(make_batch(b=2 * B))
        state = {k: v.clone() for k, v in obj.state_dict().items()}
        torch.save({"state": state, "views": views}, tmp_path / f"case{i}.pt")
        out = obj.loss_from_views(views)
        out["loss"].backward()
        refs.append((out["loss"].detach(), {n: p.grad for n, p in obj.named_parameters() if p.requires_grad},
                     getattr(obj, "queue", None)))
    mp.spawn(_objective_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    return tmp_path, refs


def test_objectives_two_ranks_equal_one_rank_with_twice_the_batch(two_ranks):
    tmp_path, refs = two_ranks
    for i, (loss, grads, queue) in enumerate(refs):
        ranks = [torch.load(tmp_path / f"case{i}_rank{r}.pt", weights_only=False) for r in range(2)]
        label = f"{CASES[i][0]} {CASES[i][1]}"
        # the logged loss is the mean over ranks of each rank's mean over its own queries
        assert torch.allclose((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss, rtol=1e-5, atol=1e-6), label
        assert set(ranks[0]["grads"]) == set(grads)
        for n, g in grads.items():
            assert g is not None and g.abs().sum() > 0, (label, n)
            for r in range(2):          # averaged by DeepSpeed: the same on both ranks, equal to 1 rank x 2B
                err = (ranks[r]["grads"][n] - g).abs().max() / g.abs().max()   # float summation order differs
                assert err < 1e-4, (label, n, r, float(err))
        if queue is not None:           # both ranks enqueued the gathered global batch, in the same order
            assert not torch.allclose(queue, case_queue_before(tmp_path, i)), label    # it did change
            for r in range(2):
                assert torch.allclose(ranks[r]["queue"], queue, atol=1e-6), label

"""Season-contrastive objective: contract, dates drawn without replacement into SeCo's views,
the queue, the loss falling on the real multi-date SSL4EO-S12 chips, and season retrieval of
unseen places after pretraining on a fixture whose answer is known."""
import subprocess
import sys

import pytest
import torch

from pretrain.objectives._contrastive_common import frames_without_replacement
from tests.conftest import ROOT, SSL4EO_S2A
from tests.pretrain.contrastive_helpers import load_all, make_batch, tiny_objective


@pytest.mark.parametrize("mode, negatives", [("subspaces", "queue"), ("season_invariant", "batch")])
def test_contract_gradient_on_every_trainable_parameter(mode, negatives):
    obj = tiny_objective("season_contrastive", mode=mode, negatives=negatives, queue_size=32).train()
    out = obj(make_batch(b=4, t=3))
    heads = 3 if mode == "subspaces" else 1
    assert {f"loss_z{i}" for i in range(heads)} <= set(out) and f"loss_z{heads}" not in out
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert out["loss"].item() == pytest.approx(sum(out[f"loss_z{i}"].item() for i in range(heads)), rel=1e-5)
    out["loss"].backward()
    for n, p in obj.named_parameters():
        if n.startswith("teacher."):
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert len(obj.heads) == heads and len(obj.teacher["heads"]) == heads
    if negatives == "queue":
        assert {"queue", "queue_ptr"} <= set(obj.state_dict()) and int(obj.queue_ptr) == 4


def test_single_date_batches_are_a_clear_error():
    with pytest.raises(ValueError, match=r"T=1 frame.*series: \{mode"):
        tiny_objective("season_contrastive")(make_batch(t=1))


def test_frames_are_drawn_without_replacement():
    idx = frames_without_replacement(500, 4, 3, "cpu")
    assert idx.shape == (500, 3) and all(len(set(r)) == 3 for r in idx.tolist())
    assert set(idx.flatten().tolist()) == {0, 1, 2, 3}
    two = frames_without_replacement(200, 2, 3, "cpu")      # SSL4Eco: two dates -> t2 = t1
    assert torch.equal(two[:, 2], two[:, 1]) and (two[:, 0] != two[:, 1]).all()


def test_seco_views_pair_the_right_dates():
    """Each date is a constant image with the date's number: q is date t0, k0 another date
    (jittered), k1 a third date, k2 date t0 again (jittered) — with 3 dates all distinct."""
    obj = tiny_objective("season_contrastive", jitter_p=1.0, blur_p=0.0, brightness=0.0, contrast=0.0,
                         band_jitter=0.0)
    batch = make_batch(b=16, t=3, valid_p=1.0)
    batch["image"] = torch.arange(1.0, 4.0).view(1, 3, 1, 1, 1).expand_as(batch["image"]).clone()
    v = obj.make_views(batch)
    date = lambda img: img.mean((1, 2, 3)).round()            # noqa: E731
    q, k0, k1, k2 = date(v["q"]), *[date(k) for k in v["keys"]]
    assert (q != k0).all() and (q != k1).all() and (k0 != k1).all() and torch.equal(q, k2)
    assert v["keys"].shape[:2] == (3, 16) and v["keys_gsd"].shape == (3, 16)
    assert (v["q_gsd"] <= 10.0 + 1e-4).all() and (v["q_gsd"] < 10.0).any()   # crops shrink the GSD


def test_view_augment_geometry_blur_and_invalid_pixels():
    from pretrain.objectives._contrastive_common import ViewAugment
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g)
    valid = torch.ones(4, 16, 16, dtype=torch.bool)
    valid[:, :, :4] = False
    x = x * valid[:, None]
    gsd = torch.full((4,), 10.0)
    same = ViewAugment(crop_scale=(1.0, 1.0), flips=False, jitter_p=0.0, blur_p=0.0)
    y, v, gy = same(x, valid, gsd)
    assert torch.allclose(y, x, atol=1e-5) and torch.equal(v, valid) and torch.allclose(gy, gsd)
    rot = ViewAugment(crop_scale=(1.0, 1.0), flips=True, jitter_p=0.0, blur_p=0.0)
    y, v, _ = rot(x, valid, gsd)            # flips/rotations permute pixels: same values, invalid stay 0
    assert torch.allclose(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values, atol=1e-5)
    assert (y * ~v[:, None]).abs().sum() == 0 and v.sum() == valid.sum()
    impulse = torch.zeros(4, 3, 16, 16)
    impulse[:, :, 8, 8] = 1.0
    blurred = ViewAugment(blur_p=1.0, jitter_p=0.0, blur_sigma=(1.0, 2.0)).photometric(impulse, torch.ones(4, 16, 16, dtype=torch.bool))
    assert torch.allclose(blurred.sum((2, 3)), torch.ones(4, 3), atol=1e-5) and (blurred[:, :, 8, 8] < 0.5).all()
    jit = ViewAugment(jitter_p=1.0, blur_p=0.0).photometric(x, valid)
    assert not torch.allclose(jit, x) and (jit * ~valid[:, None]).abs().sum() == 0


def test_queue_is_a_ring_buffer_of_the_newest_keys():
    obj = tiny_objective("season_contrastive", mode="season_invariant", queue_size=10)
    for start in (0, 4, 8):
        keys = torch.arange(start, start + 4, dtype=torch.float32).view(1, 4, 1).expand(1, 4, 16)
        obj._enqueue(keys)
    assert int(obj.queue_ptr) == 2
    assert obj.queue[0, :, 0].tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]


def _pretrain(obj, data: dict, steps: int, batch: int, lr: float, weight_decay: float = 0.01) -> list[float]:
    """`steps` AdamW steps on random batches of `data` (the loop's set_progress hook included);
    -> the losses."""
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(0)
    n = data["image"].shape[0]
    losses = []
    for step in range(steps):
        obj.set_progress(step, steps)
        idx = torch.randperm(n, generator=g)[:batch]
        out = obj({k: (v[idx] if isinstance(v, torch.Tensor) else v) for k, v in data.items()})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    return losses


def test_loss_falls_on_real_multi_date_chips(tmp_path):
    r = subprocess.run([sys.executable, "-m", "data_prep", "run", "configs/prep/ssl4eo_seasons.yaml",
                        f"output.path={tmp_path / 'data'}",
                        f"sources=[{{kind: auto, paths: [{SSL4EO_S2A}], resampling: bilinear}}]", "--quiet"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    data = load_all(tmp_path / "data")
    assert data["image"].shape[:2] == (64, 2) and len(set(data["key"])) == 64      # 64 places x 2 dates
    obj = tiny_objective("season_contrastive", negatives="batch", ema_momentum=0.9).train()
    losses = _pretrain(obj, data, steps=24, batch=16, lr=2e-3)
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < first - 0.3, losses


def test_learned_embeddings_find_the_other_season_of_unseen_places():
    """The quality check on the fixture whose answer is known (contrastive_helpers.seasonal_places:
    class spectra change from date to date, each place keeps its layout): after a short
    season-invariant pretraining on 1024 places, 128 UNSEEN places at date 1 find themselves at
    date 2, far above the same encoder at random init and raw pixels, which cannot."""
    from pretrain.models import build_backbone
    from pretrain.objectives import build_objective
    from tests.pretrain.contrastive_helpers import date_embeddings, pair_accuracy, retrieval_top1, seasonal_places

    train, test = seasonal_places(1024, seed=0), seasonal_places(128, seed=1)

    def scores(backbone):
        a, b = date_embeddings(backbone, test)
        return retrieval_top1(a, b), pair_accuracy(a, b)

    torch.manual_seed(0)
    backbone = build_backbone("vit", "tiny", embed_dim=64, num_heads=4, depth=2, patch_size=4)
    before = scores(backbone)
    obj = build_objective("season_contrastive", backbone, mode="season_invariant", negatives="batch",
                          proj_hidden_dim=128, proj_dim=64, crop_scale=[0.7, 1.0], flips=False,
                          ema_momentum=0.9, ema_momentum_end=0.9).train()
    _pretrain(obj, train, steps=300, batch=32, lr=1e-3, weight_decay=0.05)
    raw = retrieval_top1(test["image"][:, 0].flatten(1), test["image"][:, 1].flatten(1))
    top1, pairs = scores(obj.backbone)
    assert raw < 0.05 and before[0] < 0.05, (raw, before)     # the fixture is not trivially solved
    assert top1 > 0.1 and top1 > 4 * before[0], (top1, before)
    assert pairs > before[1] + 0.1, (pairs, before)

"""Contract tests for the MAE objective (tiny, CPU-fast)."""

import pytest
import torch

from pretrain.models import build_backbone
from pretrain.objectives import build_objective
from pretrain.objectives.mae import patchify, random_masking, unpatchify

P, SIZE = 8, 32
L = (SIZE // P) ** 2


def make_mae(**kw):
    torch.manual_seed(0)
    bb = build_backbone("vit", "tiny", embed_dim=64, num_heads=4, depth=2, patch_size=P)
    cfg = dict(decoder_dim=64, decoder_depth=1, decoder_heads=4)
    return build_objective("mae", bb, **{**cfg, **kw})


def make_batch(b=2, t=2, c=6, valid_p=0.7, seed=1):
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish images so there is structure to learn.
    base = torch.randn(b, t, c, SIZE // 4, SIZE // 4, generator=g)
    image = torch.nn.functional.interpolate(base.flatten(0, 1), size=(SIZE, SIZE),
                                            mode="bilinear").view(b, t, c, SIZE, SIZE)
    valid = torch.rand(b, t, SIZE, SIZE, generator=g) < valid_p
    image = image * valid[:, :, None]  # contract: invalid pixels arrive as 0
    return {
        "image": image,
        "valid": valid,
        "wavelengths_nm": torch.linspace(490.0, 2190.0, c).expand(b, c),
        "gsd_m": torch.tensor([10.0, 20.0])[:b],
        "sensor": "ignored",
    }


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 16, 24)
    p = patchify(x, 8)
    assert p.shape == (2, 6, 3, 64)
    assert torch.equal(unpatchify(p, 8, 2, 3), x)
    # Patch order matches the conv patch embed: patch 1 is row 0, column 1.
    assert torch.equal(p[0, 1, 0], x[0, 0, :8, 8:16].reshape(-1))


@pytest.mark.parametrize("ratio", [0.75, 0.6, 0.9])
def test_exact_mask_count(ratio):
    tokens = torch.randn(3, L, 8)
    visible, mask, ids_restore = random_masking(tokens, ratio)
    keep = int(L * (1 - ratio))
    assert visible.shape == (3, keep, 8)
    assert (mask.sum(1) == L - keep).all()
    # Visible tokens are exactly the unmasked ones.
    for i in range(3):
        assert torch.equal(visible[i].sort(0).values, tokens[i][mask[i] == 0].sort(0).values)


def test_reconstruct_mask_count_and_shapes():
    mae = make_mae(mask_ratio=0.75)
    out = mae.reconstruct(make_batch())
    assert out["pred_image"].shape == (4, 6, SIZE, SIZE)
    assert out["mask"].shape == (4, SIZE, SIZE) and out["mask"].dtype == torch.bool
    masked_patches = out["mask"][:, ::P, ::P].sum((1, 2))
    assert (masked_patches == L - int(L * 0.25)).all()


def test_finite_loss_and_grad_everywhere():
    mae = make_mae()
    out = mae(make_batch())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["mask_ratio_effective"].item() == pytest.approx(0.75)
    assert 0.6 < out["valid_fraction"].item() < 0.8
    out["loss"].backward()
    for name, p in mae.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert any(n.startswith("backbone.") for n, _ in mae.named_parameters())


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_ignores_invalid_pixels(norm_pix):
    mae = make_mae(norm_pix_loss=norm_pix)
    batch = make_batch()
    torch.manual_seed(123)
    ref = mae(batch)["loss"]
    poisoned = dict(batch, image=batch["image"].clone())
    poisoned["image"][~batch["valid"][:, :, None].expand_as(batch["image"])] = 1e6
    torch.manual_seed(123)
    assert torch.allclose(mae(poisoned)["loss"], ref)
    # Sanity: the test can fail — changing a VALID pixel everywhere does change the loss.
    shifted = dict(batch, image=batch["image"] + 3.0 * batch["valid"][:, :, None])
    shifted["image"][..., 0, :, :] *= 2
    torch.manual_seed(123)
    assert not torch.allclose(mae(shifted)["loss"], ref)


def test_all_invalid_batch_gives_zero_loss_with_grad():
    mae = make_mae()
    batch = make_batch(valid_p=0.0)
    out = mae(batch)
    assert torch.isfinite(out["loss"]) and out["loss"].item() == 0.0
    assert out["loss"].grad_fn is not None
    out["loss"].backward()  # must not raise
    assert out["valid_fraction"].item() == 0.0


def overfit_losses(objective, steps: int = 30) -> list[float]:
    """Adam steps on one fixed batch, reseeded each step so the mask (or selection) repeats:
    a fixed problem to overfit -> the losses."""
    batch = make_batch(b=2, t=1)
    opt = torch.optim.Adam(objective.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        torch.manual_seed(0)
        loss = objective(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_adam_steps_reduce_loss():
    losses = overfit_losses(make_mae())
    assert losses[-1] < 0.5 * losses[0], losses


def test_norm_pix_stats_use_valid_pixels_only():
    from pretrain.objectives.mae import _masked_patch_stats

    target = torch.zeros(1, 1, 2, 4)
    target[..., :2] = torch.tensor([1.0, 3.0])  # valid pixels 0,1 in both bands; 2,3 are zeros
    valid = torch.tensor([[[True, True, False, False]]])
    mean, std = _masked_patch_stats(target, valid)
    assert mean.item() == pytest.approx(2.0)  # zeros of invalid pixels must not pull it to 1
    assert std.item() == pytest.approx(1.0, abs=1e-5)


def test_only_masked_patches_count():
    # With nothing masked there is nothing to reconstruct: loss must be exactly 0.
    mae = make_mae(mask_ratio=0.0)
    out = mae(make_batch())
    assert out["loss"].item() == 0.0 and out["mask_ratio_effective"].item() == 0.0


def test_bf16_weights_and_image_train():
    """What a bf16 DeepSpeed engine feeds the objective: bf16 weights and image, float32 metadata."""
    mae = make_mae().to(torch.bfloat16)
    batch = make_batch()
    batch["image"] = batch["image"].to(torch.bfloat16)
    out = mae(batch)
    assert torch.isfinite(out["loss"])          # the loss itself is reduced in float32
    out["loss"].backward()
    assert all(p.grad is not None for p in mae.parameters() if p.requires_grad)


def test_joint_frames_mask_the_whole_series_and_use_dates():
    torch.manual_seed(0)
    bb = build_backbone("vit", "tiny", embed_dim=64, num_heads=4, depth=1, patch_size=P, time_loc=True)
    mae = build_objective("mae", bb, decoder_dim=64, decoder_depth=1, decoder_heads=4, frames="joint")
    batch = make_batch(b=2, t=3)
    batch["times"] = torch.tensor([[19000.0, 19030.0, 19060.0], [19100.0, 19200.0, 19300.0]], dtype=torch.float64)
    batch["lonlat"] = torch.tensor([[10.0, 45.0], [-70.0, -10.0]])
    out = mae(batch)
    assert out["mask_ratio_effective"].item() == pytest.approx(1 - int(3 * L * 0.25) / (3 * L))
    out["loss"].backward()
    assert bb.time_scale.grad.abs() > 0 and bb.loc_scale.grad.abs() > 0
    rec = mae.reconstruct(batch)
    assert rec["pred_image"].shape == (6, 6, SIZE, SIZE) and rec["mask"].shape == (6, SIZE, SIZE)
    # masking is over the series: frames of one sample have different numbers of masked patches
    per_frame = rec["mask"][:, ::P, ::P].sum((1, 2))
    assert per_frame.sum() == 2 * (3 * L - int(3 * L * 0.25)) and len(set(per_frame.tolist())) > 1

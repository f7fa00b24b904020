"""Contract and behaviour tests for SelectiveMAE (tiny, CPU-fast)."""

import pytest
import torch

from data_prep.recipe import ConfigError, load_recipe
from pretrain.config import PretrainConfig
from pretrain.models import build_backbone
from pretrain.objectives import build_objective
from pretrain.objectives._mim import prepare
from pretrain.objectives._pruning import LossPruner
from pretrain.objectives._selection import (expansion_mix, gradient_score, score_logits,
                                            select_tokens)
from pretrain.objectives.selective_mae import token_counts
from tests.conftest import ROOT
from tests.pretrain.test_mae import make_batch, overfit_losses

P, SIZE = 8, 32
L = (SIZE // P) ** 2


def make_smae(**kw):
    torch.manual_seed(0)
    bb = build_backbone("vit", "tiny", embed_dim=64, num_heads=4, depth=2, patch_size=P)
    cfg = dict(decoder_dim=64, decoder_depth=1, decoder_heads=4, mask_ratio=0.75, recon_ratio=0.25)
    return build_objective("selective_mae", bb, **{**cfg, **kw})


@pytest.mark.parametrize("n, mask_ratio, recon_ratio, keep, recon", [
    (196, 0.85, 0.25, 29, 49),      # the paper's ViT-B/16 at 224 px
    (64, 0.85, 0.25, 9, 16),
    (16, 0.75, 0.25, 4, 4),
])
def test_selected_counts_match_configuration(n, mask_ratio, recon_ratio, keep, recon):
    assert token_counts(n, mask_ratio, recon_ratio) == (keep, recon)
    g = torch.Generator().manual_seed(0)
    ids_keep, ids_target = select_tokens(torch.randn(5, n, generator=g), torch.randn(5, n, 8, generator=g),
                                         keep, recon, (0.5, 0.3, 0.2), generator=g)
    assert ids_keep.shape == (5, keep) and ids_target.shape == (5, recon)
    for k, t in zip(ids_keep.tolist(), ids_target.tolist()):
        assert len(set(k)) == keep and len(set(t)) == recon and not set(k) & set(t)


def test_objective_encodes_and_reconstructs_exact_counts():
    smae = make_smae(mask_ratio=0.85, recon_ratio=0.25)
    batch = make_batch(b=2, t=2)
    size = 64
    batch["image"] = torch.nn.functional.interpolate(batch["image"].flatten(0, 1), size=size).view(2, 2, 6, size, size)
    batch["valid"] = torch.ones(2, 2, size, size, dtype=torch.bool)
    x = prepare(batch, P)
    _, ids_keep, ids_target = smae._encode(x)
    assert ids_keep.shape == (4, 9) and ids_target.shape == (4, 16)   # 64 tokens: 15 % and 25 %
    out = smae(batch)
    assert out["encoded_fraction"].item() == pytest.approx(9 / 64)
    assert out["recon_fraction"].item() == pytest.approx(16 / 64)
    with pytest.raises(ValueError, match="need K >= 1"):
        token_counts(4, 0.85, 0.25)


def test_gradient_score_varies_with_texture_for_any_band_count():
    g = torch.Generator().manual_seed(0)
    for c in (2, 12, 200):
        image = torch.zeros(1, c, SIZE, SIZE)
        image[..., :P, :P] = torch.randn(c, P, P, generator=g)         # textured patch 0
        image[..., P:2 * P, P:2 * P] = 3.0                              # flat bright patch 5
        s = gradient_score(image, torch.ones(1, SIZE, SIZE, dtype=torch.bool), P)
        assert s.shape == (1, L)
        assert s[0, 0] > 5 * s[0, 3] and s[0, 5] < s[0, 0]              # texture outranks flat areas
        assert s.std() > 0                                              # unlike the released HOG score
    # Invalid pixels do not count: a patch that is all invalid has no score (NaN), and a
    # difference across the valid/invalid border never counts.
    valid = torch.ones(1, SIZE, SIZE, dtype=torch.bool)
    valid[:, :P, :P] = False
    s = gradient_score(torch.randn(1, 3, SIZE, SIZE, generator=g) * valid[:, None], valid, P)
    assert torch.isnan(s[0, 0]) and not torch.isnan(s[0, 1:]).any()
    z = score_logits(s, s.shape, 1.0, "cpu")
    assert z[0, 0] < -10 and torch.isfinite(z).all()


def test_uniform_score_is_uniform_and_gradient_score_prefers_texture():
    image = torch.zeros(64, 3, SIZE, SIZE)
    image[..., :, : SIZE // 2] = torch.randn(64, 3, SIZE, SIZE // 2)  # left half textured
    valid = torch.ones(64, SIZE, SIZE, dtype=torch.bool)
    left = torch.tensor([(i % 4) < 2 for i in range(L)])
    emb = torch.randn(64, L, 16)
    assert torch.equal(score_logits(None, (64, L), 1.0, "cpu"), torch.zeros(64, L))
    torch.manual_seed(0)
    z = score_logits(gradient_score(image, valid, P), (64, L), 1.0, "cpu")
    keep_g, tgt_g = select_tokens(z, emb, 4, 4, (0, 0, 1))
    keep_u, tgt_u = select_tokens(torch.zeros(64, L), emb, 4, 4, (0, 0, 1))
    share = lambda ids: left[ids].float().mean().item()  # noqa: E731
    assert share(keep_g[:, :2]) > 0.8 and share(tgt_g) > 0.65    # seeds and targets follow texture
    assert 0.35 < share(keep_u[:, :2]) < 0.65 and 0.35 < share(tgt_u) < 0.65


def test_curriculum_fractions_and_expansion_by_similarity():
    assert expansion_mix(0.0) == (1, 0, 0) and expansion_mix(0.5) == (0, 1, 0) and expansion_mix(0.9) == (0, 0, 1)
    assert expansion_mix(0.3625) == pytest.approx((0.5, 0.5, 0))    # halfway through the first blend
    assert expansion_mix(0.7375) == pytest.approx((0, 0.5, 0.5))
    assert expansion_mix(0.1, "dissimilar") == (0, 1, 0)
    # Tokens 0-7 all point one way, 8-15 the other: one seed plus similar expansion stays in its
    # group, dissimilar expansion crosses over.
    emb = torch.cat([torch.ones(8, 4), -torch.ones(8, 4)])[None] + 0.01 * torch.randn(1, L, 4)
    logits = torch.full((1, L), -30.0)
    logits[0, 0] = 0.0                                                # seed is token 0
    keep, _ = select_tokens(logits, emb, 2 * 1 + 1, 2, (1, 0, 0))   # K=3: 1 seed + 2 expansion
    assert keep[0, 0] == 0 and (keep[0, 1:] < 8).all()
    keep, _ = select_tokens(logits, emb, 3, 2, (0, 1, 0))
    assert (keep[0, 1:2] >= 8).all()                                  # first sub-step crosses over


def test_set_progress_drives_the_curriculum():
    smae = make_smae(curriculum=[0.1, 0.2, 0.3, 0.4])
    batch = make_batch()
    assert smae(batch)["expand_similar"].item() == 1.0
    smae.set_progress(25, 100)
    assert smae(batch)["expand_dissimilar"].item() == 1.0
    smae.set_progress(100, 100)
    assert smae(batch)["expand_random"].item() == 1.0


def test_finite_loss_and_grad_everywhere():
    smae = make_smae()
    out = smae(make_batch())
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in smae.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_loss_ignores_invalid_pixels():
    smae = make_smae()
    batch = make_batch()
    torch.manual_seed(5)
    ref = smae(batch)["loss"]
    poisoned = dict(batch, image=batch["image"].clone())
    poisoned["image"][~batch["valid"][:, :, None].expand_as(batch["image"])] = 1e6
    torch.manual_seed(5)
    assert torch.allclose(smae(poisoned)["loss"], ref)
    shifted = dict(batch, image=batch["image"] * 2 + batch["valid"][:, :, None])
    torch.manual_seed(5)
    assert not torch.allclose(smae(shifted)["loss"], ref)


def test_adam_steps_reduce_loss():
    losses = overfit_losses(make_smae())
    assert losses[-1] < 0.5 * losses[0], losses


def test_reconstruct_decodes_every_masked_patch_and_marks_targets():
    smae = make_smae()
    out = smae.reconstruct(make_batch())
    assert out["pred_image"].shape == (4, 6, SIZE, SIZE)
    masked, targets = out["mask"][:, ::P, ::P], out["target_mask"][:, ::P, ::P]
    assert (masked.sum((1, 2)) == L - 4).all() and (targets.sum((1, 2)) == 4).all()
    assert not (targets & ~masked).any()                    # targets are masked patches
    assert (out["pred_image"].abs().sum(1)[out["mask"]] > 0).all()   # every masked pixel predicted


def test_joint_frames_select_over_the_whole_series():
    smae = make_smae(frames="joint")
    batch = make_batch(b=2, t=3)
    x = prepare(batch, P, "joint")
    _, ids_keep, ids_target = smae._encode(x)
    assert ids_keep.shape == (2, int(3 * L * 0.25)) and ids_target.shape == (2, 3 * L // 4)
    assert smae.reconstruct(batch)["pred_image"].shape == (6, 6, SIZE, SIZE)


def test_pruner_skips_easy_samples_and_reweights():
    pr = LossPruner(ratio=0.5, stop_fraction=0.875)
    keys = [f"k{i}" for i in range(200)]
    kept, w = pr.plan(keys, 0.0)
    assert len(kept) == 200 and (w == 1).all()                        # nothing known yet
    pr.update(keys, torch.tensor([0.0 if i < 100 else 1.0 for i in range(200)]))
    torch.manual_seed(0)
    kept, w = pr.plan(keys, 0.5)
    easy = kept < 100
    assert (kept >= 100).sum() == 100                                 # hard samples always stay
    assert 30 < easy.sum() < 70 and (w[easy] == 2.0).all() and (w[~easy] == 1.0).all()
    assert len(pr.plan(keys, 0.9)[0]) == 200                          # annealing: off at the end


def test_pruning_is_off_by_default_and_shrinks_the_batch_when_on():
    assert not make_smae().pruner.active
    smae = make_smae(prune_ratio=0.9)
    batch = make_batch(b=4, t=1)
    batch["image"][:2] *= 0.0   # two trivially easy samples
    batch["key"], batch["gsd_m"] = ["a", "b", "c", "d"], torch.full((4,), 10.0)
    smae(batch)                                    # fills the loss memory
    torch.manual_seed(1)
    out = smae(batch)
    assert out["kept_samples"].item() < 1.0 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="sample keys"):
        smae(dict(batch, key=None))


def test_recipe_for_selective_mae():
    for name in ("selective_mae_quickstart.yaml", "selective_mae_real_s2.yaml"):
        cfg = load_recipe(PretrainConfig, ROOT / "configs" / "pretrain" / name)
        assert cfg.objective["name"] == "selective_mae"
    with pytest.raises(ConfigError, match="recon_ratio"):
        load_recipe(PretrainConfig, ROOT / "configs/pretrain/selective_mae_quickstart.yaml",
                    ["objective.recon_ratio=0.9"])
    with pytest.raises(ConfigError, match="curriculum"):
        load_recipe(PretrainConfig, ROOT / "configs/pretrain/selective_mae_quickstart.yaml",
                    ["objective.curriculum=[0.5, 0.2, 0.3, 0.4]"])


def test_bf16_weights_and_image_train():
    """What a bf16 DeepSpeed engine feeds the objective: bf16 weights and image, float32 metadata."""
    smae = make_smae().to(torch.bfloat16)
    batch = make_batch()
    batch["image"] = batch["image"].to(torch.bfloat16)
    out = smae(batch)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in smae.parameters())


def test_per_sample_losses_and_sample_weights_for_loop_curation():
    """The loop's loss-based curation (curation.mode: loss) reads per_sample_loss and passes sample_weight."""
    smae = make_smae()
    batch = make_batch(b=2, t=2)
    batch["key"] = ["a", "b"]
    torch.manual_seed(3)
    out = smae(batch)
    assert out["per_sample_loss"].shape == (2,) and torch.isfinite(out["per_sample_loss"]).all()
    torch.manual_seed(3)
    weighted = smae(dict(batch, sample_weight=torch.tensor([2.0, 0.0])))["loss"]
    # frames of sample "a" are rows 0-1 of 4: weight 2 on them, 0 on sample "b"; mean over rows
    assert weighted.item() == pytest.approx(out["per_sample_loss"][0].item() * 2 * 2 / 4, rel=1e-4)

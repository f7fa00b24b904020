"""Contract tests for the band-agnostic ViT backbone (tiny, CPU-fast)."""

import json

import pytest
import torch

from pretrain.models import SIZES, SpectralLinear, ViT, build_backbone, sincos_2d

P = 8


def tiny(**kw):
    torch.manual_seed(0)
    return build_backbone("vit", "tiny", depth=2, patch_size=P, **kw)


def inputs(c, b=2, size=32):
    g = torch.Generator().manual_seed(c)
    return (torch.randn(b, c, size, size, generator=g), torch.linspace(450.0, 2200.0, c),
            torch.full((b,), 10.0))


def test_build_backbone_overrides_and_sizes():
    m = tiny()
    assert (m.embed_dim, m.depth, m.num_heads, m.patch_size) == (192, 2, 3, P)
    assert SIZES["base"] == dict(embed_dim=768, depth=12, num_heads=12)
    with pytest.raises(ValueError):
        build_backbone("nope")


@pytest.mark.parametrize("c", [2, 12, 30])
def test_any_band_count_same_weights(c):
    m = tiny()
    x, wl, gsd = inputs(c)
    f = m.forward_features(x, wl, gsd, return_layers=(0, -1))
    assert f["tokens"].shape == (2, 16, 192)
    assert f["cls"].shape == f["pooled"].shape == (2, 192)
    assert [t.shape for t in f["layers"]] == [(2, 16, 192)] * 2
    assert torch.allclose(f["pooled"], f["tokens"].mean(1))
    assert m(x, wl, gsd).shape == (2, 192)
    assert torch.isfinite(f["tokens"]).all()


def test_patch_embed_scale_independent_of_band_count():
    # 1/sqrt(C) scaling: independent unit-variance bands give similar token scale for any C.
    m = tiny()
    stds = [m.patch_embed(*inputs(c, b=4)[:2]).std().item() for c in (2, 12, 30)]
    assert max(stds) / min(stds) < 1.5, stds


def test_gradient_reaches_every_parameter():
    m = tiny()
    x, wl, gsd = inputs(12)
    m(x, wl, gsd).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_non_multiple_image_size_raises():
    m = tiny()
    with pytest.raises(ValueError, match="30x32"):
        m(torch.randn(1, 3, 30, 32), torch.tensor([490.0, 560.0, 665.0]), torch.tensor([10.0]))


def test_mismatched_band_sets_raise():
    m = tiny()
    wl = torch.tensor([[490.0, 560.0], [490.0, 665.0]])
    with pytest.raises(ValueError):
        m(torch.randn(2, 2, 32, 32), wl, torch.tensor([10.0, 10.0]))


def test_wavelengths_per_sample_rows_equal_ok():
    m = tiny()
    x, wl, gsd = inputs(4)
    assert torch.allclose(m(x, wl, gsd), m(x, wl.expand(2, 4), gsd))


def test_gsd_changes_output():
    m = tiny().eval()
    x, wl, gsd = inputs(4)
    assert not torch.allclose(m(x, wl, gsd), m(x, wl, gsd * 3), atol=1e-5)


def test_wavelength_changes_output():
    m = tiny().eval()
    x, wl, gsd = inputs(4)
    wl2 = wl.clone()
    wl2[1] += 40.0
    assert not torch.allclose(m(x, wl, gsd), m(x, wl2, gsd), atol=1e-5)


def test_rebuild_from_arch_args():
    m = tiny(drop_path_rate=0.1)
    args = json.loads(json.dumps(m.arch_args))  # must survive a JSON round trip
    m2 = ViT(**args)
    m2.load_state_dict(m.state_dict(), strict=True)
    x, wl, gsd = inputs(5)
    assert torch.allclose(m.eval()(x, wl, gsd), m2.eval()(x, wl, gsd))


def test_no_weight_decay_names_exist():
    m = tiny()
    names = dict(m.named_parameters())
    nwd = m.no_weight_decay()
    assert "cls_token" in nwd and "patch_embed.bias" in nwd and nwd <= names.keys()
    assert "patch_embed.basis" not in nwd


def test_sincos_2d_scale():
    pe = sincos_2d(4, 4, 16, torch.tensor([1.0, 2.0]))
    assert pe.shape == (2, 16, 16)
    # Same ground distance, same code: patch 2 at scale 1 == patch 1 at scale 2 (row 0).
    assert torch.allclose(pe[0, 2], pe[1, 1], atol=1e-6)
    assert sincos_2d(3, 5, 8).shape == (1, 15, 8)


def test_spectral_linear_shapes():
    head = SpectralLinear(16, 4, rank=2, wave_dim=8)
    y = head(torch.randn(3, 5, 16), torch.tensor([500.0, 800.0, 1600.0]))
    assert y.shape == (3, 5, 3, 4)


def test_series_input_is_frame_major_and_one_frame_equals_an_image():
    m = tiny().eval()
    x, wl, gsd = inputs(4)
    f1 = m.forward_features(x, wl, gsd)
    f5 = m.forward_features(x[:, None], wl, gsd)               # (B, 1, C, H, W)
    assert torch.allclose(f1["tokens"], f5["tokens"], atol=1e-5)
    series = torch.stack([x, x.flip(-1), x * 0.5], 1)           # (B, 3, C, H, W)
    f = m.forward_features(series, wl, gsd)
    assert f["tokens"].shape == (2, 3 * 16, 192)
    swapped = m.forward_features(series[:, [1, 0, 2]], wl, gsd)["tokens"].view(2, 3, 16, -1)
    # frame order is encoded: swapping two frames is not just a permutation of the tokens
    assert not torch.allclose(swapped[:, 1], f["tokens"].view(2, 3, 16, -1)[:, 0], atol=1e-4)


def test_time_and_location_codes():
    m = tiny(time_loc=True).eval()
    x, wl, gsd = inputs(4)
    times, lonlat = torch.tensor([19000.0, 19180.0], dtype=torch.float64), torch.tensor([[10.0, 45.0], [-60.0, -5.0]])
    plain = m(x, wl, gsd)
    with_meta = m(x, wl, gsd, times=times, lonlat=lonlat)
    assert not torch.allclose(plain, with_meta, atol=1e-5)
    assert not torch.allclose(with_meta, m(x, wl, gsd, times=times + 90, lonlat=lonlat), atol=1e-5)
    assert not torch.allclose(with_meta, m(x, wl, gsd, times=times, lonlat=lonlat + 5), atol=1e-5)
    assert torch.allclose(plain, tiny(time_loc=False).eval()(x, wl, gsd, times=times, lonlat=lonlat))
    # Season and longitude are cyclic: 31 Dec is next to 1 Jan, -180° is 180°.
    from pretrain.models.pos_embed import location_code, time_code
    new_year = torch.tensor([19357.9, 19358.1, 19358.1 + 182], dtype=torch.float64)   # around 2023-01-01
    season = time_code(new_year, 64)[:, 32:]
    assert (season[0] - season[1]).norm() < 0.2 * (season[0] - season[2]).norm()
    assert torch.allclose(location_code(torch.tensor([[-180.0, 3.0]]), 32), location_code(torch.tensor([[180.0, 3.0]]), 32), atol=1e-5)
    # Series: one date per frame; the learned scales get gradients.
    m.train()
    series = torch.stack([x, x], 1)
    out = m(series, wl, gsd, times=torch.tensor([[19000.0, 19030.0]] * 2), lonlat=lonlat)
    out.sum().backward()
    assert m.time_scale.grad.abs() > 0 and m.loc_scale.grad.abs() > 0
    with pytest.raises(ValueError, match="dates per sample"):
        m(series, wl, gsd, times=times, lonlat=lonlat)


def test_metadata_dropout_only_in_training():
    m = tiny(time_loc=True, meta_drop_rate=1.0)
    x, wl, gsd = inputs(4)
    meta = dict(times=torch.tensor([19000.0, 19100.0]), lonlat=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    m.train()
    assert torch.allclose(m.embed(x, wl, gsd, **meta), m.embed(x, wl, gsd))
    m.eval()
    assert not torch.allclose(m.embed(x, wl, gsd, **meta), m.embed(x, wl, gsd))


def test_grad_checkpointing_same_values_and_grads():
    x, wl, gsd = inputs(6)
    grads = []
    for ckpt in (False, True):
        m = tiny()
        m.set_grad_checkpointing(ckpt)
        m.train()
        out = m(x, wl, gsd)
        out.square().sum().backward()
        grads.append((out.detach(), m.blocks[0].attn.qkv.weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


@pytest.mark.parametrize("objective", ["mae", "selective_mae"])
@pytest.mark.parametrize("size", list(SIZES))
def test_every_size_with_every_mim_objective(size, objective):
    """Real widths and heads of every size (depth 1 and 64 px chips keep large/huge fast on CPU)."""
    from pretrain.objectives import build_objective

    torch.manual_seed(0)
    bb = build_backbone("vit", size, depth=1, patch_size=16)
    assert (bb.embed_dim, bb.num_heads) == (SIZES[size]["embed_dim"], SIZES[size]["num_heads"])
    obj = build_objective(objective, bb, decoder_dim=512, decoder_depth=1, decoder_heads=16)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 1, 5, 64, 64, generator=g), "valid": torch.ones(2, 1, 64, 64, dtype=torch.bool),
             "wavelengths_nm": torch.tensor([490.0, 560.0, 665.0, 842.0, 1610.0]).expand(2, 5),
             "gsd_m": torch.tensor([10.0, 30.0])}
    out = obj(batch)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0
    out["loss"].backward()
    missing = [n for n, p in obj.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing

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

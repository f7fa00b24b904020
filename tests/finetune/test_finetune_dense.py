"""Dense heads keep full resolution: the pixel path (finetune.heads.PixelPath / FullResFusion).

The learning test is the point of the pixel path: labels that are a per-pixel linear function of
the bands, with no spatial structure at all (every pixel drawn independently), so nothing at the
patch-token resolution can predict them. The new heads must reach near-perfect mIoU; the same
heads without the pixel path must stay near chance (the test can fail).
"""
import numpy as np
import pytest
import torch

from finetune.config import FinetuneSpec
from finetune.data import Task
from finetune.heads import DECODERS, DenseModel, FullResFusion, PixelPath
from finetune.metrics import segmentation_metrics
from finetune.train import finetune
from pretrain.models import build_backbone

WL4 = torch.tensor([490.0, 560.0, 665.0, 833.0])
ENMAP_WL = torch.linspace(420.0, 2450.0, 224)        # a 224-band hyperspectral band set


def tiny(depth=2, patch=4):
    torch.manual_seed(0)
    return build_backbone("vit", "tiny", depth=depth, patch_size=patch, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("head", list(DECODERS))
@pytest.mark.parametrize("wl", [WL4, ENMAP_WL], ids=["4 bands", "224 bands"])
@pytest.mark.parametrize("in_bands", [False, True], ids=["generated", "free"])
def test_dense_output_full_resolution(head, wl, in_bands):
    """(B, C, H, W) -> (B, K, H, W) for any band count; gradients reach the pixel path; with
    the class layer reading only the pixel path (set_pixel_linear), a change of one pixel's
    spectrum changes the output at that pixel and nowhere else: detail below the patch size."""
    m = DenseModel(tiny(), 3, head, in_bands=len(wl) if in_bands else None)
    assert m.pixel_path and isinstance(m.head.fusion, FullResFusion)
    x = torch.randn(2, len(wl), 16, 24)
    y = m(x, wl, torch.full((2,), 10.0))
    assert y.shape == (2, 3, 16, 24) and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in m.head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    m.eval()
    fusion = m.head.fusion
    if in_bands:
        fusion.set_pixel_linear(torch.randn(3, len(wl)), torch.zeros(3))
    else:
        fusion.set_pixel_linear(torch.randn(3, fusion.pixel.dim), torch.zeros(3), on_features=True)
    with torch.no_grad():
        y = m(x, wl, torch.full((2,), 10.0))
        x2 = x.clone()
        x2[:, :, 5, 6] += 3.0                         # one pixel inside patch (1, 1) of a 4-px grid
        d = (m(x2, wl, torch.full((2,), 10.0)) - y).abs().sum(1)     # (B, H, W)
    assert (d[:, 5, 6] > 1e-3).all()
    d[:, 5, 6] = 0
    assert d.max() < 1e-5


@pytest.mark.parametrize("in_bands", [None, 224], ids=["generated", "free"])
def test_pixel_path_shapes_and_linearity(in_bands):
    pp = PixelPath(dim=8, in_bands=in_bands)
    x = torch.randn(3, 224, 5, 7)
    f = pp(x, ENMAP_WL)
    assert f.shape == (3, 8, 5, 7)
    # linear in the bands, per pixel: f(a x + b y) = a f(x) + b f(y), no spatial mixing
    y = torch.randn_like(x)
    assert torch.allclose(pp(2 * x - y, ENMAP_WL), 2 * f - pp(y, ENMAP_WL), atol=1e-4)
    assert torch.allclose(pp(x[:, :, 2:3, 3:4], ENMAP_WL), f[:, :, 2:3, 3:4], atol=1e-5)


def test_pixel_path_off_is_the_token_only_decoder():
    m = DenseModel(tiny(), 2, "light", pixel_path=False)
    assert not hasattr(m.head, "fusion") and m.head.out is not None
    assert m(torch.randn(1, 4, 16, 16), WL4, torch.full((1,), 10.0)).shape == (1, 2, 16, 16)


def pixelwise_task(n=48, size=16, bands=6, k=3, seed=0) -> Task:
    """Every pixel's spectrum drawn independently; label = argmax of a fixed linear map of it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, bands, size, size)).astype(np.float32)
    w = rng.normal(size=(k, bands)).astype(np.float32)
    y = np.einsum("kc,nchw->nkhw", w, x).argmax(1).astype(np.int64)
    is_test = np.zeros(n, bool)
    is_test[-8:] = True
    return Task(kind="segmentation", images=x, valid=np.ones((n, size, size), bool), targets=y,
                wavelengths_nm=np.linspace(490.0, 2200.0, bands).astype(np.float32),
                gsd_m=np.full(n, 10.0, np.float32), keys=[str(i) for i in range(n)],
                groups=[str(i) for i in range(n)], is_test=is_test, classes=tuple("abc"[:k]), sensor="s2",
                bands=[f"b{i}" for i in range(bands)], n_unlabelled=0)


@pytest.mark.parametrize("head", ["linear", "light"])
def test_dense_head_learns_a_per_pixel_linear_rule_and_token_only_cannot(head):
    task = pixelwise_task()
    y = task.targets[task.test_idx]
    miou = {}
    for name, pixel_path, pixel_init in (("trained", True, False), ("warm", True, True), ("tokens", False, False)):
        spec = FinetuneSpec(epochs=30, lr=3e-3, batch_size=8, head=head, pixel_path=pixel_path,
                            pixel_init=pixel_init, freeze_encoder=True, augment=False)
        out = finetune(tiny(), task, task.train_idx, spec, seed=0)
        assert out.shape == y.shape
        miou[name] = segmentation_metrics(y, out, task.classes, -1)["miou"]
    assert miou["trained"] > 0.9, miou     # the pixel path learns the rule from scratch
    # From the per-pixel linear start: the linear head keeps it; a nonlinear decoder fine-tuned
    # on pixels without any spatial structure overfits a little (this task is adversarial to it).
    assert miou["warm"] > (0.97 if head == "linear" else 0.9), miou
    assert miou["tokens"] < 0.45, miou     # token maps alone cannot: chance level (the test can fail)


def test_warm_start_equals_the_per_pixel_linear_model():
    """Right after warm_start the head outputs the fitted per-pixel linear model, for a free
    pixel conv (224 bands, more than the path's channels) and for the generated projection."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 224, 8, 8)).astype(np.float32)
    w = rng.normal(size=(4, 224)).astype(np.float32)
    y = np.einsum("kc,nchw->nkhw", w, x).argmax(1)
    y[0, 0, :3] = -1                                        # ignored pixels are left out
    for head, in_bands in (("upernet", 224), ("linear", 224), ("light", None)):
        m = DenseModel(tiny(), 4, head, in_bands=in_bands).eval()
        info = m.warm_start(x, y, np.arange(6), "segmentation", wavelengths_nm=ENMAP_WL.numpy())
        assert info["pixels"] == 6 * 64 - 3
        with torch.no_grad():
            pred = m(torch.from_numpy(x), ENMAP_WL, torch.full((6,), 10.0)).argmax(1).numpy()
        if in_bands:     # exact: the training pixels are separable, the fitted model separates them
            assert (pred == y)[y >= 0].mean() > 0.97, head
    # regression: a linear map of the bands is recovered exactly (ridge, standardised targets)
    t = np.einsum("c,nchw->nhw", w[0, :6], x[:, :6]).astype(np.float32) * 3.0 + 5.0
    m = DenseModel(tiny(), 1, "light", in_bands=6).eval()
    m.warm_start(x[:, :6], t, np.arange(6), "regression", scale=(5.0, 3.0))
    with torch.no_grad():
        pred = m(torch.from_numpy(x[:, :6]), WL4[:1].repeat(6) + torch.arange(6.0), torch.full((6,), 10.0))
    assert torch.allclose(pred[:, 0] * 3.0 + 5.0, torch.from_numpy(t), atol=1e-2)


def test_dense_linear_probe_reads_the_bands_too():
    """The dense linear probe (frozen token maps) also gets each pixel's bands: on the per-pixel
    rule it is near-perfect, the token-only probe (linear_probe.pixel_path=false) is at chance."""
    from finetune.config import LinearProbeSpec
    from finetune.train import extract_features, linear_probe

    task = pixelwise_task()
    y = task.targets[task.test_idx]
    feats = extract_features(tiny(), task, np.arange(len(task.keys)), dense=True)
    assert feats.shape[2:] == (4, 4)
    miou = {}
    for pixel_path in (True, False):
        out, _ = linear_probe(feats, task, task.train_idx, LinearProbeSpec(epochs=50, pixel_path=pixel_path), seed=0)
        miou[pixel_path] = segmentation_metrics(y, out, task.classes, -1)["miou"]
    assert miou[True] > 0.95 and miou[False] < 0.45, miou

"""Layer-wise lr decay groups and the classifier's shapes."""
import pytest
import torch

from finetune.heads import Classifier, layer_id, param_groups
from pretrain.models import build_backbone


def model(depth=3, head="linear"):
    torch.manual_seed(0)
    return Classifier(build_backbone("vit", "tiny", depth=depth, patch_size=8), 3, head)


def test_layer_ids():
    assert layer_id("encoder.patch_embed.basis", 3) == 0
    assert layer_id("encoder.cls_token", 3) == 0
    assert layer_id("encoder.blocks.0.attn.qkv.weight", 3) == 1
    assert layer_id("encoder.blocks.2.mlp.fc1.bias", 3) == 3
    assert layer_id("encoder.norm.weight", 3) == 4
    assert layer_id("head.weight", 3) == 4


def test_param_groups_ordered_input_to_head():
    m = model(depth=3)
    groups = param_groups(m, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    ids = [g["layer_id"] for g in groups]
    assert ids == sorted(ids) and ids[0] == 0 and ids[-1] == 4
    lrs = [g["lr"] for g in groups]
    assert lrs == sorted(lrs)
    by_id = {g["layer_id"]: g["lr"] for g in groups}
    assert by_id[0] == pytest.approx(1e-3 * 0.5**4)          # patch embed lowest
    for i in range(3):                                      # block i: lr * decay ** (depth - i)
        assert by_id[i + 1] == pytest.approx(1e-3 * 0.5 ** (3 - i))
    assert by_id[4] == pytest.approx(1e-3)                  # head full lr
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in m.named_parameters())   # each param exactly once
    for g in groups:
        for n, p in zip(g["names"], g["params"]):
            if p.ndim <= 1 or n == "encoder.cls_token":
                assert g["weight_decay"] == 0.0, n
            else:
                assert g["weight_decay"] == 0.05, n
    torch.optim.AdamW(groups)  # extra keys are accepted by the optimizer


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_classifier_shapes(head):
    m = model(depth=2, head=head)
    logits = m(torch.randn(2, 4, 16, 16), torch.tensor([490.0, 560.0, 665.0, 833.0]), torch.full((2,), 10.0))
    assert logits.shape == (2, 3)


# ---- dense heads and the multi-level adapter ---------------------------------------------------

from finetune.backbone import MultiLevelBackbone, default_layers  # noqa: E402
from finetune.heads import DECODERS, DenseModel  # noqa: E402

WL = torch.tensor([490.0, 560.0, 665.0, 833.0])


def tiny(depth=2, patch=4):
    torch.manual_seed(0)
    return build_backbone("vit", "tiny", depth=depth, patch_size=patch, embed_dim=32, num_heads=2)


@pytest.mark.parametrize("head", list(DECODERS))
@pytest.mark.parametrize("num_out", [3, 1])       # segmentation classes / one regression map
def test_dense_heads_forward_backward(head, num_out):
    m = DenseModel(tiny(), num_out, head)
    x = torch.randn(2, 4, 16, 24)
    y = m(x, WL, torch.full((2,), 10.0))
    assert y.shape == (2, num_out, 16, 24) and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in m.head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.encoder.patch_embed.basis.grad is not None                 # gradients reach the encoder
    assert len(m.layers) == (4 if head == "upernet" else 1)


def test_upernet_reads_four_levels_and_refuses_others():
    m = DenseModel(tiny(depth=4), 2, "upernet")
    assert m.layers == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="needs 4 layers"):
        DenseModel(tiny(depth=4), 2, "upernet", layers=(1, 3))


def test_multilevel_backbone_matches_forward_features():
    enc = tiny(depth=2).eval()
    bb = MultiLevelBackbone(enc, wavelengths_nm=WL.tolist(), gsd_m=10.0, layers=(0, 1))
    x = torch.randn(2, 4, 16, 24)
    maps = bb(x)
    assert bb.out_channels == [32, 32] and [tuple(m.shape) for m in maps] == [(2, 32, 4, 6)] * 2
    ref = enc.forward_features(x, WL, 10.0, return_layers=(0, 1))["layers"]
    for m, t in zip(maps, ref):                   # token (row-major) order -> grid, final-normed
        assert torch.allclose(m.flatten(2).transpose(1, 2), enc.norm(t), atol=1e-6)
    # the last level equals the encoder's own final tokens
    assert torch.allclose(maps[1].flatten(2).transpose(1, 2), enc.forward_features(x, WL, 10.0)["tokens"], atol=1e-5)
    # another band set per call (e.g. another sensor)
    assert bb(x[:, :2], wavelengths_nm=WL[:2])[0].shape == (2, 32, 4, 6)


def test_default_layers():
    assert default_layers(12) == (2, 5, 8, 11) and default_layers(24) == (5, 11, 17, 23)
    assert default_layers(2) == (0, 0, 1, 1) and default_layers(4) == (0, 1, 2, 3)


def test_frozen_encoder_groups_only_the_head():
    m = DenseModel(tiny(), 3, "light")
    m.encoder.requires_grad_(False)
    names = [n for g in param_groups(m, 1e-3, 0.05, 0.75) for n in g["names"]]
    assert names and all(n.startswith("head.") for n in names)

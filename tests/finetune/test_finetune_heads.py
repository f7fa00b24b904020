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

"""Classification heads on the encoder's `pooled` features, and layer-wise lr decay groups."""
from __future__ import annotations

import torch
from torch import nn


def linear_head(dim: int, num_classes: int) -> nn.Module:
    """(B, dim) -> (B, num_classes)."""
    head = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.01)  # small logits at start: near-uniform softmax
    nn.init.zeros_(head.bias)
    return head


def mlp_head(dim: int, num_classes: int) -> nn.Module:
    """(B, dim) -> LayerNorm -> Linear(dim) -> GELU -> Linear -> (B, num_classes)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), linear_head(dim, num_classes))


HEADS = {"linear": linear_head, "mlp": mlp_head}


class Classifier(nn.Module):
    """encoder + head: image (B, C, H, W), wavelengths_nm (C,), gsd_m (B,) -> logits (B, K)."""

    def __init__(self, encoder: nn.Module, num_classes: int, head: str = "linear"):
        super().__init__()
        self.encoder = encoder
        self.head = HEADS[head](encoder.embed_dim, num_classes)

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(image, wavelengths_nm, gsd_m)["pooled"])


def layer_id(name: str, depth: int) -> int:
    """Depth of a Classifier parameter: 0 patch embed + cls token, i+1 block i, depth+1 the rest
    (final norm and head)."""
    if name.startswith(("encoder.patch_embed.", "encoder.cls_token")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def param_groups(model: Classifier, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with lr * layer_decay ** (depth + 1 - layer_id): block i gets
    lr * layer_decay ** (depth - i), the patch embedding the least, the head the full lr.

    Why: pretrained low layers hold generic features that large updates would destroy, while
    the head starts from scratch. Biases, norms and the cls token get no weight decay.
    Groups are returned ordered from the input (lowest lr) to the head; each carries
    `lr_scale` so schedulers can rescale it and `layer_id` for inspection.
    """
    depth = model.encoder.depth
    no_decay = {f"encoder.{n}" for n in model.encoder.no_weight_decay()}
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        decays = name not in no_decay and p.ndim > 1
        scale = layer_decay ** (depth + 1 - lid)
        g = groups.setdefault((lid, decays), {"params": [], "names": [], "layer_id": lid, "lr_scale": scale,
                                              "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]

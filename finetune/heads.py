"""Task heads and models, and layer-wise lr decay groups.

Image-level heads (classification, multi-label) sit on the encoder's `pooled` features:
  linear  Linear(D, K)
  mlp     LayerNorm -> Linear(D, D) -> GELU -> Linear(D, K)
Dense heads (segmentation: K class maps; regression: one map) read patch-grid feature maps
(finetune.backbone.feature_maps) and return (B, K, H, W) at input resolution:
  linear   1x1 conv on the last block's map, bilinear upsampling (the linear-probe decoder)
  light    the last block's map through conv + x2 upsampling stages down to stride 1
  upernet  UPerNet over 4 intermediate blocks: the ViT maps are rescaled to strides p/4, p/2,
           p, 2p (transposed convs / max-pool, as ViT-UPerNet does), then a pyramid-pooling
           module on the coarsest, a top-down FPN, and a fusion of all levels
Dense heads use GroupNorm (not BatchNorm): small downstream batches, batch-size independent.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from finetune.backbone import default_layers, feature_maps

IMAGE_HEADS = ("linear", "mlp")
DENSE_HEADS = ("linear", "light", "upernet")


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
    """encoder + image head: image (B, C, H, W), wavelengths_nm (C,), gsd_m (B,) -> logits (B, K).
    Single-label (softmax) and multi-label (sigmoid per class) differ only in the loss."""

    def __init__(self, encoder: nn.Module, num_classes: int, head: str = "linear"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"image head {head!r} unknown (known: {', '.join(HEADS)})")
        self.encoder = encoder
        self.head = HEADS[head](encoder.embed_dim, num_classes)

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(image, wavelengths_nm, gsd_m)["pooled"])


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """conv k x k -> GroupNorm -> GELU, same size."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.GroupNorm(math.gcd(8, cout), cout), nn.GELU())


class LinearDecoder(nn.Module):
    """[(B, D, h, w)] -> 1x1 conv on the last map -> (B, K, h, w) (upsampled by DenseModel)."""

    levels = 1

    def __init__(self, dim: int, num_out: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, num_out, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.proj(maps[-1])


class LightDecoder(nn.Module):
    """[(B, D, h, w)] -> 3x3 conv to `width`, then ceil(log2 p) stages of x2 upsampling +
    3x3 conv (halving channels, at least 32) -> 1x1 conv -> (B, K, ~h*p, ~w*p)."""

    levels = 1

    def __init__(self, dim: int, num_out: int, patch_size: int, width: int = 128):
        super().__init__()
        stages, c = [_conv(dim, width)], width
        for _ in range(max(0, math.ceil(math.log2(patch_size)))):
            stages += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(c, max(32, c // 2))]
            c = max(32, c // 2)
        self.stages = nn.Sequential(*stages)
        self.out = nn.Conv2d(c, num_out, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.out(self.stages(maps[-1]))


class UPerNetDecoder(nn.Module):
    """4 ViT maps (B, D, h, w) -> (B, K, 4h, 4w) (stride p/4 of the input).

    Rescale: level 0 x4 (two 2x2 transposed convs), level 1 x2, level 2 as is, level 3 /2
    (max-pool), giving a feature pyramid from one-resolution ViT features. Pyramid pooling
    (adaptive average pools 1, 2, 3, 6) on the coarsest level, lateral 1x1 convs, top-down
    additions, a 3x3 conv per level, all levels upsampled to the finest, concatenated, fused
    by a 3x3 conv, classified by a 1x1 conv.
    """

    levels = 4
    POOL_SCALES = (1, 2, 3, 6)

    def __init__(self, dim: int, num_out: int, patch_size: int, width: int = 128):
        super().__init__()
        up = lambda: nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.GroupNorm(math.gcd(8, dim), dim),  # noqa: E731
                                   nn.GELU())
        self.rescale = nn.ModuleList([
            nn.Sequential(up(), nn.ConvTranspose2d(dim, dim, 2, stride=2)),
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, ceil_mode=True),
        ])
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv(dim, width, 1)) for s in self.POOL_SCALES)
        self.ppm_out = _conv(dim + len(self.POOL_SCALES) * width, width)
        self.lateral = nn.ModuleList(_conv(dim, width, 1) for _ in range(3))
        self.fpn = nn.ModuleList(_conv(width, width) for _ in range(3))
        self.fuse = _conv(4 * width, width)
        self.out = nn.Conv2d(width, num_out, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        if len(maps) != 4:
            raise ValueError(f"UPerNet takes 4 feature maps, got {len(maps)}")
        x = [f(m) for f, m in zip(self.rescale, maps)]          # strides p/4, p/2, p, 2p
        top = x[3]
        pooled = [F.interpolate(p(top), size=top.shape[2:], mode="bilinear", align_corners=False) for p in self.ppm]
        lat = [lateral(m) for lateral, m in zip(self.lateral, x[:3])] + [self.ppm_out(torch.cat([top, *pooled], 1))]
        for i in (2, 1, 0):                                     # top-down pathway
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[2:], mode="bilinear", align_corners=False)
        outs = [conv(m) for conv, m in zip(self.fpn, lat[:3])] + [lat[3]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.out(self.fuse(torch.cat(outs, 1)))


DECODERS = {"linear": LinearDecoder, "light": LightDecoder, "upernet": UPerNetDecoder}


class DenseModel(nn.Module):
    """encoder + dense decoder: image (B, C, H, W), wavelengths_nm (C,), gsd_m (B,) ->
    (B, num_out, H, W). The decoder reads feature_maps of `layers` (default: the last block for
    linear/light, 4 evenly spaced blocks for upernet)."""

    def __init__(self, encoder: nn.Module, num_out: int, head: str = "upernet", layers: tuple[int, ...] = ()):
        super().__init__()
        if head not in DECODERS:
            raise ValueError(f"dense head {head!r} unknown (known: {', '.join(DECODERS)})")
        self.encoder = encoder
        cls = DECODERS[head]
        self.layers = tuple(layers) or (default_layers(encoder.depth) if cls.levels == 4 else (encoder.depth - 1,))
        if len(self.layers) != cls.levels and cls.levels == 4:
            raise ValueError(f"{head} needs 4 layers, got {self.layers}")
        self.head = cls(encoder.embed_dim, num_out, encoder.patch_size)

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m: torch.Tensor) -> torch.Tensor:
        maps = feature_maps(self.encoder, image, wavelengths_nm, gsd_m, self.layers)
        return self.decode(maps, image.shape[2:])

    def decode(self, maps: list[torch.Tensor], size) -> torch.Tensor:
        """Feature maps -> (B, num_out, *size) (bilinear resize of the decoder's output)."""
        out = self.head(maps)
        return out if out.shape[2:] == tuple(size) else F.interpolate(out, size=tuple(size), mode="bilinear",
                                                                      align_corners=False)


def layer_id(name: str, depth: int) -> int:
    """Depth of a model parameter: 0 patch embed + cls token, i+1 block i, depth+1 the rest
    (final norm and head)."""
    if name.startswith(("encoder.patch_embed.", "encoder.cls_token")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with lr * layer_decay ** (depth + 1 - layer_id): block i gets
    lr * layer_decay ** (depth - i), the patch embedding the least, the head the full lr.
    `model` has `.encoder` (Classifier or DenseModel).

    Why: pretrained low layers hold generic features that large updates would destroy, while
    the head starts from scratch. Biases, norms and the cls token get no weight decay.
    Groups are returned ordered from the input (lowest lr) to the head; each carries
    `lr_scale` so schedulers can rescale it and `layer_id` for inspection. Frozen parameters
    (requires_grad False) are left out.
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

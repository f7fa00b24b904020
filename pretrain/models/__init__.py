"""Backbone registry: ``build_backbone("vit", "tiny", depth=2, patch_size=8)``."""

from __future__ import annotations

from torch import nn

from pretrain.models.patch_embed import SpectralLinear, SpectralPatchEmbed
from pretrain.models.pos_embed import sincos_2d
from pretrain.models.vit import ViT

__all__ = ["BACKBONES", "SIZES", "build_backbone", "ViT", "SpectralPatchEmbed", "SpectralLinear",
           "sincos_2d"]

BACKBONES = {"vit": ViT}

# timm / ViT paper widths: embed_dim / depth / num_heads.
SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


def build_backbone(arch: str = "vit", size: str = "tiny", **overrides) -> nn.Module:
    """Build a registered backbone at a named size; keyword overrides win over the size preset."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone {arch!r}; known: {sorted(BACKBONES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {list(SIZES)}")
    return BACKBONES[arch](**{**SIZES[size], **overrides})

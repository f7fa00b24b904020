"""Sensor-agnostic ViT encoder: wavelength-conditioned patch embed + GSD-scaled sin-cos positions
+ timm transformer blocks. Architecture only (no distributed code, logging or configs)."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from pretrain.models.patch_embed import SpectralPatchEmbed
from pretrain.models.pos_embed import sincos_2d

__all__ = ["ViT", "init_weights"]


def init_weights(m: nn.Module) -> None:
    """ViT-style init: trunc_normal(0.02) linears, zero biases, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _gsd_vector(gsd_m, batch: int, device) -> torch.Tensor:
    """gsd_m float / (B,) tensor -> (B,) float32 on device."""
    g = torch.as_tensor(gsd_m, dtype=torch.float32, device=device).reshape(-1)
    if g.numel() == 1:
        g = g.expand(batch)
    if g.shape[0] != batch:
        raise ValueError(f"gsd_m has {g.shape[0]} values for a batch of {batch}")
    return g


class ViT(nn.Module):
    """Band-agnostic ViT encoder.

    Inputs everywhere: image (B, C, H, W) with H, W multiples of patch_size; wavelengths_nm (C,)
    or (B, C) (one band set per batch); gsd_m (B,) metres per pixel.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        spectral_rank: int = 8,
        wave_dim: int = 128,
        ref_gsd_m: float = 10.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        # Plain JSON-serialisable kwargs so an exported model can be rebuilt as ViT(**arch_args).
        self.arch_args = dict(
            embed_dim=int(embed_dim), depth=int(depth), num_heads=int(num_heads),
            patch_size=int(patch_size), mlp_ratio=float(mlp_ratio),
            spectral_rank=int(spectral_rank), wave_dim=int(wave_dim),
            ref_gsd_m=float(ref_gsd_m), drop_path_rate=float(drop_path_rate),
        )
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_size, self.ref_gsd_m = patch_size, float(ref_gsd_m)
        self.spectral_rank, self.wave_dim = spectral_rank, wave_dim

        self.patch_embed = SpectralPatchEmbed(embed_dim, patch_size, spectral_rank, wave_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=norm)
            for i in range(depth)
        )
        self.norm = norm(embed_dim)

        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)  # the spectral basis is a bare Parameter: keeps its conv-like init

    def no_weight_decay(self) -> set[str]:
        """Names of params usually excluded from weight decay: cls token, biases, norm weights."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n == "cls_token"}

    def embed(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m) -> torch.Tensor:
        """Patch tokens with GSD-scaled position code, no cls: (B, C, H, W) -> (B, L, D)."""
        b, _, h, w = image.shape
        tokens = self.patch_embed(image, wavelengths_nm)  # raises on bad sizes
        p = self.patch_size
        scale = _gsd_vector(gsd_m, b, image.device) / self.ref_gsd_m
        pos = sincos_2d(h // p, w // p, self.embed_dim, scale)  # (B, L, D)
        return tokens + pos.to(tokens.dtype)

    def _run_blocks(self, tokens: torch.Tensor, return_layers=()) -> tuple[torch.Tensor, list]:
        """(B, N, D) -> final normed (B, 1+N, D) and un-normed patch tokens after requested blocks."""
        if any(not -self.depth <= i < self.depth for i in return_layers):
            raise ValueError(f"return_layers {return_layers} out of range for depth {self.depth}")
        want = {i % self.depth for i in return_layers}  # allow negative indices
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], 1)
        layers = {}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in want:
                layers[i] = x[:, 1:]
        return self.norm(x), [layers[i % self.depth] for i in return_layers]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend cls (no position), run blocks, final norm: (B, N, D) -> (B, 1+N, D)."""
        return self._run_blocks(tokens)[0]

    def forward_features(
        self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m, return_layers: tuple = ()
    ) -> dict:
        """Returns dict:
        tokens (B, L, D) final normed patch tokens; cls (B, D); pooled (B, D) mean of `tokens`;
        layers: list of (B, L, D) patch tokens output by the blocks in `return_layers`
        (0-based, negatives allowed), UN-normed (raw residual stream; heads add their own norm).
        """
        x, layers = self._run_blocks(self.embed(image, wavelengths_nm, gsd_m), return_layers)
        tokens = x[:, 1:]
        return {"tokens": tokens, "cls": x[:, 0], "pooled": tokens.mean(1), "layers": layers}

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m) -> torch.Tensor:
        """(B, C, H, W) -> pooled (B, D)."""
        return self.forward_features(image, wavelengths_nm, gsd_m)["pooled"]

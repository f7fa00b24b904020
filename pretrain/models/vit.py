"""Sensor-agnostic ViT encoder: wavelength-conditioned patch embed + GSD-scaled sin-cos positions
(+ optional date and location codes) + timm transformer blocks. Architecture only (no distributed
code, logging or configs)."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.models.patch_embed import SpectralPatchEmbed
from pretrain.models.pos_embed import frame_code, location_code, sincos_2d, time_code

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

    Inputs everywhere: image (B, C, H, W) with H, W multiples of patch_size, or a series
    (B, T, C, H, W) embedded jointly as T*L tokens (frame-major); wavelengths_nm (C,) or (B, C)
    (one band set per batch); gsd_m (B,) metres per pixel; optional times (B,) / (B, T) days
    since 1970 and lonlat (B, 2) degrees, used only when built with ``time_loc=True``.

    ``time_loc`` (Prithvi-EO-2.0 TL style): a date code and a location code are added to every
    token, each times a learned scalar (init 0.1) so they start as a small perturbation; without
    times/lonlat in a call they are simply not added (that is also what ``meta_drop_rate`` does
    per sample during training, as in Prithvi's pretraining, so the model copes without them).
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
        time_loc: bool = False,
        meta_drop_rate: float = 0.0,
    ):
        super().__init__()
        # Plain JSON-serialisable kwargs so an exported model can be rebuilt as ViT(**arch_args).
        self.arch_args = dict(
            embed_dim=int(embed_dim), depth=int(depth), num_heads=int(num_heads),
            patch_size=int(patch_size), mlp_ratio=float(mlp_ratio),
            spectral_rank=int(spectral_rank), wave_dim=int(wave_dim),
            ref_gsd_m=float(ref_gsd_m), drop_path_rate=float(drop_path_rate),
            time_loc=bool(time_loc), meta_drop_rate=float(meta_drop_rate),
        )
        if not 0.0 <= meta_drop_rate <= 1.0:
            raise ValueError(f"meta_drop_rate must be in [0, 1], got {meta_drop_rate}")
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_size, self.ref_gsd_m = patch_size, float(ref_gsd_m)
        self.spectral_rank, self.wave_dim = spectral_rank, wave_dim
        self.time_loc, self.meta_drop_rate = bool(time_loc), float(meta_drop_rate)
        self.grad_checkpointing = False

        self.patch_embed = SpectralPatchEmbed(embed_dim, patch_size, spectral_rank, wave_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=norm)
            for i in range(depth)
        )
        self.norm = norm(embed_dim)
        if self.time_loc:
            self.time_scale = nn.Parameter(torch.tensor(0.1))
            self.loc_scale = nn.Parameter(torch.tensor(0.1))

        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)  # the spectral basis is a bare Parameter: keeps its conv-like init

    def no_weight_decay(self) -> set[str]:
        """Names of params usually excluded from weight decay: cls token, biases, norm weights."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n == "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of storing them (less memory,
        ~1/3 more compute). Only active while training with gradients enabled."""
        self.grad_checkpointing = bool(enable)

    def position_code(self, grid_h: int, grid_w: int, dim: int, gsd_m, frames: int = 0) -> torch.Tensor:
        """GSD-scaled 2-D sin-cos code of a patch grid (+ frame-order code for a series).

        gsd_m (B,). frames 0: single images -> (B, L, dim); frames T >= 1: (B, T*L, dim),
        frame-major. Decoders call it with their own width so all share one convention.
        """
        scale = torch.as_tensor(gsd_m, dtype=torch.float32).reshape(-1) / self.ref_gsd_m
        pos = sincos_2d(grid_h, grid_w, dim, scale)  # (B, L, dim)
        if not frames:
            return pos
        fc = frame_code(frames, dim, pos.device)  # (T, dim), zero for frame 0
        return (pos[:, None] + fc[None, :, None]).flatten(1, 2)

    def metadata_code(self, times, lonlat, batch: int, frames: int, device) -> torch.Tensor | None:
        """Date + location code per token group, or None (time_loc off, or neither given).

        times (B,) or (B, T) days since 1970 (T = frames, 1 for single images); lonlat (B, 2).
        Returns (B, T, 1, D) float32, to be broadcast over the L tokens of each frame.
        """
        if not self.time_loc or (times is None and lonlat is None):
            return None
        d, t = self.embed_dim, max(frames, 1)
        code = torch.zeros(batch, t, 1, d, device=device)
        if times is not None:
            tm = torch.as_tensor(times, device=device).reshape(batch, -1)
            if tm.shape[1] != t:
                raise ValueError(f"times has {tm.shape[1]} dates per sample for {t} frames")
            code = code + self.time_scale * time_code(tm, d)[:, :, None]
        if lonlat is not None:
            ll = torch.as_tensor(lonlat, device=device).reshape(batch, 2)
            code = code + self.loc_scale * location_code(ll, d)[:, None, None]
        if self.training and self.meta_drop_rate > 0:
            keep = torch.rand(batch, 1, 1, 1, device=device) >= self.meta_drop_rate
            code = code * keep
        return code

    def embed(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m, times=None,
              lonlat=None) -> torch.Tensor:
        """Patch tokens with GSD-scaled position code (+ date/location codes), no cls:
        (B, C, H, W) -> (B, L, D); a series (B, T, C, H, W) -> (B, T*L, D), frame-major."""
        frames = image.shape[1] if image.ndim == 5 else 0
        if image.ndim not in (4, 5):
            raise ValueError(f"image must be (B, C, H, W) or (B, T, C, H, W), got {tuple(image.shape)}")
        b, h, w = image.shape[0], image.shape[-2], image.shape[-1]
        tokens = self.patch_embed(image.flatten(0, 1) if frames else image, wavelengths_nm)  # raises on bad sizes
        p = self.patch_size
        gsd = _gsd_vector(gsd_m, b, image.device)
        pos = self.position_code(h // p, w // p, self.embed_dim, gsd, frames)
        tokens = tokens.reshape(b, -1, self.embed_dim) + pos.to(tokens.dtype)
        meta = self.metadata_code(times, lonlat, b, frames, image.device)
        if meta is not None:
            n = tokens.shape[1] // meta.shape[1]
            tokens = (tokens.view(b, meta.shape[1], n, -1) + meta.to(tokens.dtype)).flatten(1, 2)
        return tokens

    def _run_blocks(self, tokens: torch.Tensor, return_layers=()) -> tuple[torch.Tensor, list]:
        """(B, N, D) -> final normed (B, 1+N, D) and un-normed patch tokens after requested blocks."""
        if any(not -self.depth <= i < self.depth for i in return_layers):
            raise ValueError(f"return_layers {return_layers} out of range for depth {self.depth}")
        want = {i % self.depth for i in return_layers}  # allow negative indices
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], 1)
        layers = {}
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
            if i in want:
                layers[i] = x[:, 1:]
        return self.norm(x), [layers[i % self.depth] for i in return_layers]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend cls (no position), run blocks, final norm: (B, N, D) -> (B, 1+N, D)."""
        return self._run_blocks(tokens)[0]

    def forward_features(
        self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m, return_layers: tuple = (),
        times=None, lonlat=None,
    ) -> dict:
        """Returns dict:
        tokens (B, L, D) final normed patch tokens; cls (B, D); pooled (B, D) mean of `tokens`;
        layers: list of (B, L, D) patch tokens output by the blocks in `return_layers`
        (0-based, negatives allowed), UN-normed (raw residual stream; heads add their own norm).
        For a series (B, T, C, H, W), L becomes T*L (frame-major; reshape to (B, T, L, D)).
        """
        tokens = self.embed(image, wavelengths_nm, gsd_m, times, lonlat)
        x, layers = self._run_blocks(tokens, return_layers)
        tokens = x[:, 1:]
        return {"tokens": tokens, "cls": x[:, 0], "pooled": tokens.mean(1), "layers": layers}

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m, times=None,
                lonlat=None) -> torch.Tensor:
        """(B, C, H, W) or (B, T, C, H, W) -> pooled (B, D)."""
        return self.forward_features(image, wavelengths_nm, gsd_m, times=times, lonlat=lonlat)["pooled"]

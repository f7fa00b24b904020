"""Masked autoencoder objective (He et al. 2022) for the band-agnostic ViT, with nodata/cloud-aware
loss.

Per sample a random subset of tokens is kept (torch RNG, saved per rank in checkpoints); the
encoder sees only those; a light self-attention decoder gets mask tokens at the removed
positions; the loss is MSE against per-patch normalised pixels (norm_pix) on removed patches
and valid pixels only. Frames of a series are independent samples by default (``frames:
joint`` embeds the T frames as one token sequence instead). The decoder's output head
generates its per-band weights from wavelengths (SpectralLinear), so one decoder reconstructs
any band set.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from pretrain.models.patch_embed import SpectralLinear
from pretrain.models.vit import init_weights
from pretrain.objectives._mim import (FRAMES, masked_patch_stats, norm_pix_targets, patch_loss, patchify,
                                      prepare, unpatchify)

__all__ = ["MAE", "patchify", "unpatchify", "random_masking"]

_masked_patch_stats = masked_patch_stats  # old name, kept for callers


def random_masking(tokens: torch.Tensor, mask_ratio: float):
    """Per-sample random masking with torch's global RNG on the tokens' device.

    tokens (B, L, D) -> visible (B, K, D) with K = int(L * (1 - mask_ratio)),
    mask (B, L) float (1 = removed), ids_restore (B, L) long (undoes the shuffle).
    """
    b, n, d = tokens.shape
    keep = int(n * (1 - mask_ratio))
    noise = torch.rand(b, n, device=tokens.device)
    ids_shuffle = noise.argsort(dim=1)  # ascending: smallest noise is kept
    ids_restore = ids_shuffle.argsort(dim=1)
    visible = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(b, n, device=tokens.device)
    mask[:, :keep] = 0
    return visible, mask.gather(1, ids_restore), ids_restore


class MAE(nn.Module):
    """MAE objective owning its decoder.

    forward(batch) -> {"loss", "mask_ratio_effective", "valid_fraction"}; batch keys:
    image (B, T, C, H, W) float (normalised per band), valid (B, T, H, W) bool,
    wavelengths_nm (B, C), gsd_m (B,), optional times (B, T), lonlat (B, 2) (used by a backbone
    built with time_loc). Other keys are ignored.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        frames: str = "independent",
    ):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if frames not in FRAMES:
            raise ValueError(f"frames must be one of {FRAMES}, got {frames!r}")
        self.backbone = backbone
        self.mask_ratio, self.norm_pix_loss, self.frames = mask_ratio, norm_pix_loss, frames
        self.decoder_dim = decoder_dim
        p = backbone.patch_size

        self.decoder_embed = nn.Linear(backbone.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True, norm_layer=norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = norm(decoder_dim)
        # Predicts p*p pixels for each band from its wavelength: works for any band set.
        self.decoder_pred = SpectralLinear(decoder_dim, p * p, backbone.spectral_rank,
                                           backbone.wave_dim)
        # Init only the decoder: the backbone already initialised itself (may be pretrained).
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm):
            m.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    # ---- internals -------------------------------------------------------------------------
    def _predict(self, x):
        """Encode visible tokens, decode all. x: MIMInput. Returns pred (B', N, C, p*p), mask (B', N)."""
        bb = self.backbone
        tokens = bb.embed(x.image, x.wavelengths, x.gsd, x.times, x.lonlat)  # (B', N, D)
        visible, mask, ids_restore = random_masking(tokens, self.mask_ratio)
        latent = self.decoder_embed(bb.encode(visible))  # (B', 1+K, Dd)

        b, n = mask.shape
        fill = self.mask_token.to(latent.dtype).expand(b, n + 1 - latent.shape[1], -1)
        z = torch.cat([latent[:, 1:], fill], 1)  # shuffled order: visible first
        z = z.gather(1, ids_restore[:, :, None].expand(-1, -1, z.shape[2]))  # unshuffle
        pos = bb.position_code(*x.grid, self.decoder_dim, x.gsd, x.frames)
        z = torch.cat([latent[:, :1], z + pos.to(z.dtype)], 1)  # cls keeps no position
        for blk in self.decoder_blocks:
            z = blk(z)
        pred = self.decoder_pred(self.decoder_norm(z)[:, 1:], x.wavelengths)  # (B', N, C, p*p)
        return pred, mask

    # ---- public ----------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        x = prepare(batch, self.backbone.patch_size, self.frames)
        pred, mask = self._predict(x)
        target, _, _ = norm_pix_targets(x.patches, x.vpix, self.norm_pix_loss)
        loss, per_sample = patch_loss(pred, target, x.vpix, mask)
        weight = batch.get("sample_weight")
        if weight is not None:           # loss-based curation: kept well-learned samples weigh more
            loss = (per_sample * _frame_weights(weight, per_sample)).mean()
        return {
            "loss": loss,
            "per_sample_loss": per_sample.detach().reshape(len(batch["key"]), -1).mean(1) if "key" in batch
            else per_sample.detach(),
            "mask_ratio_effective": mask.mean().detach(),
            "valid_fraction": x.valid.float().mean().detach(),
        }

    @torch.no_grad()
    def reconstruct(self, batch: dict) -> dict:
        """For plotting. Returns pred_image (B', C, H, W) in normalised input units (per-patch
        de-normalised with valid-pixel stats when norm_pix_loss), mask (B', H, W) bool
        (True = pixel's patch was masked), plus the flattened input image / valid
        (B' = B*T frames in both frame modes)."""
        x = prepare(batch, self.backbone.patch_size, self.frames)
        pred, mask = self._predict(x)
        _, mean, std = norm_pix_targets(x.patches, x.vpix, self.norm_pix_loss)
        if mean is not None:
            pred = pred * std + mean
        return _figure_tensors(x, pred, mask, self.backbone.patch_size)


def _frame_weights(weight: torch.Tensor, per_sample: torch.Tensor) -> torch.Tensor:
    """Sample weights (B,) -> one per loss row (B' = B * frames when frames are separate images)."""
    weight = weight.to(per_sample.device, per_sample.dtype)
    return weight.repeat_interleave(per_sample.shape[0] // weight.shape[0])


def _figure_tensors(x, pred: torch.Tensor, mask: torch.Tensor, p: int) -> dict:
    """Per-token predictions and mask -> per-frame images for plots.reconstruction figures."""
    h, w = x.grid
    image, valid = x.flat_images()
    pred, mask = x.flat_tokens(pred), x.flat_tokens(mask)
    mask_pix = mask[:, :, None, None].expand(-1, -1, 1, p * p)
    return {
        "pred_image": unpatchify(pred, p, h, w),
        "mask": unpatchify(mask_pix, p, h, w)[:, 0].bool(),
        "image": image,
        "valid": valid,
    }

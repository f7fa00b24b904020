"""Masked autoencoder objective for the band-agnostic ViT, with nodata/cloud-aware loss.

Frames of a time series are treated independently (T is folded into the batch). The decoder's
output head generates its per-band weights from wavelengths (SpectralLinear), so one decoder
reconstructs any band set.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from pretrain.models.patch_embed import SpectralLinear, band_set
from pretrain.models.pos_embed import sincos_2d
from pretrain.models.vit import init_weights

__all__ = ["MAE", "patchify", "unpatchify", "random_masking"]

EPS = 1e-6


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C, p*p), patches row-major (same order as the conv patch embed)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c, p * p)


def unpatchify(patches: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """(B, L, C, p*p) -> (B, C, H, W) with H = h*p, W = w*p (h, w = patch grid)."""
    b, _, c, _ = patches.shape
    x = patches.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
    return x.reshape(b, c, h * p, w * p)


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


def _masked_patch_stats(target: torch.Tensor, valid: torch.Tensor):
    """Mean / std of each patch over its valid pixels across all bands.

    target (B, L, C, P) with invalid pixels already zeroed; valid (B, L, P) bool.
    Returns mean, std each (B, L, 1, 1); patches without valid pixels get mean 0, std ~1e-3.
    """
    m = valid[:, :, None, :].to(target.dtype)  # (B, L, 1, P) broadcast over bands
    n = (m.sum((2, 3), keepdim=True) * target.shape[2]).clamp_min(1)  # valid values = C * pixels
    mean = (target * m).sum((2, 3), keepdim=True) / n
    var = (((target - mean) * m) ** 2).sum((2, 3), keepdim=True) / n
    return mean, (var + EPS).sqrt()


class MAE(nn.Module):
    """MAE objective owning its decoder.

    forward(batch) -> {"loss", "mask_ratio_effective", "valid_fraction"}; batch keys:
    image (B, T, C, H, W) float (normalised per band), valid (B, T, H, W) bool,
    wavelengths_nm (B, C), gsd_m (B,). Other keys are ignored.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
    ):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.backbone = backbone
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
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
    def _flatten(self, batch: dict):
        """Fold T into the batch. Returns image (B', C, H, W) with invalid pixels zeroed,
        valid (B', H, W) bool, wavelengths (C,), gsd (B',) where B' = B*T."""
        image, valid = batch["image"], batch["valid"].bool()
        b, t, c, h, w = image.shape
        image, valid = image.reshape(b * t, c, h, w), valid.reshape(b * t, h, w)
        # where() (not multiply) so NaN/huge nodata values cannot leak into input or loss.
        image = torch.where(valid[:, None], image, torch.zeros((), dtype=image.dtype,
                                                                  device=image.device))
        wl = band_set(batch["wavelengths_nm"], c).to(image.device)
        gsd = torch.as_tensor(batch["gsd_m"], dtype=torch.float32, device=image.device)
        gsd = gsd.reshape(-1).expand(b).repeat_interleave(t)
        return image, valid, wl, gsd

    def _predict(self, image, wl, gsd):
        """Encode visible tokens, decode all. Returns pred (B', L, C, p*p), mask (B', L)."""
        bb = self.backbone
        tokens = bb.embed(image, wl, gsd)  # (B', L, D)
        visible, mask, ids_restore = random_masking(tokens, self.mask_ratio)
        latent = self.decoder_embed(bb.encode(visible))  # (B', 1+K, Dd)

        b, n = mask.shape
        fill = self.mask_token.to(latent.dtype).expand(b, n + 1 - latent.shape[1], -1)
        x = torch.cat([latent[:, 1:], fill], 1)  # shuffled order: visible first
        x = x.gather(1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))  # unshuffle
        p = bb.patch_size
        pos = sincos_2d(image.shape[2] // p, image.shape[3] // p, self.decoder_dim,
                        gsd / bb.ref_gsd_m)
        x = torch.cat([latent[:, :1], x + pos.to(x.dtype)], 1)  # cls keeps no position
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x)[:, 1:], wl)  # (B', L, C, p*p)
        return pred, mask

    # ---- public ----------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        image, valid, wl, gsd = self._flatten(batch)
        pred, mask = self._predict(image, wl, gsd)
        p = self.backbone.patch_size
        target = patchify(image, p)  # (B', L, C, P)
        vpix = patchify(valid[:, None].to(target.dtype), p)[:, :, 0]  # (B', L, P) 0/1
        if self.norm_pix_loss:
            mean, std = _masked_patch_stats(target, vpix.bool())
            target = (target - mean) / std
        # Weight = masked patch x valid pixel, shared by all bands.
        weight = mask[:, :, None, None] * vpix[:, :, None, :]
        err = (pred.float() - target.float()) ** 2
        weight = weight.expand_as(err)
        # clamp: an all-invalid batch gives 0 * err / 1 = 0 that still has a grad_fn.
        loss = (err * weight).sum() / weight.sum().clamp_min(1)
        return {
            "loss": loss,
            "mask_ratio_effective": mask.mean().detach(),
            "valid_fraction": valid.float().mean().detach(),
        }

    @torch.no_grad()
    def reconstruct(self, batch: dict) -> dict:
        """For plotting. Returns pred_image (B', C, H, W) in normalised input units (per-patch
        de-normalised with valid-pixel stats when norm_pix_loss), mask (B', H, W) bool
        (True = pixel's patch was masked), plus the flattened input image / valid."""
        image, valid, wl, gsd = self._flatten(batch)
        pred, mask = self._predict(image, wl, gsd)
        p = self.backbone.patch_size
        h, w = image.shape[2] // p, image.shape[3] // p
        if self.norm_pix_loss:
            vpix = patchify(valid[:, None].float(), p)[:, :, 0].bool()
            mean, std = _masked_patch_stats(patchify(image, p), vpix)
            pred = pred * std + mean
        mask_pix = mask[:, :, None, None].expand(-1, -1, 1, p * p)
        return {
            "pred_image": unpatchify(pred, p, h, w),
            "mask": unpatchify(mask_pix, p, h, w)[:, 0].bool(),
            "image": image,
            "valid": valid,
        }

"""Pieces shared by the masked-image-modelling objectives (MAE, SelectiveMAE): how a batch
becomes model input and pixel targets, and the norm-pix loss over valid pixels.

Token layout: single images give L = (H/p)(W/p) tokens, row-major (like the conv patch embed).
With ``frames="joint"`` a series (B, T, C, H, W) is one sequence of N = T*L tokens, frame-major
(the backbone's 5-D embedding); with ``frames="independent"`` T is folded into the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pretrain.models.patch_embed import band_set

__all__ = ["FRAMES", "MIMInput", "prepare", "patchify", "unpatchify", "masked_patch_stats",
           "norm_pix_targets", "patch_loss"]

EPS = 1e-6
FRAMES = ("independent", "joint")


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


def masked_patch_stats(target: torch.Tensor, valid: torch.Tensor):
    """Mean / std of each patch over its valid pixels across all bands.

    target (B, L, C, P) with invalid pixels already zeroed; valid (B, L, P) bool.
    Returns mean, std each (B, L, 1, 1); patches without valid pixels get mean 0, std ~1e-3.
    """
    m = valid[:, :, None, :].to(target.dtype)  # (B, L, 1, P) broadcast over bands
    n = (m.sum((2, 3), keepdim=True) * target.shape[2]).clamp_min(1)  # valid values = C * pixels
    mean = (target * m).sum((2, 3), keepdim=True) / n
    var = (((target - mean) * m) ** 2).sum((2, 3), keepdim=True) / n
    return mean, (var + EPS).sqrt()


@dataclass
class MIMInput:
    """A batch made ready for a MIM objective (B' = B*T independent, B joint; N tokens/sample).

    image: backbone input, (B', C, H, W) or (B, T, C, H, W); invalid pixels zeroed.
    patches (B', N, C, P) raw pixel targets; vpix (B', N, P) float 0/1 valid pixels.
    frames: 0 (single images) or T (joint series); grid (h, w) patches per frame.
    """

    image: torch.Tensor
    valid: torch.Tensor
    wavelengths: torch.Tensor
    gsd: torch.Tensor
    times: torch.Tensor | None
    lonlat: torch.Tensor | None
    keys: list | None
    patches: torch.Tensor
    vpix: torch.Tensor
    frames: int
    grid: tuple[int, int]

    def flat_images(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, valid) as (B*T, C, H, W), (B*T, H, W) for figures."""
        if self.frames:
            return self.image.flatten(0, 1), self.valid.flatten(0, 1)
        return self.image, self.valid

    def flat_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B', N, ...) per-token values -> (B*T, L, ...) per frame."""
        if self.frames:
            return x.reshape(x.shape[0] * self.frames, -1, *x.shape[2:])
        return x


def prepare(batch: dict, patch_size: int, frames: str = "independent") -> MIMInput:
    """Batch contract (image (B,T,C,H,W), valid (B,T,H,W), wavelengths_nm, gsd_m, optional
    times (B,T), lonlat (B,2), key) -> MIMInput. Invalid pixels are zeroed with where() (not a
    multiply), so NaN or huge nodata values can leak neither into the input nor into the loss."""
    if frames not in FRAMES:
        raise ValueError(f"frames must be one of {FRAMES}, got {frames!r}")
    image, valid = batch["image"], batch["valid"].bool()
    b, t, c, h, w = image.shape
    p = patch_size
    image = torch.where(valid[:, :, None], image, torch.zeros((), dtype=image.dtype, device=image.device))
    wl = band_set(batch["wavelengths_nm"], c).to(image.device)
    gsd = torch.as_tensor(batch["gsd_m"], dtype=torch.float32, device=image.device).reshape(-1).expand(b)
    times, lonlat = batch.get("times"), batch.get("lonlat")
    times = None if times is None else torch.as_tensor(times, device=image.device).reshape(b, t)
    lonlat = None if lonlat is None else torch.as_tensor(lonlat, device=image.device).reshape(b, 2)
    keys = batch.get("key")
    flat_img, flat_valid = image.reshape(b * t, c, h, w), valid.reshape(b * t, h, w)
    patches = patchify(flat_img, p)  # (B*T, L, C, P)
    vpix = patchify(flat_valid[:, None].to(patches.dtype), p)[:, :, 0]  # (B*T, L, P)
    if frames == "joint":
        return MIMInput(image, valid, wl, gsd, times, lonlat, keys,
                        patches.reshape(b, -1, c, p * p), vpix.reshape(b, -1, p * p), t, (h // p, w // p))
    return MIMInput(
        flat_img, flat_valid, wl, gsd.repeat_interleave(t),
        None if times is None else times.reshape(b * t),
        None if lonlat is None else lonlat.repeat_interleave(t, 0),
        None if keys is None else [k for k in keys for _ in range(t)],
        patches, vpix, 0, (h // p, w // p),
    )


def norm_pix_targets(patches: torch.Tensor, vpix: torch.Tensor, enabled: bool = True):
    """Targets standardised per patch over its valid pixels (all bands together).
    Returns (targets, mean, std); mean/std are None when disabled."""
    if not enabled:
        return patches, None, None
    mean, std = masked_patch_stats(patches, vpix.bool())
    return (patches - mean) / std, mean, std


def patch_loss(pred: torch.Tensor, target: torch.Tensor, vpix: torch.Tensor, weight: torch.Tensor):
    """Mean squared error over valid pixels of weighted patches, in float32.

    pred, target (B, N, C, P); vpix (B, N, P) 0/1; weight (B, N) (1 = patch counts).
    Returns (loss over the batch, per-sample losses (B,)). Both are sums / counts with the count
    clamped to >= 1, so an all-invalid batch gives 0 that still has a grad_fn.
    """
    w = (weight[:, :, None, None] * vpix[:, :, None, :]).float()  # shared by all bands
    err = (pred.float() - target.float()) ** 2
    w = w.expand_as(err)
    num, den = (err * w).flatten(1).sum(1), w.flatten(1).sum(1)
    return num.sum() / den.sum().clamp_min(1), num / den.clamp_min(1)

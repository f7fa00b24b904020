"""Instance contrast (SimCLR-style, Chen et al. 2020) on the band-agnostic ViT: two random views
of each chip (crop / flips / rotations / weak intensity jitter, made here on the device), one
encoder and projection head for both, NT-Xent over the 2N embeddings of the global batch: each
view's positive is the other view of its chip, every other view of the batch is a negative.

No labels, no teacher: it runs on any single-date shards. Why it is in eofm: on the quickstart's
~600 real chips MAE made the features that a linear probe reads worse than random weights,
while this objective made them better (docs/BENCHMARKS.md, "Why pretraining hurt"). Compared
with soft_contrastive at soft_weight 0 (EMA teacher, half the student's patches hidden), both
branches here get gradients and see every patch, which learned faster at that scale.

Our choices: temperature 0.2, projection MLP without BatchNorm (per-rank statistics would tie the
loss to how the batch is split), mean-pooled patch tokens, and weak photometric jitter in the
recipes: the spectrum is the signal in multispectral data, so features must not become
invariant to it. Gradient across ranks: pretrain/distributed.py (each rank's loss is the mean
over its own 2B queries).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.distributed import all_gather_grad, global_offset
from pretrain.objectives._contrastive_common import ProjectionHead, ViewAugment, encode_pooled, flat_inputs, pick_frames

__all__ = ["InstanceContrastive", "nt_xent"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, z1_all: torch.Tensor, z2_all: torch.Tensor, offset: int,
            temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of local queries against the gathered batch.

    z1, z2 (B, d) L2-normalised embeddings of this rank's two views; z1_all, z2_all (N, d) the
    same gathered over ranks (this rank's rows at offset..offset+B). Returns (loss: mean over the
    2B local queries, per-sample loss (B,) = mean of a chip's two queries)."""
    b, n = z1.shape[0], z1_all.shape[0]
    keys = torch.cat([z1_all, z2_all])                                  # (2N, d)
    own = torch.arange(b, device=z1.device) + offset
    queries = torch.cat([z1, z2])                                       # (2B, d)
    logits = queries @ keys.T / temperature                             # (2B, 2N)
    self_col = torch.cat([own, own + n])                                # a view is not its own negative
    logits[torch.arange(2 * b, device=z1.device), self_col] = float("-inf")
    positive = torch.cat([own + n, own])                                # the other view of the chip
    per_query = F.cross_entropy(logits, positive, reduction="none")
    return per_query.mean(), per_query.view(2, b).mean(0)


class InstanceContrastive(nn.Module):
    """forward(batch) -> {"loss", "per_sample_loss", "pos_sim", "neg_sim", "acc"}. Batch: image
    (B, T, C, H, W), valid (B, T, H, W), wavelengths_nm, gsd_m; with T > 1 one random frame per
    chip gives both views. Other keys are ignored."""

    def __init__(self, backbone: nn.Module, temperature: float = 0.2, proj_hidden_dim: int = 512,
                 proj_dim: int = 128, pool: str = "mean", crop_scale=(0.2, 1.0), flips: bool = True,
                 brightness: float = 0.4, contrast: float = 0.4, band_jitter: float = 0.1, jitter_p: float = 0.8,
                 blur_p: float = 0.5):
        super().__init__()
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.embed_dim, proj_hidden_dim, proj_dim)
        self.temperature, self.pool = temperature, pool
        self.augment = ViewAugment(crop_scale, flips, brightness, contrast, band_jitter, jitter_p, blur_p)

    @torch.no_grad()
    def make_views(self, batch: dict) -> dict:
        """Two augmented views (B, C, H, W) of one frame per chip, with their GSDs (B,)."""
        image, valid, wl, gsd = flat_inputs(batch)
        frame = torch.randint(0, image.shape[1], (image.shape[0],), device=image.device)
        img, val = pick_frames(image, valid, frame)
        v1, _, g1 = self.augment(img, val, gsd)
        v2, _, g2 = self.augment(img, val, gsd)
        return {"v1": v1, "g1": g1, "v2": v2, "g2": g2, "wavelengths": wl}

    def embed(self, image: torch.Tensor, wl: torch.Tensor, gsd: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> L2-normalised projections (B, proj_dim), float32."""
        return F.normalize(self.projector(encode_pooled(self.backbone, image, wl, gsd, self.pool)).float(), dim=1)

    def loss_from_views(self, v: dict) -> dict:
        b = v["v1"].shape[0]
        both = self.embed(torch.cat([v["v1"], v["v2"]]), v["wavelengths"], torch.cat([v["g1"], v["g2"]]))
        z1, z2 = both[:b], both[b:]
        loss, per_sample = nt_xent(z1, z2, all_gather_grad(z1), all_gather_grad(z2), global_offset(b),
                                   self.temperature)
        with torch.no_grad():
            cos = z1 @ z2.T                                             # (B, B) local views
            pos = cos.diagonal()
            neg = (cos.sum(1) - pos) / max(1, b - 1)
            acc = (cos.argmax(1) == torch.arange(b, device=cos.device)).float().mean()
        return {"loss": loss, "per_sample_loss": per_sample.detach(), "pos_sim": pos.mean(),
                "neg_sim": neg.mean(), "acc": acc}

    def forward(self, batch: dict) -> dict:
        return self.loss_from_views(self.make_views(batch))

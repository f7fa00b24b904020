"""Soft multi-label contrastive pretraining (after SoftCon, arXiv 2405.20462), on the
band-agnostic ViT and the common batch contract.

Two views of each scene (random crop / flips / rotations / intensity jitter, made here on the
device). The student sees view 1 with a share `mask_ratio` of its patches removed (Siamese
masking); an EMA teacher (frozen copy of backbone + projector, updated by `set_progress` after each
optimizer step) sees view 2 whole. On the N x N matrix of cosine similarities z_i . z'_j (N =
global batch, teacher embeddings gathered over ranks):
  hard term  InfoNCE with the scene itself as the only positive (rows; with `symmetric` also
             columns, whose student embeddings are gathered WITH gradient);
  soft term  a target S_ij in [0, 1] from the scenes' land-cover labels (cosine, or generalised
             Jaccard, of class-fraction or multi-hot vectors; S_ii = 1), so that scenes with
             similar land cover are not pushed apart as negatives.
loss = hard_weight * hard + soft_weight * soft.

Published facts follow the research notes; the unpublished details are OUR choices, all in the
config: the soft-term form (`soft_loss`: "ce" = cross-entropy against the row-normalised
target S_ij / sum_j S_ij [default], "bce" = elementwise BCE of sigmoid(logit) against S_ij,
"mse" = squared error of the cosine against S_ij), temperature 0.2, mask ratio 0.5, presence
threshold 0.05 for multi-hot labels, equal weights, mean-pooled patch tokens.

Labels come from the `landcover` (B, K) class fractions that shard preparation attaches
(`landcover.path` in the prep recipe); a batch without them is an error unless soft_weight is 0.
With soft_weight 0 only the hard term is left: plain instance contrast (MoCo v3 / SimCLR-style
positives = two views of one scene), which needs no labels at all. That is the quickstart's
objective: on small unlabelled data it gives features that a linear probe separates better
than MAE's (docs/BENCHMARKS.md, "why pretraining hurt").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.distributed import all_gather_grad, all_gather_nograd, global_offset
from pretrain.objectives._contrastive_common import (EMA, ProjectionHead, TeacherStudent, ViewAugment,
                                                     encode_pooled, flat_inputs, frozen_copy, pick_frames)

__all__ = ["SoftContrastive", "label_similarity"]

SOFT_LOSSES = ("ce", "bce", "mse")


def label_similarity(y: torch.Tensor, y_all: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """(B, K), (N, K) non-negative labels -> (B, N) similarity in [0, 1].

    cosine: y_i . y_j / (|y_i| |y_j|); jaccard: sum_k min / sum_k max (generalised Jaccard, the
    set Jaccard for multi-hot vectors). Rows of zeros are similar to nothing (0)."""
    y, y_all = y.float(), y_all.float()
    if kind == "cosine":
        return (F.normalize(y, dim=1) @ F.normalize(y_all, dim=1).T).clamp(0.0, 1.0)
    if kind == "jaccard":
        inter = torch.minimum(y[:, None], y_all[None]).sum(-1)
        union = torch.maximum(y[:, None], y_all[None]).sum(-1)
        return inter / union.clamp_min(1e-12)
    raise ValueError(f"label_similarity must be 'cosine' or 'jaccard', got {kind!r}")


class SoftContrastive(TeacherStudent):
    """forward(batch) -> {"loss", "loss_hard", "loss_soft", "pos_sim", "neg_sim", "acc",
    "ema_momentum"}. Batch: image (B, T, C, H, W), valid (B, T, H, W), wavelengths_nm, gsd_m,
    landcover (B, K). With T > 1 one random frame per scene gives both views."""

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.5, temperature: float = 0.2,
                 proj_hidden_dim: int = 512, proj_dim: int = 128, pool: str = "mean",
                 ema_momentum: float = 0.996, ema_momentum_end: float = 1.0,
                 hard_weight: float = 1.0, soft_weight: float = 1.0, soft_loss: str = "ce",
                 label_similarity: str = "cosine", label_form: str = "fractions",
                 presence_threshold: float = 0.05, symmetric: bool = True,
                 crop_scale=(0.2, 1.0), flips: bool = True, brightness: float = 0.4, contrast: float = 0.4,
                 band_jitter: float = 0.1, jitter_p: float = 0.8, blur_p: float = 0.5):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if soft_loss not in SOFT_LOSSES:
            raise ValueError(f"soft_loss must be one of {SOFT_LOSSES}, got {soft_loss!r}")
        if label_form not in ("fractions", "multihot"):
            raise ValueError(f"label_form must be 'fractions' or 'multihot', got {label_form!r}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        self.backbone = backbone
        self.projector = ProjectionHead(backbone.embed_dim, proj_hidden_dim, proj_dim)
        # Built after any init_from loading (train.build_model), so the teacher starts equal.
        self.teacher = frozen_copy(nn.ModuleDict({"backbone": backbone, "projector": self.projector}))
        self.mask_ratio, self.temperature, self.pool = mask_ratio, temperature, pool
        self.m_start, self.m_end, self.momentum = ema_momentum, ema_momentum_end, ema_momentum
        self.hard_weight, self.soft_weight, self.soft_loss = hard_weight, soft_weight, soft_loss
        self.similarity, self.label_form, self.threshold = label_similarity, label_form, presence_threshold
        self.symmetric = symmetric
        self.augment = ViewAugment(crop_scale, flips, brightness, contrast, band_jitter, jitter_p, blur_p)
        self._ema, self._ema_step = EMA(), 0

    def student(self) -> nn.Module:
        """The modules the teacher copies, keyed as in the teacher."""
        return nn.ModuleDict({"backbone": self.backbone, "projector": self.projector})

    # ---- views (all randomness here) -------------------------------------------------------
    @torch.no_grad()
    def make_views(self, batch: dict) -> dict:
        if batch.get("landcover") is None and self.soft_weight != 0:
            raise ValueError(
                "soft_contrastive needs land-cover labels, but the batch has no 'landcover': prepare the "
                "shards with a land-cover map (prep recipe section `landcover: {path: ..., classes: ...}`; "
                "with `keep_uncovered: true` batches holding uncovered chips carry no labels), or set "
                "objective.soft_weight=0 for plain instance contrast")
        image, valid, wl, gsd = flat_inputs(batch)
        b, t, _, h, w = image.shape
        frame = torch.randint(0, t, (b,), device=image.device)
        img, val = pick_frames(image, valid, frame)
        s_img, _, s_gsd = self.augment(img, val, gsd)
        t_img, _, t_gsd = self.augment(img, val, gsd)
        p = self.backbone.patch_size
        return {"student": s_img, "student_gsd": s_gsd, "teacher": t_img, "teacher_gsd": t_gsd,
                "noise": torch.rand(b, (h // p) * (w // p), device=image.device),
                "labels": None if batch.get("landcover") is None else batch["landcover"].to(image.device).float(),
                "wavelengths": wl}

    def _labels(self, y: torch.Tensor) -> torch.Tensor:
        return (y > self.threshold).float() if self.label_form == "multihot" else y

    def _soft(self, logits: torch.Tensor, cos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.soft_loss == "ce":
            p = target / target.sum(1, keepdim=True).clamp_min(1e-12)
            return -(p * F.log_softmax(logits, 1)).sum(1).mean()
        if self.soft_loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        return ((cos - target) ** 2).mean()

    # ---- loss ------------------------------------------------------------------------------
    def loss_from_views(self, v: dict) -> dict:
        wl = v["wavelengths"]
        z = F.normalize(self.projector(encode_pooled(self.backbone, v["student"], wl, v["student_gsd"],
                                                     self.pool, v["noise"], self.mask_ratio)).float(), dim=1)
        with torch.no_grad():
            zt = encode_pooled(self.teacher["backbone"], v["teacher"], wl, v["teacher_gsd"], self.pool)
            zt = F.normalize(self.teacher["projector"](zt).float(), dim=1)
        b = z.shape[0]
        own = torch.arange(b, device=z.device) + global_offset(b)     # own column in the gathered batch
        zt_all = all_gather_nograd(zt)                                  # (N, d)
        cos = z @ zt_all.T                                              # (B, N)
        logits = cos / self.temperature
        hard = F.cross_entropy(logits, own)
        soft = None
        if v["labels"] is not None:      # no labels: instance contrast (soft_weight is 0)
            y = self._labels(v["labels"])
            target = label_similarity(y, all_gather_nograd(y), self.similarity)
            target[torch.arange(b, device=z.device), own] = 1.0         # a scene is its own positive
            soft = self._soft(logits, cos, target)
        if self.symmetric:        # columns: each local teacher key against every student query
            cos_c = zt @ all_gather_grad(z).T
            logits_c = cos_c / self.temperature
            hard = 0.5 * (hard + F.cross_entropy(logits_c, own))
            if soft is not None:
                soft = 0.5 * (soft + self._soft(logits_c, cos_c, target))   # S is symmetric
        if soft is None:
            soft = torch.zeros((), device=z.device)
        loss = self.hard_weight * hard + self.soft_weight * soft
        with torch.no_grad():
            pos = cos.gather(1, own[:, None])[:, 0]
            n = cos.shape[1]
            neg = (cos.sum(1) - pos) / max(1, n - 1)
            acc = (logits.argmax(1) == own).float().mean()
        return {"loss": loss, "loss_hard": hard.detach(), "loss_soft": soft.detach(), "pos_sim": pos.mean(),
                "neg_sim": neg.mean(), "acc": acc,
                "ema_momentum": torch.tensor(self.momentum, device=z.device)}

    def forward(self, batch: dict) -> dict:
        return self.loss_from_views(self.make_views(batch))

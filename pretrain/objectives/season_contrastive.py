"""Season-contrastive pretraining (SeCo, Manas et al. 2021; SSL4Eco's SeCo-Eco 2025) on the
band-agnostic ViT and the common batch contract.

Positives are the same location on different dates: the multi-date samples of shard
preparation (`series.mode` in the prep recipe), image (B, T, C, H, W) with T >= 2. Per scene,
dates are drawn WITHOUT replacement (SSL4Eco's fix of SeCo's with-replacement draw); with
T = 2 the third date repeats the second, as SSL4Eco does.

mode "subspaces" (default, SeCo): dates t0, t1, t2 give the query q = crop(t0) and keys
  k0 = crop(jitter(t1)), k1 = crop(t2), k2 = crop(jitter(t0)) (crop = random resized crop +
  flips/rotations; jitter = brightness/contrast/band gain + blur). One encoder, three projection
  heads = three embedding subspaces; in subspace i the positive is k_i:
    Z0  invariant to everything (season and jitter change),
    Z1  season-invariant: k1 is another date without jitter; the scene's own k0, k2 (jitter
        changed) are extra negatives, so Z1 stays sensitive to the synthetic augmentation,
    Z2  jitter-invariant: k2 is the same date jittered; the scene's own k0, k1 (other dates) are
        extra negatives, so Z2 stays sensitive to season.
  loss = sum_i head_weights[i] * InfoNCE_i (SeCo sums the three terms).
mode "season_invariant" (SSL4EO / MoCo-Eco): q = aug(t0), k = aug(t1), one head.

Keys come from an EMA teacher (MoCo momentum encoder, updated by `set_progress` after each optimizer
step). Negatives: `queue` (one ring buffer per head, filled with the keys of the GLOBAL batch,
gathered over ranks) or `batch` (the gathered keys of every other scene of the global batch).
Each rank's loss is the mean over its own queries (see pretrain/distributed.py for why this
gives 1-rank gradients under DeepSpeed's averaging).

Our choices (unpublished or changed for a ViT): temperature 0.2 (SSL4Eco's command line; SeCo
0.07), projection MLP without BatchNorm, mean-pooled patch tokens, jitter in normalised units
(multispectral data has no hue/saturation/grayscale), queue 16384 per head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.distributed import all_gather_nograd, global_offset
from pretrain.objectives._contrastive_common import (EMA, ProjectionHead, TeacherStudent, ViewAugment,
                                                     encode_pooled, flat_inputs, frames_without_replacement,
                                                     frozen_copy, pick_frames)

__all__ = ["SeasonContrastive"]

MODES = ("subspaces", "season_invariant")


class SeasonContrastive(TeacherStudent):
    """forward(batch) -> {"loss", "loss_z<i>" per head, "acc", "pos_sim", "ema_momentum"}.
    Batch: image (B, T, C, H, W) with T >= 2 dates of one location, valid, wavelengths_nm, gsd_m."""

    def __init__(self, backbone: nn.Module, mode: str = "subspaces", temperature: float = 0.2,
                 proj_hidden_dim: int = 512, proj_dim: int = 128, pool: str = "mean",
                 ema_momentum: float = 0.999, ema_momentum_end: float = 0.999,
                 negatives: str = "queue", queue_size: int = 16384, head_weights=(1.0, 1.0, 1.0),
                 crop_scale=(0.2, 1.0), flips: bool = True, brightness: float = 0.4, contrast: float = 0.4,
                 band_jitter: float = 0.1, jitter_p: float = 0.8, blur_p: float = 0.5):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if negatives not in ("queue", "batch"):
            raise ValueError(f"negatives must be 'queue' or 'batch', got {negatives!r}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        n_heads = 3 if mode == "subspaces" else 1
        weights = [float(w) for w in head_weights][:n_heads]
        if len(weights) != n_heads:
            raise ValueError(f"head_weights needs {n_heads} values for mode {mode!r}, got {list(head_weights)}")
        self.backbone = backbone
        self.heads = nn.ModuleList(ProjectionHead(backbone.embed_dim, proj_hidden_dim, proj_dim)
                                   for _ in range(n_heads))
        self.teacher = frozen_copy(nn.ModuleDict({"backbone": backbone, "heads": self.heads}))
        self.mode, self.temperature, self.pool, self.negatives = mode, temperature, pool, negatives
        self.head_weights = weights
        self.m_start, self.m_end, self.momentum = ema_momentum, ema_momentum_end, ema_momentum
        self.augment = ViewAugment(crop_scale, flips, brightness, contrast, band_jitter, jitter_p, blur_p)
        self._ema, self._ema_step = EMA(), 0
        if negatives == "queue":
            if queue_size < 1:
                raise ValueError(f"queue_size must be >= 1, got {queue_size}")
            self.register_buffer("queue", F.normalize(torch.randn(n_heads, queue_size, proj_dim), dim=2))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def student(self) -> nn.Module:
        """The modules the teacher copies, keyed as in the teacher."""
        return nn.ModuleDict({"backbone": self.backbone, "heads": self.heads})

    # ---- views (all randomness here) -------------------------------------------------------
    @torch.no_grad()
    def make_views(self, batch: dict) -> dict:
        image, valid, wl, gsd = flat_inputs(batch)
        b, t = image.shape[:2]
        if t < 2:
            raise ValueError(
                f"season_contrastive needs several dates per location, but the batch has T={t} frame(s) "
                f"(keys {batch.get('key', [])[:2]}...): prepare multi-date shards (prep recipe "
                "`series: {mode: seasons | spread | all, min_frames: 2}`)")
        aug = self.augment
        if self.mode == "subspaces":
            t0, t1, t2 = frames_without_replacement(b, t, 3, image.device).unbind(1)
            views = [(pick_frames(image, valid, t0), False),   # q
                     (pick_frames(image, valid, t1), True),    # k0: other date, jittered
                     (pick_frames(image, valid, t2), False),   # k1: other date
                     (pick_frames(image, valid, t0), True)]    # k2: same date, jittered
        else:
            t0, t1 = frames_without_replacement(b, t, 2, image.device).unbind(1)
            views = [(pick_frames(image, valid, t0), True), (pick_frames(image, valid, t1), True)]
        out = [aug(img, val, gsd, jitter=jit) for (img, val), jit in views]
        return {"q": out[0][0], "q_gsd": out[0][2],
                "keys": torch.stack([o[0] for o in out[1:]]),      # (V, B, C, H, W)
                "keys_gsd": torch.stack([o[2] for o in out[1:]]),  # (V, B)
                "wavelengths": wl}

    # ---- loss ------------------------------------------------------------------------------
    def loss_from_views(self, v: dict) -> dict:
        wl = v["wavelengths"]
        feat_q = encode_pooled(self.backbone, v["q"], wl, v["q_gsd"], self.pool)            # (B, D)
        keys = v["keys"]
        n_views, b = keys.shape[:2]
        with torch.no_grad():
            feat_k = encode_pooled(self.teacher["backbone"], keys.flatten(0, 1), wl, v["keys_gsd"].flatten(),
                                   self.pool)                                                # (V*B, D)
        own = torch.arange(b, device=feat_q.device) + global_offset(b)
        out, total, correct, pos_sum, new_keys = {}, 0.0, 0.0, 0.0, []
        for i, head in enumerate(self.heads):
            q = F.normalize(head(feat_q).float(), dim=1)                                     # (B, d)
            with torch.no_grad():
                k = F.normalize(self.teacher["heads"][i](feat_k).float(), dim=1).view(n_views, b, -1)
            pos = (q * k[i]).sum(1, keepdim=True)                                            # (B, 1)
            # SeCo: in subspaces 1, 2 the scene's other key types are negatives too.
            extra = [(q * k[j]).sum(1, keepdim=True) for j in range(n_views) if i > 0 and j != i]
            if self.negatives == "queue":
                # a copy: the queue is updated below, before backward needs it
                logits = torch.cat([pos, *extra, q @ self.queue[i].to(q.dtype).clone().T], 1)
                target = torch.zeros(b, dtype=torch.long, device=q.device)
                new_keys.append(all_gather_nograd(k[i]))
            else:
                logits = torch.cat([q @ all_gather_nograd(k[i]).T, *extra], 1)             # own key at `own`
                target = own
            logits = logits / self.temperature
            loss_i = F.cross_entropy(logits, target)
            out[f"loss_z{i}"] = loss_i.detach()
            total = total + self.head_weights[i] * loss_i
            with torch.no_grad():
                correct += (logits.argmax(1) == target).float().mean() / len(self.heads)
                pos_sum += pos.mean() / len(self.heads)
        if new_keys:
            self._enqueue(torch.stack(new_keys))
        return {"loss": total, **out, "acc": correct, "pos_sim": pos_sum,
                "ema_momentum": torch.tensor(self.momentum, device=feat_q.device)}

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """keys (H, N, d) of the global batch -> ring buffer, oldest entries overwritten."""
        size = self.queue.shape[1]
        n = keys.shape[1]
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % size
        if n > size:                              # only the newest `size` keys fit
            idx, keys = idx[-size:], keys[:, -size:]
        self.queue[:, idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def forward(self, batch: dict) -> dict:
        return self.loss_from_views(self.make_views(batch))

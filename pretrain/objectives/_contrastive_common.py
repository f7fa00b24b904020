"""Pieces shared by the contrastive objectives: projection heads, the EMA teacher, views made
on the device (crop, flips, 90-degree rotations, intensity jitter, blur), frame picking and
pooled embeddings from the band-agnostic ViT.

Randomness: every draw uses torch's global generator on the tensors' device, like MAE's masking,
so it is seeded by `train.seed` + rank and restored on resume (checkpoint.py saves the RNG).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.models.patch_embed import band_set
from pretrain.models.vit import init_weights

__all__ = ["ProjectionHead", "frozen_copy", "EMA", "ema_momentum", "ViewAugment", "flat_inputs",
           "pick_frames", "frames_without_replacement", "encode_pooled"]


class ProjectionHead(nn.Module):
    """MLP head: (B, in_dim) -> (B, out_dim). Linear-GELU-Linear, no BatchNorm (per-rank batch
    statistics would make the loss depend on how the batch is split over ranks)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def frozen_copy(module: nn.Module) -> nn.Module:
    """Deep copy with requires_grad False: excluded from the optimizer (engine.param_groups skips
    it), still a submodule, so checkpoints save and restore it."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def ema_momentum(step: int, total: int, start: float, end: float) -> float:
    """Teacher momentum after `step` of `total` optimizer steps: cosine from `start` to `end`
    (BYOL/DINO); start == end gives a constant (MoCo)."""
    progress = min(1.0, max(0.0, step / max(1, total)))
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


class TeacherStudent(nn.Module):
    """Base of objectives with an EMA teacher (`self.teacher`, a frozen copy of `student()`):
    keeps the teacher in eval mode and updates it from the loop's `set_progress` hook.
    Subclasses set self.teacher, self._ema = EMA(), self._ema_step = 0, self.m_start, self.m_end
    and define `student()`."""

    def student(self) -> nn.Module:
        """The online network the teacher follows (each objective defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define student()")

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.train(False)           # no stochastic depth in the teacher
        return self

    @torch.no_grad()
    def set_progress(self, step: int, total: int) -> None:
        """The loop's hook, called before optimizer step `step` (0-based), i.e. once `step` steps
        are done: the teacher takes the EMA of the student once per completed step (none before
        the first). After a resume the first call applies the update of the step the checkpoint
        ended with, so a resumed teacher equals an uninterrupted one."""
        if step <= self._ema_step:
            return
        self._ema_step = step
        self.momentum = ema_momentum(step, total, self.m_start, self.m_end)
        self._ema.update(self.teacher, self.student(), self.momentum)


class EMA:
    """teacher <- m * teacher + (1 - m) * student, parameter by parameter.

    Under bf16/fp16 DeepSpeed casts the whole module, teacher included, and an update of
    (1 - m) = 0.004 vanishes in bf16's 8-bit mantissa; the average is then kept in an fp32
    shadow (not in the state dict; rebuilt from the saved teacher on resume) and copied into the
    teacher. Under ZeRO-3 each rank updates its own partition (`ds_tensor`: student and teacher
    parameters of equal shape are partitioned alike).
    """

    def __init__(self):
        self.shadow: list[torch.Tensor] | None = None

    @staticmethod
    def _data(p: torch.Tensor) -> torch.Tensor:
        return p.ds_tensor if hasattr(p, "ds_tensor") else p.data

    @torch.no_grad()
    def update(self, teacher: nn.Module, student: nn.Module, m: float) -> None:
        t_params, s_params = list(teacher.parameters()), list(student.parameters())
        if len(t_params) != len(s_params):
            raise RuntimeError(f"EMA: teacher has {len(t_params)} parameters, student {len(s_params)}")
        targets = [self._data(p) for p in t_params]
        sources = [self._data(p) for p in s_params]
        if targets and targets[0].dtype in (torch.float16, torch.bfloat16):
            if self.shadow is None:
                self.shadow = [t.float().clone() for t in targets]
            for sh, t, s in zip(self.shadow, targets, sources):
                sh.mul_(m).add_(s.float(), alpha=1.0 - m)
                t.copy_(sh)
        else:
            for t, s in zip(targets, sources):
                t.mul_(m).add_(s.to(t.dtype), alpha=1.0 - m)
        for tb, sb in zip(teacher.buffers(), student.buffers()):
            tb.copy_(sb)


def flat_inputs(batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch contract -> image (B, T, C, H, W) with invalid pixels exactly 0, valid (B, T, H,
    W) bool, wavelengths (C,), gsd (B,) float32."""
    image, valid = batch["image"], batch["valid"].bool()
    if image.ndim != 5:
        raise ValueError(f"image must be (B, T, C, H, W), got shape {tuple(image.shape)}")
    image = torch.where(valid[:, :, None], image, torch.zeros((), dtype=image.dtype, device=image.device))
    wl = band_set(batch["wavelengths_nm"], image.shape[2]).to(image.device)
    gsd = torch.as_tensor(batch["gsd_m"], dtype=torch.float32, device=image.device).reshape(-1)
    return image, valid, wl, gsd.expand(image.shape[0]).contiguous()


def pick_frames(image: torch.Tensor, valid: torch.Tensor, idx: torch.Tensor):
    """image (B, T, C, H, W), valid (B, T, H, W), idx (B,) long -> (B, C, H, W), (B, H, W)."""
    ar = torch.arange(image.shape[0], device=image.device)
    return image[ar, idx], valid[ar, idx]


def frames_without_replacement(b: int, t: int, k: int, device) -> torch.Tensor:
    """(B, k) frame indices, distinct per row while k <= T; when T < k the last distinct frame
    repeats (T = 2, k = 3 gives t2 = t1, as SSL4Eco does for two-season locations)."""
    order = torch.rand(b, t, device=device).argsort(1)
    if t >= k:
        return order[:, :k]
    return torch.cat([order, order[:, -1:].expand(b, k - t)], 1)


def encode_pooled(backbone: nn.Module, image: torch.Tensor, wl: torch.Tensor, gsd: torch.Tensor,
                  pool: str = "mean", keep_noise: torch.Tensor | None = None, mask_ratio: float = 0.0
                  ) -> torch.Tensor:
    """(B, C, H, W) -> (B, D) through the backbone's public API (embed / encode).

    With `keep_noise` (B, L) and mask_ratio > 0 only the int(L * (1 - mask_ratio)) patches with
    the smallest noise reach the encoder (Siamese masking). pool: "mean" over the encoded patch
    tokens (what fine-tuning's `pooled` uses) or "cls".
    """
    tokens = backbone.embed(image, wl, gsd)                     # (B, L, D)
    if keep_noise is not None and mask_ratio > 0:
        keep = max(1, int(tokens.shape[1] * (1 - mask_ratio)))
        ids = keep_noise.argsort(1)[:, :keep]
        tokens = tokens.gather(1, ids[:, :, None].expand(-1, -1, tokens.shape[2]))
    x = backbone.encode(tokens)                                 # (B, 1+K, D)
    return x[:, 0] if pool == "cls" else x[:, 1:].mean(1)


class ViewAugment:
    """Random views on the device, per sample: resized crop (area fraction in `crop_scale`,
    aspect 3/4..4/3, back to the input size, GSD scaled accordingly), flips and 90-degree
    rotations (overhead imagery has no up), and — when `jitter` is asked for — brightness,
    contrast and per-band gain jitter with probability `jitter_p` plus Gaussian blur with
    probability `blur_p`. Works in normalised units; invalid pixels stay 0 and `valid` follows
    the geometry (nearest neighbour).
    """

    def __init__(self, crop_scale=(0.2, 1.0), flips: bool = True, brightness: float = 0.4,
                 contrast: float = 0.4, band_jitter: float = 0.1, jitter_p: float = 0.8,
                 blur_p: float = 0.5, blur_sigma=(0.1, 2.0)):
        lo, hi = crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {list(crop_scale)}")
        self.crop_scale, self.flips = (float(lo), float(hi)), flips
        self.brightness, self.contrast, self.band_jitter = brightness, contrast, band_jitter
        self.jitter_p, self.blur_p, self.blur_sigma = jitter_p, blur_p, tuple(blur_sigma)

    def geometric(self, image: torch.Tensor, valid: torch.Tensor, gsd: torch.Tensor):
        """image (B, C, H, W), valid (B, H, W), gsd (B,) -> the same, cropped/flipped/rotated."""
        b, _, h, w = image.shape
        dev = image.device
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * torch.rand(b, device=dev)
        # aspect in 3/4..4/3, narrowed so that both sides fit (area 1 = the whole image)
        log_r = (torch.rand(b, device=dev) * 2 - 1) * torch.clamp(-area.log(), max=math.log(4 / 3))
        sx = (area * log_r.exp()).sqrt().clamp(max=1.0)       # crop width / image width
        sy = (area / log_r.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=dev) * 2 - 1) * (1 - sx)    # crop centre in [-1, 1] coordinates
        cy = (torch.rand(b, device=dev) * 2 - 1) * (1 - sy)
        if self.flips:
            fx = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
            fy = torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
            k = torch.randint(0, 4 if h == w else 1, (b,), device=dev).float()   # rot90 needs square
        else:
            fx = fy = torch.ones(b, device=dev)
            k = torch.zeros(b, device=dev)
        cos, sin = torch.cos(k * math.pi / 2).round(), torch.sin(k * math.pi / 2).round()
        # theta maps output coords to input coords: scale(crop) @ rotate @ flip, then shift.
        theta = torch.stack([torch.stack([sx * cos * fx, -sx * sin * fy, cx], 1),
                             torch.stack([sy * sin * fx, sy * cos * fy, cy], 1)], 1)
        grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
        out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        v = F.grid_sample(valid[:, None].to(image.dtype), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)[:, 0] > 0.5
        out = torch.where(v[:, None], out, torch.zeros((), dtype=out.dtype, device=dev))
        return out, v, gsd * (sx * sy).sqrt()

    def photometric(self, image: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Brightness / contrast / per-band gain jitter and blur; (B, C, H, W) -> same."""
        b, c, h, w = image.shape
        dev, dt = image.device, image.dtype
        x = image.float()
        m = valid[:, None].float()
        apply = (torch.rand(b, 1, 1, 1, device=dev) < self.jitter_p).float()
        mean = (x * m).sum((1, 2, 3), keepdim=True) / (m.sum((1, 2, 3), keepdim=True) * c).clamp_min(1)
        con = 1 + (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * self.contrast
        bri = (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * self.brightness
        gain = 1 + (torch.rand(b, c, 1, 1, device=dev) * 2 - 1) * self.band_jitter
        jittered = ((x - mean) * con + mean + bri) * gain
        x = apply * jittered + (1 - apply) * x
        if self.blur_p > 0:
            x = self._blur(x)
        return torch.where(valid[:, None], x, torch.zeros((), device=dev)).to(dt)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian blur with probability blur_p per sample, sigma ~ U(blur_sigma), separable,
        as unfold + weighted sum (a grouped conv with one kernel per sample and band is several
        times slower on CPU). (B, C, H, W) float -> same."""
        b, c, h, w = x.shape
        dev = x.device
        lo, hi = self.blur_sigma
        radius = max(1, math.ceil(2 * hi))
        r = torch.arange(-radius, radius + 1, device=dev, dtype=torch.float32)
        sigma = lo + (hi - lo) * torch.rand(b, device=dev)
        kern = torch.exp(-0.5 * (r[None] / sigma[:, None]) ** 2)
        kern = kern / kern.sum(1, keepdim=True)                                  # (B, k)
        ident = torch.zeros_like(kern)
        ident[:, radius] = 1.0
        kern = torch.where((torch.rand(b, device=dev) < self.blur_p)[:, None], kern, ident)
        kern = kern[:, None, None, None, :]                                      # (B, 1, 1, 1, k)
        x = F.pad(x, (radius, radius, 0, 0), mode="replicate").unfold(3, 2 * radius + 1, 1)
        x = (x * kern).sum(-1)                                                   # along rows
        x = F.pad(x, (0, 0, radius, radius), mode="replicate").unfold(2, 2 * radius + 1, 1)
        return (x * kern).sum(-1)                                                # along columns

    def __call__(self, image, valid, gsd, jitter: bool = True):
        image, valid, gsd = self.geometric(image, valid, gsd)
        if jitter:
            image = self.photometric(image, valid)
        return image, valid, gsd

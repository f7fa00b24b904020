"""Wavelength-conditioned (band-agnostic) patch embedding and output head.

One set of weights serves any band set: each band's weights are *generated* from its centre
wavelength, so Sentinel-2 (12 bands), a 2-band product or a 200+ band hyperspectral cube all go
through the same module.

Generator: wavelength (nm) -> sin-cos embedding (wave_dim) -> MLP -> coefficients a(λ) of shape
(rank, out). A learned basis B of shape (rank, out, ...) is mixed per output unit:
W_c[o] = Σ_k a(λ_c)[k, o] · B[k, o]. Low rank keeps the generator small and makes nearby
wavelengths share structure.

Wavelength convention: optical/thermal bands use their centre wavelength in nm (~300..15000).
SAR bands will get a pseudo-wavelength convention later (decided by the data code); any number
works here, but values far above MAX_PERIOD_NM wrap the slowest frequency and lose uniqueness.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MIN_PERIOD_NM",
    "MAX_PERIOD_NM",
    "band_set",
    "wavelength_embedding",
    "WavelengthMLP",
    "SpectralPatchEmbed",
    "SpectralLinear",
]

# Shortest period ~ the finest band spacing of hyperspectral sensors (~10 nm) so neighbouring
# bands get distinct codes; longest is 4x the top of the optical/thermal range (15000 nm) so the
# slowest component stays monotonic (< quarter period) over 300..15000 nm and never aliases.
MIN_PERIOD_NM = 10.0
MAX_PERIOD_NM = 4 * 15000.0


def band_set(wavelengths_nm: torch.Tensor, num_bands: int | None = None) -> torch.Tensor:
    """Reduce wavelengths to the single band set of a batch.

    wavelengths_nm: (C,) or (B, C); batches are grouped by sensor so all rows must be equal.
    Returns (C,) float32. Raises ValueError if rows differ or C != num_bands (when given).
    """
    w = torch.as_tensor(wavelengths_nm, dtype=torch.float32)
    if w.ndim == 2:
        if not torch.equal(w, w[:1].expand_as(w)):
            raise ValueError("all samples in a batch must share one band set (wavelengths differ)")
        w = w[0]
    if w.ndim != 1:
        raise ValueError(f"wavelengths_nm must be (C,) or (B, C), got shape {tuple(w.shape)}")
    if num_bands is not None and w.shape[0] != num_bands:
        raise ValueError(f"got {w.shape[0]} wavelengths for {num_bands} image bands")
    return w


def wavelength_embedding(wavelengths_nm: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos code of wavelengths with log-spaced periods in [MIN_PERIOD_NM, MAX_PERIOD_NM].

    wavelengths_nm: (C,). Returns (C, dim) float32 = [sin(2πλ/P_k), cos(2πλ/P_k)].
    """
    if dim % 2:
        raise ValueError(f"wave_dim must be even, got {dim}")
    periods = torch.logspace(
        math.log10(MIN_PERIOD_NM), math.log10(MAX_PERIOD_NM), dim // 2,
        device=wavelengths_nm.device, dtype=torch.float32,
    )
    angles = 2 * math.pi * wavelengths_nm.float()[:, None] / periods  # (C, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class WavelengthMLP(nn.Module):
    """wavelengths (C,) -> (C, out_features) via sin-cos code and a 2-layer MLP."""

    def __init__(self, out_features: int, wave_dim: int = 128, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or 2 * wave_dim
        self.wave_dim = wave_dim
        self.fc1 = nn.Linear(wave_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_features)
        for m in (self.fc1, self.fc2):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, wavelengths_nm: torch.Tensor) -> torch.Tensor:
        # The code is computed in float32 (bf16 would blur wavelengths by ~4 nm), then takes
        # the weights' dtype so the MLP also runs under bf16/fp16 engines.
        e = wavelength_embedding(wavelengths_nm.float(), self.wave_dim).to(self.fc1.weight.dtype)
        return self.fc2(self.act(self.fc1(e)))


def _normalise_coeffs(a: torch.Tensor, rank: int) -> torch.Tensor:
    """(C, rank, out) -> same, unit variance per band then / sqrt(rank).

    Why: the kernel's magnitude is then set by the basis (which gets a conv-like init), not by
    the generator's tiny trunc-normal init, and it cannot blow up for unseen wavelengths.
    """
    c = a.shape[0]
    return F.layer_norm(a.reshape(c, -1), (a[0].numel(),)).reshape_as(a) * rank**-0.5


class SpectralPatchEmbed(nn.Module):
    """Patchify any band set with per-band conv kernels generated from wavelengths.

    forward(x (B, C, H, W), wavelengths_nm (C,) or (B, C)) -> (B, L, D), L = (H/p)(W/p),
    tokens in row-major patch order.
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, rank: int = 8, wave_dim: int = 128):
        super().__init__()
        self.embed_dim, self.patch_size, self.rank = embed_dim, patch_size, rank
        self.generator = WavelengthMLP(rank * embed_dim, wave_dim)
        self.basis = nn.Parameter(torch.empty(rank, embed_dim, patch_size, patch_size))  # B
        self.bias = nn.Parameter(torch.zeros(embed_dim))
        # Xavier as if each band had its own (D, p*p) linear projection, like a conv patch embed.
        bound = math.sqrt(6.0 / (patch_size * patch_size + embed_dim))
        nn.init.uniform_(self.basis, -bound, bound)

    def kernel(self, wavelengths_nm: torch.Tensor) -> torch.Tensor:
        """(C,) -> conv weight (D, C, p, p), already scaled by 1/sqrt(C)."""
        c = wavelengths_nm.shape[0]
        a = self.generator(wavelengths_nm).view(c, self.rank, self.embed_dim)
        a = _normalise_coeffs(a, self.rank)
        w = torch.einsum("ckd,kdij->dcij", a, self.basis)
        # 1/sqrt(C): output variance stays the same whether the sensor has 2 or 200 bands.
        return w * c**-0.5

    def forward(self, x: torch.Tensor, wavelengths_nm: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of patch size {p}")
        wl = band_set(wavelengths_nm, c).to(x.device)
        out = F.conv2d(x, self.kernel(wl).to(x.dtype), self.bias.to(x.dtype), stride=p)
        return out.flatten(2).transpose(1, 2)  # (B, D, h/p, w/p) -> (B, L, D)


class SpectralLinear(nn.Module):
    """Per-band linear layer whose weights are generated from wavelengths (decoder head).

    forward(x (..., in_dim), wavelengths_nm (C,) or (B, C)) -> (..., C, out_per_band).
    W_c (out, in) = Σ_k a(λ_c)[k, o] · B[k, o, :]; the per-band bias is generated too.
    """

    def __init__(self, in_dim: int, out_per_band: int, rank: int = 8, wave_dim: int = 128):
        super().__init__()
        self.in_dim, self.out_per_band, self.rank = in_dim, out_per_band, rank
        # Generates rank*out mixing coefficients plus an out-sized bias per band.
        self.generator = WavelengthMLP(rank * out_per_band + out_per_band, wave_dim)
        self.basis = nn.Parameter(torch.empty(rank, out_per_band, in_dim))
        bound = math.sqrt(6.0 / (in_dim + out_per_band))
        nn.init.uniform_(self.basis, -bound, bound)

    def forward(self, x: torch.Tensor, wavelengths_nm: torch.Tensor) -> torch.Tensor:
        wl = band_set(wavelengths_nm).to(x.device)
        c, r, o = wl.shape[0], self.rank, self.out_per_band
        g = self.generator(wl)  # (C, r*o + o)
        a = _normalise_coeffs(g[:, : r * o].view(c, r, o), r)
        bias = g[:, r * o :]  # (C, o)
        # Project onto the shared basis first (cost independent of C), then mix per band:
        # never materialises a (C, out, in) weight, which matters for 200+ band sensors.
        z = torch.einsum("...i,koi->...ko", x, self.basis.to(x.dtype))  # (..., r, o)
        return torch.einsum("...ko,cko->...co", z, a.to(x.dtype)) + bias.to(x.dtype)

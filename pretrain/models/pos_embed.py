"""Fixed 2-D sin-cos position embedding whose coordinates are scaled by ground sample distance.

Coordinates are patch indices multiplied by ``scale = gsd_m / ref_gsd_m`` (Scale-MAE style), so
two patches that are the same *ground* distance apart get the same relative code regardless of
the sensor's resolution. Nothing is cached per image size, so any grid works.

Also the optional metadata codes of multi-date inputs (Prithvi-EO-2.0 style, see ViT):
``frame_code`` (order of a frame in a series), ``time_code`` (date) and ``location_code``
(chip centre). Dates and longitudes are cyclic quantities, so they are coded with integer
harmonics of their cycle (Dec 31 is next to Jan 1, -180° is 180°) rather than the plain
sin-cos of the raw number that Prithvi uses.
"""

from __future__ import annotations

import math

import torch

__all__ = ["sincos_1d", "sincos_2d", "harmonics", "frame_code", "time_code", "location_code"]


def sincos_1d(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Standard transformer sin-cos code of arbitrary (real-valued) positions.

    pos: (..., N) float positions. Returns (..., N, dim) = [sin(pos*w_i), cos(pos*w_i)] with
    w_i = base^(-i/(dim/2)), i = 0..dim/2-1.
    """
    if dim % 2:
        raise ValueError(f"sin-cos dim must be even, got {dim}")
    i = torch.arange(dim // 2, device=pos.device, dtype=torch.float32)
    omega = base ** (-i / (dim // 2))  # (dim/2,)
    angles = pos.float()[..., None] * omega  # (..., N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_2d(
    grid_h: int,
    grid_w: int,
    dim: int,
    scale: torch.Tensor | float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """2-D sin-cos embedding of a (grid_h, grid_w) patch grid, row-major like ``conv.flatten(2)``.

    The first dim/2 channels encode the row (y) and the last dim/2 the column (x).

    Args:
        grid_h, grid_w: number of patch rows / columns; L = grid_h * grid_w.
        dim: embedding width, must be divisible by 4.
        scale: (B,) tensor (or float) multiplying the patch indices, normally gsd_m / ref_gsd_m.
            None means 1.
        device: used when ``scale`` is not a tensor.

    Returns:
        (B, L, dim) float32 for a (B,) scale, else (1, L, dim).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos dim must be divisible by 4, got {dim}")
    if isinstance(scale, torch.Tensor):
        device = scale.device
        scale = scale.float().reshape(-1)  # (B,)
    else:
        scale = torch.tensor([1.0 if scale is None else float(scale)], device=device)
    ys = torch.arange(grid_h, device=device, dtype=torch.float32)
    xs = torch.arange(grid_w, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    yy = yy.reshape(1, -1) * scale[:, None]  # (B, L)
    xx = xx.reshape(1, -1) * scale[:, None]
    return torch.cat([sincos_1d(yy, dim // 2), sincos_1d(xx, dim // 2)], dim=-1)  # (B, L, dim)


def harmonics(angle: torch.Tensor, n: int) -> torch.Tensor:
    """Integer harmonics of an angle: (...,) radians -> (..., 2n) = [sin(k a), cos(k a)], k = 1..n.
    Periodic in 2π by construction; computed in float64 then returned as float32."""
    k = torch.arange(1, n + 1, device=angle.device, dtype=torch.float64)
    a = angle.double()[..., None] * k
    return torch.cat([a.sin(), a.cos()], dim=-1).float()


def frame_code(num_frames: int, dim: int, device=None) -> torch.Tensor:
    """(T, dim) code of frame order t = 0..T-1: sincos_1d(t) - sincos_1d(0), so frame 0 gets
    exactly zero and a one-frame series embeds like a single image."""
    t = torch.arange(num_frames, device=device, dtype=torch.float32)
    return sincos_1d(t, dim) - sincos_1d(torch.zeros_like(t), dim)


DAYS_PER_YEAR = 365.2425


def time_code(days_since_1970: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) days since 1970 -> (..., dim) float32: first half sin-cos of the (fractional) year
    since 2000 (trend), second half harmonics of the annual cycle (season), dim % 4 == 0."""
    if dim % 4:
        raise ValueError(f"time code dim must be divisible by 4, got {dim}")
    years = days_since_1970.double() / DAYS_PER_YEAR + 1970.0  # fractional calendar year
    trend = sincos_1d((years - 2000.0).float(), dim // 2)
    season = harmonics(2 * math.pi * torch.frac(years), dim // 4)
    return torch.cat([trend, season], dim=-1)


def location_code(lonlat: torch.Tensor, dim: int) -> torch.Tensor:
    """(..., 2) lon, lat in degrees -> (..., dim) float32: harmonics of longitude (periodic in
    360°) and of latitude (k=1 alone is unique over -90..90°), dim/2 each, dim % 4 == 0."""
    if dim % 4:
        raise ValueError(f"location code dim must be divisible by 4, got {dim}")
    rad = torch.deg2rad(lonlat.double())
    return torch.cat([harmonics(rad[..., 0], dim // 4), harmonics(rad[..., 1], dim // 4)], dim=-1)

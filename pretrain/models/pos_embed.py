"""Fixed 2-D sin-cos position embedding whose coordinates are scaled by ground sample distance.

Coordinates are patch indices multiplied by ``scale = gsd_m / ref_gsd_m`` (Scale-MAE style), so
two patches that are the same *ground* distance apart get the same relative code regardless of
the sensor's resolution. Nothing is cached per image size, so any grid works.
"""

from __future__ import annotations

import torch

__all__ = ["sincos_1d", "sincos_2d"]


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

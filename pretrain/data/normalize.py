"""Normalisation from manifest statistics (never hard-coded).

x_norm = (physical - mean[c]) / std[c] on valid pixels; invalid pixels become 0 AND stay
flagged in `valid`, so objectives can exclude them (0 is never mistaken for real data).
"""
from __future__ import annotations

import numpy as np


def stats_for(manifest_sensors: dict, sensor: str) -> dict:
    """{'bands', 'wavelengths_nm', 'mean', 'std', 'units', 'gsd_m'} for one sensor of a manifest."""
    if sensor not in manifest_sensors:
        raise KeyError(f"sensor {sensor!r} has no statistics in the manifest (has: {', '.join(manifest_sensors)})")
    info = manifest_sensors[sensor]
    mean, std = [], []
    for b in info["bands"]:
        s = info["stats"].get(b)
        if not s or not s.get("count"):
            raise ValueError(f"sensor {sensor}: band {b} has no valid pixels in the manifest statistics")
        mean.append(s["mean"])
        std.append(max(s["std"], 1e-6))
    return {"bands": list(info["bands"]), "wavelengths_nm": list(info["wavelengths_nm"]),
            "gsd_m": info["gsd_m"], "units": info["units"], "mean": mean, "std": std}


def normalize(physical: np.ndarray, valid: np.ndarray, mean, std) -> np.ndarray:
    """physical (..., C, H, W) float, valid (..., H, W) bool -> float32 (..., C, H, W)."""
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    x = (physical.astype(np.float32) - m) / s
    return np.where(valid[..., None, :, :], x, np.float32(0.0)).astype(np.float32)


def normalization_table(manifest: dict) -> dict:
    """sensor -> stats_for(...) for every sensor of a manifest (what exports carry)."""
    return {sensor: stats_for(manifest["sensors"], sensor) for sensor in manifest["sensors"]}


def stored_affine(scale, offset, stats: dict) -> np.ndarray:
    """(2, C) float32 (scale/std, (offset-mean)/std): normalised = stored * a + b."""
    mean, std = np.asarray(stats["mean"], np.float64), np.asarray(stats["std"], np.float64)
    scale, offset = np.asarray(scale, np.float64), np.asarray(offset, np.float64)
    return np.stack([scale / std, (offset - mean) / std]).astype(np.float32)

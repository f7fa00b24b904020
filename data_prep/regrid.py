"""Read a scene on a coarser target grid (ground sample distance), for per-sensor chip settings.

Only integer coarsening factors: each target pixel is the mean of the VALID k x k source pixels
(backscatter in dB is averaged in linear power, then converted back), and is valid when at
least half of them are. A finer target than the product's own grid is refused: upsampling would
invent detail the sensor never saw.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data_prep.sources.scene import ProductError, Scene, Window


def coarsen(scene: Scene, gsd_m: float) -> Scene:
    if gsd_m <= 0 or abs(gsd_m - scene.gsd_m) < 1e-9:
        return scene
    k = gsd_m / scene.gsd_m
    if k < 1 or abs(k - round(k)) > 1e-6:
        raise ProductError(f"{scene.path}: target gsd {gsd_m} m is not an integer multiple of the product's "
                           f"{scene.gsd_m} m (only coarser grids, integer factors)")
    k = int(round(k))
    a, b, c, d, e, f = scene.transform
    db = scene.units.startswith("backscatter dB")
    info = np.iinfo(np.dtype(scene.dtype))
    scale = np.asarray(scene.scale, np.float64)[:, None, None]
    offset = np.asarray(scene.offset, np.float64)[:, None, None]

    def read(win: Window) -> tuple[np.ndarray, np.ndarray]:
        stored, valid = scene.read(Window(win.row * k, win.col * k, win.height * k, win.width * k))
        x = stored.astype(np.float64) * scale + offset                       # physical (C, hk, wk)
        if db:
            x = 10.0 ** (x / 10.0)
        c_, h, w = x.shape[0], win.height, win.width
        v = valid.reshape(h, k, w, k)
        n = v.sum(axis=(1, 3))                                               # valid sub-pixels (h, w)
        total = np.where(v[None], x.reshape(c_, h, k, w, k), 0.0).sum(axis=(2, 4))
        mean = total / np.maximum(n, 1)
        if db:
            mean = 10.0 * np.log10(np.maximum(mean, 1e-30))
        out = np.clip(np.rint((mean - offset) / scale), info.min, info.max).astype(scene.dtype)
        return out, n * 2 >= k * k

    notes = list(scene.radiometry.get("notes", [])) + [
        f"coarsened from {scene.gsd_m:g} m to {gsd_m:g} m: mean of valid {k}x{k} pixels"
        + (" in linear power" if db else "") + ", valid where at least half are"]
    return dataclasses.replace(scene, gsd_m=float(gsd_m), transform=(a * k, b, c, d, e * k, f),
                               height=scene.height // k, width=scene.width // k, reader=read,
                               radiometry={**scene.radiometry, "notes": notes})

"""Batch assembly for the stored-integer path: decoded samples -> one batch, one copy per pixel.

The general path (`to_tensors` per sample, `augment`, `collate`) copies each chip three times
(to a tensor, through flip/rot90, into the stacked batch) and builds a dozen small tensors per
sample. When the augmentation is geometry-only (flips, 90-degree turns) the flip and the turn
are strided numpy views, so each sample can be written straight into its slot of a batch array
allocated once: the only copy of the pixels. The draws are the same as `augment`'s
(`draw_flips_rot90` from `sample_generator(seed, key, epoch)`), so both paths give identical
batches (tested).
"""
from __future__ import annotations

import numpy as np

from pretrain.data.augment import AugmentSpec, draw_flips_rot90, sample_generator
from pretrain.data.buffers import BatchRing
from pretrain.data.normalize import stored_affine


def epoch_days(iso: str) -> float:
    """'YYYY-MM-DDTHH:MM:SSZ' -> days since 1970-01-01 (UTC)."""
    return float(np.datetime64(iso.rstrip("Z"), "s").astype(np.int64)) / 86400.0


class Assembler:
    """Builds batches from decoded samples of one sensor and shape.

    Output (same contract as `collate` over `to_tensors(stored=True)`):
      stored (B,T,C,H,W) stored integers, affine (B,2,C) float32 (normalised = stored*a + b),
      valid (B,T,H,W) bool, wavelengths_nm (B,C) float32, gsd_m (B,) float32, times (B,T) float64,
      lonlat (B,2) float32, landcover (B,K) float32 when every sample has it, key list, sensor str.
    """

    def __init__(self, norm: dict, spec: AugmentSpec | None, seed: int, ring: BatchRing | None = None):
        """ring: where batch tensors come from (buffers.BatchRing; default: new ones per batch)."""
        if spec is not None and (spec.crop or spec.out_size or spec.noise_std):
            raise ValueError("Assembler handles geometry-only augmentation (flips, rot90)")
        self.norm, self.spec, self.seed = norm, spec, seed
        self.ring = ring or BatchRing(0)
        self._affine: dict[tuple, np.ndarray] = {}     # (sensor, scale, offset) -> (2, C) float32
        self._days: dict[str, float] = {}

    def affine(self, sample: dict) -> np.ndarray:
        key = (sample["sensor"], tuple(sample["scale"]), tuple(sample["offset"]))
        out = self._affine.get(key)
        if out is None:
            out = self._affine[key] = stored_affine(key[1], key[2], self.norm[sample["sensor"]])
        return out

    def days(self, iso: str) -> float:
        d = self._days.get(iso)
        if d is None:
            d = self._days[iso] = epoch_days(iso)
        return d

    def _geometry(self, key: str, epoch: int, square: bool) -> tuple[list[int], int]:
        spec = self.spec
        if spec is None or not (spec.flips or spec.rot90):
            return [], 0
        return draw_flips_rot90(spec, sample_generator(self.seed, key, epoch=epoch), square)

    def __call__(self, samples: list[dict], epochs: list[int]) -> dict:
        first = samples[0]
        n, (t, c, h, w) = len(samples), first["image"].shape
        ring = self.ring
        # torch tensors all the way out: a tensor made by torch.from_numpy is not a shared
        # storage, and sending it from a worker would copy it again (see buffers.py)
        out = {"stored": ring.tensor("stored", (n, t, c, h, w), first["image"].dtype),
               "valid": ring.tensor("valid", (n, t, h, w), bool),
               "wavelengths_nm": ring.tensor("wavelengths_nm", (n, c), np.float32),
               "gsd_m": ring.tensor("gsd_m", (n,), np.float32),
               "times": ring.tensor("times", (n, t), np.float64),
               "lonlat": ring.tensor("lonlat", (n, 2), np.float32),
               "affine": ring.tensor("affine", (n, 2, c), np.float32)}
        stored, valid, wavelengths, gsd, times, lonlat, affine = (
            out[k].numpy() for k in ("stored", "valid", "wavelengths_nm", "gsd_m", "times", "lonlat", "affine"))
        with_lc = all(s.get("landcover") for s in samples)
        if with_lc:
            k_lc = len(first["landcover"]["fractions"])
            out["landcover"] = ring.tensor("landcover", (n, k_lc), np.float32)
            landcover = out["landcover"].numpy()
        bands = self.norm[first["sensor"]]["bands"]
        for i, (s, epoch) in enumerate(zip(samples, epochs)):
            if s["bands"] != bands:
                raise ValueError(f"sample {s['key']}: bands {s['bands']} differ from the manifest's {bands}")
            img, ok = s["image"], s["valid"]
            dims, k = self._geometry(s["key"], epoch, square=h == w)
            if dims:
                img, ok = np.flip(img, dims), np.flip(ok, dims)
            if k:
                img, ok = np.rot90(img, k, axes=(-2, -1)), np.rot90(ok, k, axes=(-2, -1))
            stored[i] = img                                        # the one copy of the pixels
            valid[i] = ok
            wavelengths[i] = s["wavelengths_nm"]
            gsd[i] = s["gsd_m"]
            times[i] = [self.days(x) for x in s["times"]]
            lonlat[i] = s["lonlat"]
            affine[i] = self.affine(s)
            if with_lc:
                landcover[i] = s["landcover"]["fractions"]
        out["key"] = [s["key"] for s in samples]
        out["sensor"] = first["sensor"]
        return out

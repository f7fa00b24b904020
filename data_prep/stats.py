"""Exact, mergeable per-band statistics on valid pixels.

Stored values are integers and physical = stored * scale + offset, so for a fixed `step`
(the band's scale) every physical value is an integer number of steps from zero. We keep an
integer histogram over those steps: counts add exactly across products and workers, and
count, mean, std, min, max, p1 and p99 all come from it exactly (percentiles to one step).
"""
from __future__ import annotations

import numpy as np


class BandHistogram:
    def __init__(self, step: float):
        self.step = float(step)
        self.lo = 0                              # integer step index of counts[0]
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, physical_steps: np.ndarray) -> None:
        """Add values given as integer step indices (1-D int array)."""
        k = np.asarray(physical_steps, dtype=np.int64).ravel()
        if k.size == 0:
            return
        kmin, kmax = int(k.min()), int(k.max())
        self._extend(kmin, kmax)
        self.counts += np.bincount(k - self.lo, minlength=self.counts.size)

    def _extend(self, kmin: int, kmax: int) -> None:
        if self.counts.size == 0:
            self.lo, self.counts = kmin, np.zeros(kmax - kmin + 1, np.int64)
            return
        hi = self.lo + self.counts.size - 1
        new_lo, new_hi = min(self.lo, kmin), max(hi, kmax)
        if (new_lo, new_hi) != (self.lo, hi):
            grown = np.zeros(new_hi - new_lo + 1, np.int64)
            grown[self.lo - new_lo: self.lo - new_lo + self.counts.size] = self.counts
            self.lo, self.counts = new_lo, grown

    def merge(self, other: "BandHistogram") -> None:
        if other.counts.size == 0:
            return
        if abs(other.step - self.step) > 1e-12 * max(1.0, abs(self.step)):
            raise ValueError(f"cannot merge histograms with steps {self.step} and {other.step}")
        self._extend(other.lo, other.lo + other.counts.size - 1)
        start = other.lo - self.lo
        self.counts[start:start + other.counts.size] += other.counts

    def summary(self) -> dict:
        n = int(self.counts.sum())
        if n == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None, "p1": None, "p99": None}
        idx = np.nonzero(self.counts)[0]
        values = (np.arange(self.counts.size, dtype=np.float64) + self.lo) * self.step
        mean = float((self.counts * values).sum() / n)
        var = float((self.counts * (values - mean) ** 2).sum() / n)
        cdf = np.cumsum(self.counts)
        pct = lambda q: float(values[np.searchsorted(cdf, q * n, side="left")])  # noqa: E731
        return {"count": n, "mean": mean, "std": var ** 0.5,
                "min": float(values[idx[0]]), "max": float(values[idx[-1]]),
                "p1": pct(0.01), "p99": pct(0.99)}


class DatasetStats:
    """sensor -> band -> BandHistogram."""

    def __init__(self):
        self.sensors: dict[str, dict[str, BandHistogram]] = {}

    def add_sample(self, sample: dict) -> None:
        bands = self.sensors.setdefault(sample["sensor"], {})
        img, valid = sample["image"], sample["valid"]            # (T,C,H,W), (T,H,W)
        for c, name in enumerate(sample["bands"]):
            step, offset = sample["scale"][c], sample["offset"][c]
            hist = bands.setdefault(name, BandHistogram(step))
            k = img[:, c][valid].astype(np.int64) + int(round(offset / step))
            hist.add(k)

    def merge(self, other: "DatasetStats") -> None:
        for sensor, bands in other.sensors.items():
            mine = self.sensors.setdefault(sensor, {})
            for name, hist in bands.items():
                mine.setdefault(name, BandHistogram(hist.step)).merge(hist)

    def summary(self) -> dict:
        return {s: {b: h.summary() for b, h in bands.items()} for s, bands in self.sensors.items()}

"""Exact, mergeable per-band statistics on valid pixels.

Stored values are integers and physical = stored * scale + offset, with (scale, offset) fixed
per product and band. So each band keeps, per distinct (scale, offset), an integer histogram of
its STORED values: histograms add exactly across products and workers (in any order), and
count, mean, std, min, max, p1 and p99 of the physical values all come from them exactly
(percentiles are inverted-CDF order statistics), whatever the scale and offset are
(Sentinel-2's -0.1, Landsat's -0.2 with 2.75e-5 steps, EnMAP's per-band gains).
"""
from __future__ import annotations

import numpy as np


class IntHistogram:
    """Counts of integer values, growing its range as needed."""

    def __init__(self):
        self.lo = 0                              # integer value of counts[0]
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values).ravel()
        if v.size == 0:
            return
        if v.dtype.kind == "u":          # unsigned: count from 0 directly, no shifted copy
            c = np.bincount(v)
            self._extend(0, c.size - 1)
            self.counts[-self.lo:-self.lo + c.size] += c
            return
        k = v.astype(np.int64, copy=False)
        self._extend(int(k.min()), int(k.max()))
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

    def merge(self, other: "IntHistogram") -> None:
        if other.counts.size == 0:
            return
        self._extend(other.lo, other.lo + other.counts.size - 1)
        start = other.lo - self.lo
        self.counts[start:start + other.counts.size] += other.counts

    def nonzero(self) -> tuple[np.ndarray, np.ndarray]:
        """(integer values, counts) where counts > 0."""
        idx = np.nonzero(self.counts)[0]
        return idx + self.lo, self.counts[idx]


class BandStats:
    """One band: {(scale, offset): IntHistogram of stored values}."""

    def __init__(self):
        self.groups: dict[tuple[float, float], IntHistogram] = {}

    def add(self, stored: np.ndarray, scale: float, offset: float) -> None:
        self.groups.setdefault((float(scale), float(offset)), IntHistogram()).add(stored)

    def merge(self, other: "BandStats") -> None:
        for key, hist in other.groups.items():
            self.groups.setdefault(key, IntHistogram()).merge(hist)

    def summary(self) -> dict:
        parts = [(v * scale + offset, c) for (scale, offset), h in self.groups.items()
                 for v, c in [h.nonzero()] if c.size]
        if not parts:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None, "p1": None, "p99": None}
        values = np.concatenate([v.astype(np.float64) for v, _ in parts])
        counts = np.concatenate([c for _, c in parts])
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        n = int(counts.sum())
        mean = float((counts * values).sum() / n)
        var = float((counts * (values - mean) ** 2).sum() / n)
        cdf = np.cumsum(counts)
        pct = lambda q: float(values[np.searchsorted(cdf, q * n, side="left")])  # noqa: E731
        return {"count": n, "mean": mean, "std": var ** 0.5, "min": float(values[0]), "max": float(values[-1]),
                "p1": pct(0.01), "p99": pct(0.99)}


class DatasetStats:
    """sensor -> band -> BandStats."""

    def __init__(self):
        self.sensors: dict[str, dict[str, BandStats]] = {}

    def add_sample(self, sample: dict) -> None:
        bands = self.sensors.setdefault(sample["sensor"], {})
        img, valid = sample["image"], sample["valid"]            # (T,C,H,W), (T,H,W)
        everywhere = bool(valid.all())                           # no boolean selection (a copy) needed
        for c, name in enumerate(sample["bands"]):
            values = img[:, c] if everywhere else img[:, c][valid]
            bands.setdefault(name, BandStats()).add(values, sample["scale"][c], sample["offset"][c])

    def merge(self, other: "DatasetStats") -> None:
        for sensor, bands in other.sensors.items():
            mine = self.sensors.setdefault(sensor, {})
            for name, st in bands.items():
                mine.setdefault(name, BandStats()).merge(st)

    def summary(self) -> dict:
        return {s: {b: st.summary() for b, st in bands.items()} for s, bands in self.sensors.items()}


def stats_to_bytes(stats: DatasetStats) -> bytes:
    """Serialise the histograms (npz: one 'lo' scalar and 'counts' array per sensor/band/(scale, offset))."""
    import io
    import json

    arrays, index = {}, []
    for sensor, bands in stats.sensors.items():
        for band, st in bands.items():
            for (scale, offset), h in st.groups.items():
                i = len(index)
                index.append([sensor, band, scale, offset, h.lo])
                arrays[f"c{i}"] = h.counts
    buf = io.BytesIO()
    np.savez_compressed(buf, index=np.frombuffer(json.dumps(index).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def stats_from_bytes(data: bytes) -> DatasetStats:
    import io
    import json

    out = DatasetStats()
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        for i, (sensor, band, scale, offset, lo) in enumerate(json.loads(z["index"].tobytes())):
            h = IntHistogram()
            h.lo, h.counts = int(lo), z[f"c{i}"].astype(np.int64)
            st = out.sensors.setdefault(sensor, {}).setdefault(band, BandStats())
            st.groups.setdefault((float(scale), float(offset)), IntHistogram()).merge(h)
    return out

"""A labelled task from a prepared eofm dataset: chips in memory + a spatial-block split.

Small evaluation sets only (everything is held in memory). Only the first frame (T=0) of each
sample is used. Images are normalised with the EXPORT's statistics for the sample's sensor,
and the samples' own band wavelengths are passed to the band-agnostic encoder.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import fsspec
import numpy as np
from tqdm import tqdm

from data_prep import manifest as manifest_io
from data_prep.sample import decode, physical
from data_prep.tario import iter_tar_samples
from finetune import FinetuneError
from finetune.labels import LabelSource
from pretrain.data.normalize import normalize

# Metres per degree for a local equirectangular approximation (geographic CRSs only): good to
# <1% over a block, which is all a split needs.
M_PER_DEG_LAT = 110_574.0
M_PER_DEG_LON_EQUATOR = 111_320.0


@dataclass
class Task:
    """N labelled chips. images (N, C, H, W) float32 normalised (invalid pixels 0); valid
    (N, H, W) bool; labels (N,) int64; wavelengths_nm (C,) float32; gsd_m (N,) float32;
    blocks (N,) spatial block ids; is_test (N,) bool."""
    images: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    wavelengths_nm: np.ndarray
    gsd_m: np.ndarray
    keys: list[str]
    blocks: list[str]
    is_test: np.ndarray
    classes: tuple[str, ...]
    sensor: str
    bands: list[str]
    n_unlabelled: int              # chips the label source could not label (left out)

    @property
    def train_idx(self) -> np.ndarray:
        return np.flatnonzero(~self.is_test)

    @property
    def test_idx(self) -> np.ndarray:
        return np.flatnonzero(self.is_test)

    def class_counts(self, idx: np.ndarray | None = None) -> dict[str, int]:
        labels = self.labels if idx is None else self.labels[idx]
        counts = np.bincount(labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}


def read_samples(path: str, progress: bool = False) -> list[dict]:
    """All decoded samples of a prepared dataset (ManifestError when it has no manifest)."""
    m = manifest_io.read(path)
    samples = []
    with tqdm(total=m.get("samples"), desc="reading chips", unit="chip", disable=not progress,
              leave=False) as bar:
        for url in manifest_io.shard_urls(path, m):
            try:
                with fsspec.open(url, "rb") as f:
                    for key, files in iter_tar_samples(f, url):
                        samples.append(decode(files, key))
                        bar.update()
            except (OSError, ValueError) as err:  # missing/corrupt shard or a bad sample
                raise FinetuneError(f"{url}: cannot read the shard: {err}") from err
    if not samples:
        raise FinetuneError(f"{path}: the dataset has no samples")
    return samples


def normalization_for(export_cfg: dict, sensor: str, bands: list[str], wavelengths_nm: list[float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(mean (C,), std (C,)) from the export's statistics, looked up by band name.

    Every dataset band must have statistics in the export; nothing is zero-filled or guessed.
    """
    table = export_cfg.get("normalization") or {}
    if sensor not in table:
        raise FinetuneError(f"the export has no normalisation statistics for sensor {sensor!r} "
                            f"(it has: {', '.join(table) or 'none'})")
    stats = table[sensor]
    have = list(stats["bands"])
    missing = [b for b in bands if b not in have]
    if missing:
        raise FinetuneError(f"sensor {sensor}: the dataset's bands {bands} differ from the export's "
                            f"normalisation bands {have}; no statistics for {', '.join(missing)}")
    idx = [have.index(b) for b in bands]
    # Same name but a different centre wavelength means a different band convention: refuse.
    ref_wl = stats.get("wavelengths_nm")
    if ref_wl is not None:
        off = [b for b, i, w in zip(bands, idx, wavelengths_nm) if abs(ref_wl[i] - w) > 5.0]
        if off:
            raise FinetuneError(f"sensor {sensor}: bands {', '.join(off)} have different wavelengths "
                                f"in the dataset and in the export's normalisation")
    mean = np.asarray(stats["mean"], np.float32)[idx]
    std = np.maximum(np.asarray(stats["std"], np.float32)[idx], 1e-6)
    return mean, std


@functools.lru_cache(maxsize=None)
def _is_geographic(crs: str) -> bool:
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return bool(CRS.from_user_input(crs).is_geographic)
    except CRSError as err:
        raise FinetuneError(f"cannot read the chips' CRS {crs!r}: {err}") from None


def block_id(sample: dict, block_m: float) -> str:
    """Spatial block of a chip: '<crs>|<product>|<bx>|<by>' from its origin (transform[2], [5]).

    Geographic CRSs (degrees) are converted to approximate metres first, else every chip of a
    scene would fall into one block.
    """
    t, crs = sample["transform"], str(sample["crs"])
    x, y = float(t[2]), float(t[5])
    if _is_geographic(crs):
        y = y * M_PER_DEG_LAT
        # Scale longitude by the cosine of the block ROW's latitude, not the chip's own: with
        # the chip's, block edges would shear with latitude and split neighbouring chips.
        row_lat = math.floor(y / block_m) * block_m / M_PER_DEG_LAT
        x = x * M_PER_DEG_LON_EQUATOR * math.cos(math.radians(row_lat))
    product = sample["product_ids"][0] if sample["product_ids"] else ""
    return f"{crs}|{product}|{math.floor(x / block_m)}|{math.floor(y / block_m)}"


def split_blocks(blocks: list[str], test_fraction: float, seed: int) -> np.ndarray:
    """(N,) bool is_test: each distinct block goes to test with probability test_fraction.

    A hash (not an RNG stream) decides, so a block's side depends only on (seed, block id),
    never on which other chips are in the dataset or their order.
    """
    def u(block: str) -> float:
        digest = hashlib.sha256(f"{seed}|{block}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    side = {b: u(b) < test_fraction for b in set(blocks)}
    return np.array([side[b] for b in blocks], dtype=bool)


def check_split(labels: np.ndarray, is_test: np.ndarray, classes: tuple[str, ...]) -> None:
    """Raise FinetuneError if a split is empty or a class is present in only one split."""
    hint = "change data.seed, data.test_fraction or data.block_m, or use more data"
    n_test = int(is_test.sum())
    if n_test == 0 or n_test == len(labels):
        raise FinetuneError(f"the spatial split left the {'test' if n_test == 0 else 'train'} split "
                            f"empty ({len(labels)} chips, {len(set(labels))} classes): {hint}")
    train_cls, test_cls = set(labels[~is_test].tolist()), set(labels[is_test].tolist())
    for missing_in, there in (("test", train_cls - test_cls), ("train", test_cls - train_cls)):
        if there:
            names = ", ".join(classes[c] for c in sorted(there))
            raise FinetuneError(f"class(es) {names} occur only in the {'train' if missing_in == 'test' else 'test'} "
                                f"split, none in {missing_in}: {hint}")


def load_task(path: str, labels: LabelSource, export_cfg: dict, block_m: float,
              test_fraction: float, seed: int, progress: bool = False) -> Task:
    """Read, label, normalise and split the dataset at `path` (see Task for shapes)."""
    samples = read_samples(path, progress)
    first = samples[0]
    for s in samples:  # one tensor for the whole set: one sensor, band set and chip size
        for field in ("sensor", "bands"):
            if s[field] != first[field]:
                raise FinetuneError(f"{path}: samples differ in {field} ({first[field]} vs {s[field]}); "
                                    f"fine-tuning handles one sensor and band set per dataset")
        if s["image"].shape[2:] != first["image"].shape[2:]:
            raise FinetuneError(f"{path}: chips differ in size ({first['image'].shape[2:]} vs "
                                f"{s['image'].shape[2:]})")
    sensor, bands = first["sensor"], list(first["bands"])
    mean, std = normalization_for(export_cfg, sensor, bands, first["wavelengths_nm"])

    kept, images, valid, y = [], [], [], []
    for s in samples:
        phys, ok = physical(s)[0], s["valid"][0]          # first frame: (C, H, W), (H, W)
        label = labels.label(phys, ok, bands)
        if label < 0:
            continue
        kept.append(s)
        images.append(normalize(phys, ok, mean, std))
        valid.append(ok)
        y.append(label)
    if not kept:
        raise FinetuneError(f"{path}: the label source {labels.name!r} could label none of the chips")

    blocks = [block_id(s, block_m) for s in kept]
    is_test = split_blocks(blocks, test_fraction, seed)
    labels_arr = np.asarray(y, np.int64)
    check_split(labels_arr, is_test, labels.classes)
    return Task(
        images=np.stack(images).astype(np.float32), valid=np.stack(valid).astype(bool),
        labels=labels_arr, wavelengths_nm=np.asarray(first["wavelengths_nm"], np.float32),
        gsd_m=np.asarray([s["gsd_m"] for s in kept], np.float32), keys=[s["key"] for s in kept],
        blocks=blocks, is_test=is_test, classes=tuple(labels.classes), sensor=sensor, bands=bands,
        n_unlabelled=len(samples) - len(kept),
    )

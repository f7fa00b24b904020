"""A labelled task in memory: any reader's `Raw` -> bands, tiles, split, normalisation -> Task.

Small evaluation sets only (everything is held in memory). Readers: a prepared eofm dataset
with a registered label source (`read_eofm`, first frame of each sample), and the layouts of
finetune.datasets (folder, eurosat, bigearthnet). Then, the same for all (`build_task`):
  1. bands: data.bands selects a subset by name (an unknown name is an error); the encoder
     gets exactly the dataset's bands with their wavelengths -- nothing is zero-filled;
  2. tiles: data.tile > 0 cuts every image into non-overlapping tiles (edge remainders dropped),
     labels follow (class of the image; pixel labels cut alike; multi-label from the tile's map);
  3. split (data.split): `file` (the layout's split file; `val` and unlisted samples are left
     out), `blocks` (spatial blocks of data.block_m metres hashed to test with probability
     test_fraction), `random` (seeded, stratified per class for classification); with
     data.repeats = R > 1, R splits with seeds seed .. seed+R-1 (random or blocks only);
  4. normalisation (data.normalization), per band:
       export  the export's statistics (same band name, wavelength within 5 nm); an error if any
               band has none;
       train   mean / std over valid pixels of the training split (with R > 1 repeated splits:
               of all the task's samples -- pixels only, no labels -- so one normalisation,
               hence one set of frozen features, serves every split);
       auto    export statistics for a band when the export has the same band (name and
               wavelength) in the same physical units, else the training split's. The report
               lists the source of every band.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass, field

import fsspec
import numpy as np
from tqdm import tqdm

from data_prep import manifest as manifest_io
from data_prep.sample import decode, physical
from data_prep.tario import iter_tar_samples
from finetune import FinetuneError
from finetune.datasets import IGNORE, Raw
from finetune.labels import LabelSource
from pretrain.data.normalize import normalize

# Metres per degree for a local equirectangular approximation (geographic CRSs only): good to
# <1% over a block, which is all a split needs.
M_PER_DEG_LAT = 110_574.0
M_PER_DEG_LON_EQUATOR = 111_320.0
WAVELENGTH_TOL_NM = 5.0


@dataclass
class Task:
    """N labelled samples. images (N, C, H, W) float32 normalised (invalid pixels 0); valid
    (N, H, W) bool; targets by kind: classification (N,) int64, multilabel (N, K) float32 {0,1},
    segmentation (N, H, W) int64 (IGNORE = -1 does not count), regression (N, H, W) float32
    (NaN does not count); wavelengths_nm (C,) float32; gsd_m (N,) float32; groups (N,) split
    groups (spatial blocks or keys); is_test (N,) bool: the current split, one of
    splits (R, N) bool (repeated splits, seeds split_seeds; `with_split(r)` selects one)."""
    kind: str
    images: np.ndarray
    valid: np.ndarray
    targets: np.ndarray
    wavelengths_nm: np.ndarray
    gsd_m: np.ndarray
    keys: list[str]
    groups: list[str]
    is_test: np.ndarray
    classes: tuple[str, ...]
    sensor: str
    bands: list[str]
    n_unlabelled: int              # samples without a usable label (left out)
    normalization: list[dict] = field(default_factory=list)   # per band: name, mean, std, source
    split_info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    splits: np.ndarray | None = None   # (R, N) bool is_test of every repeated split (None: is_test only)
    split_seeds: list[int] = field(default_factory=list)

    @property
    def repeats(self) -> int:
        return 1 if self.splits is None else len(self.splits)

    def with_split(self, r: int) -> "Task":
        """The same task (arrays shared, not copied) with repeated split r as its train/test split."""
        return self if self.splits is None else dataclasses.replace(self, is_test=self.splits[r])

    @property
    def train_idx(self) -> np.ndarray:
        return np.flatnonzero(~self.is_test)

    @property
    def test_idx(self) -> np.ndarray:
        return np.flatnonzero(self.is_test)

    @property
    def image_level(self) -> bool:
        return self.kind in ("classification", "multilabel")

    def class_counts(self, idx: np.ndarray | None = None) -> dict[str, int]:
        """Samples per class (classification), positives per class (multilabel), labelled
        pixels per class (segmentation); {} for regression."""
        t = self.targets if idx is None else self.targets[idx]
        k = len(self.classes)
        if self.kind == "classification":
            counts = np.bincount(t, minlength=k)
        elif self.kind == "multilabel":
            counts = t.sum(0).astype(np.int64)
        elif self.kind == "segmentation":
            counts = np.bincount(t[t != IGNORE].ravel(), minlength=k)
        else:
            return {}
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


def read_eofm(path: str, labels: LabelSource, progress: bool = False) -> Raw:
    """A prepared eofm dataset labelled by a label source (first frame of each sample)."""
    samples = read_samples(path, progress)
    first = samples[0]
    for s in samples:  # one tensor for the whole set: one sensor, band set and chip size
        for name in ("sensor", "bands"):
            if s[name] != first[name]:
                raise FinetuneError(f"{path}: samples differ in {name} ({first[name]} vs {s[name]}); "
                                    f"fine-tuning handles one sensor and band set per dataset")
        if s["image"].shape[2:] != first["image"].shape[2:]:
            raise FinetuneError(f"{path}: chips differ in size ({first['image'].shape[2:]} vs "
                                f"{s['image'].shape[2:]})")
    bands = list(first["bands"])
    kept, images, valid, y = [], [], [], []
    for s in samples:
        phys, ok = physical(s)[0], s["valid"][0]          # first frame: (C, H, W), (H, W)
        label = labels.label(phys, ok, bands)
        if label < 0:
            continue
        kept.append(s)
        images.append(phys.astype(np.float32))
        valid.append(ok)
        y.append(label)
    if not kept:
        raise FinetuneError(f"{path}: the label source {labels.name!r} could label none of the chips")
    return Raw(kind="classification", physical=np.stack(images), valid=np.stack(valid).astype(bool),
               targets=np.asarray(y, np.int64), classes=tuple(labels.classes), bands=bands,
               wavelengths_nm=[float(w) for w in first["wavelengths_nm"]], units=str(first.get("units", "")),
               sensor=first["sensor"], gsd_m=np.asarray([s["gsd_m"] for s in kept], np.float32),
               keys=[s["key"] for s in kept], geo=[{k: s[k] for k in ("crs", "transform", "product_ids")} for s in kept],
               n_unlabelled=len(samples) - len(kept))


# ---- the steps shared by every layout ----------------------------------------------------------

def select_bands(raw: Raw, bands: list[str]) -> Raw:
    """Keep `bands` (in that order); [] keeps all. Unknown names are an error."""
    if not bands:
        return raw
    unknown = [b for b in bands if b not in raw.bands]
    if unknown:
        raise FinetuneError(f"data.bands: {', '.join(unknown)} not in the dataset's bands {raw.bands}")
    idx = [raw.bands.index(b) for b in bands]
    raw.physical = raw.physical[:, idx]
    raw.bands = list(bands)
    raw.wavelengths_nm = [raw.wavelengths_nm[i] for i in idx]
    return raw


def tile(raw: Raw, size: int) -> Raw:
    """Cut every sample into non-overlapping size x size tiles (row-major; remainders at the
    right / bottom edges dropped). Keys get _r<row>_c<col>; transforms move to the tile origin."""
    n, c, h, w = raw.physical.shape
    if size <= 0 or (size == h and size == w):
        return raw
    if size > h or size > w:
        raise FinetuneError(f"data.tile={size} is larger than the images ({h}x{w})")
    rows, cols = h // size, w // size
    cut = lambda a: a[..., :rows * size, :cols * size].reshape(*a.shape[:-2], rows, size, cols, size)  # noqa: E731

    def tiles(a: np.ndarray) -> np.ndarray:        # (N, ..., H, W) -> (N*rows*cols, ..., size, size)
        t = cut(a)
        lead = a.ndim - 2
        t = np.moveaxis(t, (lead, lead + 2), (1, 2))  # (N, rows, cols, ..., size, size)
        return t.reshape(n * rows * cols, *a.shape[1:-2], size, size)

    rep = lambda seq: [x for x in seq for _ in range(rows * cols)]  # noqa: E731
    raw.physical, raw.valid = tiles(raw.physical), tiles(raw.valid)
    raw.targets = np.repeat(raw.targets, rows * cols) if raw.kind == "classification" else tiles(raw.targets)
    raw.gsd_m = np.repeat(raw.gsd_m, rows * cols)
    raw.keys = [f"{k}_r{r}_c{q}" for k in raw.keys for r in range(rows) for q in range(cols)]
    if raw.geo is not None:
        geo = []
        for g in raw.geo:
            a, b, x0, d, e, y0 = g["transform"][:6]
            for r in range(rows):
                for q in range(cols):
                    px, py = q * size, r * size
                    geo.append({**g, "transform": [a, b, x0 + a * px + b * py, d, e, y0 + d * px + e * py]})
        raw.geo = geo
    raw.split = rep(raw.split) if raw.split is not None else None
    return raw


def to_multilabel(raw: Raw) -> Raw:
    """Segmentation maps -> (N, K) float32 presence of each class (any labelled pixel)."""
    if raw.kind != "segmentation":
        raise FinetuneError(f"a multi-label task needs pixel labels to derive labels from; this layout gives {raw.kind}")
    k = len(raw.classes)
    t = raw.targets.reshape(len(raw.targets), -1)
    raw.targets = np.stack([(t == i).any(1) for i in range(k)], 1).astype(np.float32)
    raw.kind = "multilabel"
    return raw


def labelled(raw: Raw) -> np.ndarray:
    """(N,) bool: the sample has at least one usable label."""
    t = raw.targets
    if raw.kind == "classification":
        return t >= 0
    if raw.kind == "multilabel":
        return np.ones(len(t), bool)  # an all-negative label vector is a label
    flat = t.reshape(len(t), -1)
    return (flat != IGNORE).any(1) if raw.kind == "segmentation" else np.isfinite(flat).any(1)


def random_split(targets: np.ndarray, kind: str, test_fraction: float, seed: int) -> np.ndarray:
    """(N,) bool is_test, seeded. Classification: per class, round(test_fraction * n_c) samples
    (at least 1 when the class has 2+) go to test; otherwise a seeded draw of the same share."""
    rng = np.random.default_rng(seed)
    n = len(targets)
    is_test = np.zeros(n, bool)
    if kind == "classification":
        for c in np.unique(targets):
            idx = rng.permutation(np.flatnonzero(targets == c))
            k = int(round(test_fraction * len(idx)))
            k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1 if len(idx) > 1 else k)
            is_test[idx[:k]] = True
    else:
        is_test[rng.permutation(n)[:max(1, int(round(test_fraction * n)))]] = True
    return is_test


def band_normalization(raw: Raw, train: np.ndarray, export_cfg: dict, mode: str,
                       data_source: str = "training split") -> list[dict]:
    """Per band {band, wavelength_nm, mean, std, source} following data.normalization (module
    doc); bands normalised from the data use the samples `train`, reported as `data_source`."""
    if mode == "export":
        mean, std = normalization_for(export_cfg, raw.sensor, raw.bands, raw.wavelengths_nm)
        return [{"band": b, "wavelength_nm": w, "mean": float(m), "std": float(s), "source": f"export ({raw.sensor})"}
                for b, w, m, s in zip(raw.bands, raw.wavelengths_nm, mean, std)]
    tables = export_cfg.get("normalization") or {}
    # The dataset's own sensor first, then any other table in the same units.
    order = [raw.sensor] if raw.sensor in tables else []
    order += [s for s in tables if s != raw.sensor]
    out = []
    for c, (b, w) in enumerate(zip(raw.bands, raw.wavelengths_nm)):
        hit = None
        if mode == "auto":
            for sensor in order:
                t = tables[sensor]
                if t.get("units") != raw.units or b not in t["bands"]:
                    continue
                i = t["bands"].index(b)
                if abs(t["wavelengths_nm"][i] - w) <= WAVELENGTH_TOL_NM:
                    hit = (float(t["mean"][i]), max(float(t["std"][i]), 1e-6), f"export ({sensor})")
                    break
        if hit is None:
            ok = raw.valid[train]
            vals = raw.physical[train, c][ok]
            if not vals.size:
                raise FinetuneError(f"band {b}: no valid pixel in the {data_source} to compute statistics from")
            hit = (float(vals.mean()), max(float(vals.std()), 1e-6), data_source)
        out.append({"band": b, "wavelength_nm": float(w), "mean": hit[0], "std": hit[1], "source": hit[2]})
    return out


def build_task(raw: Raw, export_cfg: dict, *, bands: list[str] = (), tile_size: int = 0, kind: str = "auto",
               split: str = "auto", test_fraction: float = 0.25, block_m: float = 1280.0, seed: int = 0,
               normalization: str = "auto", default_split: str = "random", repeats: int = 1) -> Task:
    """Raw -> Task: the steps of the module doc, in order (`repeats` splits, seeds seed, seed+1, ...)."""
    raw = select_bands(raw, list(bands))
    raw = tile(raw, tile_size)
    if kind == "multilabel" and raw.kind != "multilabel":
        raw = to_multilabel(raw)
    elif kind not in ("auto", raw.kind):
        raise FinetuneError(f"data.task={kind}: this layout gives {raw.kind} labels"
                            + (" (or multilabel)" if raw.kind == "segmentation" else ""))
    keep = labelled(raw)
    if split == "auto":
        split = "file" if raw.split is not None else default_split
    left_out = 0
    if split == "file":
        if raw.split is None:
            raise FinetuneError("data.split=file: the dataset has no split file (split.csv or splits/; or set "
                                "data.split_file)")
        in_split = np.array([s in ("train", "test") for s in raw.split])
        left_out = int((keep & ~in_split).sum())
        keep &= in_split
    idx = np.flatnonzero(keep)
    n_unlabelled = raw.n_unlabelled + int((~labelled(raw)).sum())
    if not idx.size:
        raise FinetuneError("no labelled sample left to train or test on")
    targets = raw.targets[idx]
    if split == "file" and repeats > 1:
        raise FinetuneError(f"data.repeats={repeats}: a split file fixes one split; use data.split=random or blocks")
    seeds = [seed + r for r in range(repeats)]
    if split == "file":
        splits = [np.array([raw.split[i] == "test" for i in idx])]
        groups = [raw.keys[i] for i in idx]
    elif split == "blocks":
        if raw.geo is None:
            raise FinetuneError("data.split=blocks needs georeferenced samples; use data.split=random")
        groups = [block_id(raw.geo[i], block_m) for i in idx]
        splits = [split_blocks(groups, test_fraction, s) for s in seeds]
    elif split == "random":
        groups = [raw.keys[i] for i in idx]
        splits = [random_split(targets, raw.kind, test_fraction, s) for s in seeds]
    else:
        raise FinetuneError(f"data.split={split!r} unknown (auto, file, blocks, random)")
    for r, is_test in enumerate(splits):
        where = f" (repeat {r}, seed {seeds[r]})" if repeats > 1 else ""
        try:
            if raw.kind == "classification":
                check_split(targets, is_test, raw.classes)
            elif is_test.all() or not is_test.any():
                raise FinetuneError(f"the {split} split left the {'train' if is_test.all() else 'test'} split empty "
                                    f"({len(idx)} samples): change data.seed / test_fraction / block_m, or use more data")
        except FinetuneError as err:
            raise FinetuneError(f"{err}{where}") from None
    is_test = splits[0]
    if repeats > 1:  # one normalisation for every split: pixel statistics of all samples, no labels
        norm = band_normalization(raw, idx, export_cfg, normalization,
                                  f"all {len(idx)} samples (pixels only; shared by the {repeats} splits)")
    else:
        norm = band_normalization(raw, idx[~is_test], export_cfg, normalization)
    mean = np.array([n["mean"] for n in norm], np.float32)
    std = np.array([n["std"] for n in norm], np.float32)
    return Task(
        kind=raw.kind, images=normalize(raw.physical[idx], raw.valid[idx], mean, std),
        valid=raw.valid[idx].astype(bool), targets=targets,
        wavelengths_nm=np.asarray(raw.wavelengths_nm, np.float32), gsd_m=raw.gsd_m[idx].astype(np.float32),
        keys=[raw.keys[i] for i in idx], groups=groups, is_test=is_test, classes=tuple(raw.classes),
        sensor=raw.sensor, bands=list(raw.bands), n_unlabelled=n_unlabelled, normalization=norm,
        split_info={"method": split, "left_out": left_out, "test_fraction": test_fraction, "seed": seed,
                    "repeats": repeats, "split_seeds": seeds[:len(splits)],
                    **({"block_m": block_m} if split == "blocks" else {}),
                    "groups_train": len({groups[i] for i in np.flatnonzero(~is_test)}),
                    "groups_test": len({groups[i] for i in np.flatnonzero(is_test)})},
        notes=list(raw.notes), splits=np.stack(splits), split_seeds=seeds[:len(splits)],
    )


def train_subset(task: Task, fraction: float, seed: int) -> np.ndarray:
    """Indices (sorted) of the training samples used under a partial-label regime.

    Deterministic in (fraction, seed). fraction 1 -> the whole training split. Classification:
    stratified, max(1, round(fraction * n_c)) of every class (every class is seen, as GEO-Bench
    does). Multi-label: one sample per class first (rarest class first, where the class has a
    positive), then a seeded draw up to round(fraction * n). Dense tasks: a seeded draw.
    """
    train = task.train_idx
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng([seed, int(round(fraction * 1e6))])
    n = max(1, int(round(fraction * len(train))))
    if task.kind == "classification":
        y = task.targets[train]
        picks = [rng.permutation(train[y == c])[:max(1, int(round(fraction * (y == c).sum())))] for c in np.unique(y)]
        return np.sort(np.concatenate(picks))
    chosen: list[int] = []
    if task.kind == "multilabel":
        y = task.targets[train] > 0
        for c in np.argsort(y.sum(0), kind="stable"):
            if y[:, c].any() and not y[np.isin(train, chosen), c].any():
                chosen.append(int(rng.choice(train[y[:, c]])))
    rest = rng.permutation(np.setdiff1d(train, chosen))
    chosen += rest[:max(0, n - len(chosen))].tolist()
    return np.sort(np.asarray(chosen, np.int64))

"""The fine-tuning recipe (configs/finetune/*.yaml).

Defaults are small on purpose: ~600 chips of 32x32 or 64x64 with a tiny ViT finish in about a
minute on a laptop CPU. Raise the epochs for a real evaluation. Protocols: linear probe on
frozen features (classification: cross-validated logistic regression; dense tasks: a per-token
linear layer), k-NN (image-level tasks), fine-tuning with layer-wise lr decay; each under every
repeated split (data.repeats) x partial-label regime (data.label_fractions x data.label_seeds),
each also on a random-init twin of the encoder, next to an input-statistics baseline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PROTOCOLS = ("linear_probe", "knn", "finetune")
FORMATS = ("eofm", "folder", "eurosat", "bigearthnet")


@dataclass
class ModelSpec:
    export: str = "runs/export"        # folder written by eofm-export (model.safetensors + config.json)


@dataclass
class FolderSpec:
    bands: list[str] = field(default_factory=list)          # band names in file order ([] = the GeoTIFF's band descriptions)
    wavelengths_nm: list[float] = field(default_factory=list)  # centre wavelengths ([] = from Sentinel-2 band names)
    classes: list[str] = field(default_factory=list)        # segmentation class names ([] = class_0..class_<max label>)
    sensor: str = ""                   # sensor name (matches the export's normalisation tables when equal)
    units: str = ""                    # physical units of the images after the GeoTIFF's scale/offset tags
    ignore_value: float = 255.0        # label value that does not count (also the label file's nodata)


@dataclass
class DataSpec:
    format: Literal["eofm", "folder", "eurosat", "bigearthnet"] = "eofm"   # dataset layout (see finetune.datasets)
    path: str = "runs/prep"            # the dataset folder (eofm: the prepared dataset holding manifest.json)
    labels: str = "ndvi_cover"         # eofm format only: key of finetune.labels.LABELS
    task: Literal["auto", "classification", "multilabel", "segmentation", "regression"] = "auto"
    #                                    auto: eofm/eurosat classification, bigearthnet multilabel, folder segmentation
    bands: list[str] = field(default_factory=list)   # use only these bands, in this order ([] = all the dataset has)
    tile: int = 0                      # cut images into tiles of this side (pixels); 0 = whole images
    split: Literal["auto", "file", "blocks", "random"] = "auto"   # auto: the split file if there is one, else blocks (eofm) or random
    split_file: str = ""               # CSV `id,split` or a folder with train/val/test.txt ("" = <path>/split.csv or <path>/splits/)
    test_fraction: float = 0.25        # blocks: probability that a spatial block goes to test; random: share of test samples
    block_m: float = 1280.0            # side of the square spatial blocks used for the split, metres
    seed: int = 0                      # seed of the split (repeats: seed, seed+1, ..., seed+repeats-1)
    repeats: int = 1                   # evaluate on this many splits (random or blocks), report mean +- std
    normalization: Literal["auto", "export", "train"] = "auto"   # per band: export statistics, training-split statistics, or auto
    label_fractions: list[float] = field(default_factory=lambda: [1.0])   # partial-label regimes: shares of the training labels
    label_seeds: list[int] = field(default_factory=lambda: [0])          # one run per seed and fraction (subset and init); mean +- std reported
    folder: FolderSpec = field(default_factory=FolderSpec)

    def __post_init__(self):
        from finetune.labels import LABELS
        if self.labels not in LABELS:
            raise ValueError(f"labels {self.labels!r} unknown (known: {', '.join(LABELS)})")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.block_m <= 0:
            raise ValueError(f"block_m must be > 0 metres, got {self.block_m}")
        if self.tile < 0:
            raise ValueError(f"tile must be >= 0 pixels, got {self.tile}")
        if not self.label_fractions or any(not 0.0 < f <= 1.0 for f in self.label_fractions):
            raise ValueError(f"label_fractions must be a non-empty list of values in (0, 1], got {self.label_fractions}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not self.label_seeds or len(set(self.label_seeds)) != len(self.label_seeds):
            raise ValueError(f"label_seeds must be a non-empty list of distinct ints, got {self.label_seeds}")


@dataclass
class LinearProbeSpec:
    # classification: multinomial logistic regression (LBFGS, full batch); the L2 strength (mean
    # cross-entropy + l2/2 ||W||^2; sklearn's C = 1 / (l2 * n_train)) is chosen per run by
    # stratified k-fold cross-validation on the training samples
    l2_grid: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    cv_folds: int = 5
    max_iter: int = 100                # LBFGS iterations (all strengths and folds solved together)
    # multi-label and dense tasks: linear layer trained with AdamW + cosine lr
    epochs: int = 100                  # cheap: features are computed once, only the head trains
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 256
    pixel_path: bool = True            # dense tasks: the linear layer also reads each pixel's normalised bands
    #                                    (a linear model of [upsampled token features, bands]; false: tokens only)

    def __post_init__(self):
        _positive(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, max_iter=self.max_iter)
        if not self.l2_grid or any(v <= 0 for v in self.l2_grid):
            raise ValueError(f"l2_grid must be a non-empty list of values > 0, got {self.l2_grid}")
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")


@dataclass
class KnnSpec:
    k: int = 20                        # neighbours (cosine similarity of pooled features)
    temperature: float = 0.07          # vote weight exp(similarity / temperature)

    def __post_init__(self):
        _positive(k=self.k, temperature=self.temperature)


@dataclass
class FinetuneSpec:
    epochs: int = 4                    # end-to-end training is the slow part on CPU
    lr: float = 5e-4                   # head lr; block i gets lr * layer_decay ** (depth - i)
    layer_decay: float = 0.75
    weight_decay: float = 0.05         # not applied to biases, norms, tokens
    batch_size: int = 32
    head: Literal["auto", "linear", "mlp", "light", "upernet"] = "auto"   # image tasks: linear | mlp on `pooled`;
    #                                    dense tasks: linear | light | upernet; auto: linear / upernet
    layers: list[int] = field(default_factory=list)   # blocks the dense decoder reads ([] = last; upernet: 4 spread)
    pixel_path: bool = True            # dense heads: fuse the input bands at full resolution (finetune.heads.PixelPath)
    pixel_init: bool = True            # with pixel_path: start from the per-pixel linear model of the bands
    #                                    (DenseModel.warm_start: logistic / ridge fit on training pixels)
    freeze_encoder: bool = False       # train the head only (PANGAEA's frozen-encoder protocol)
    augment: bool = True               # random flips / 90-degree rotations of training chips (and their label maps)

    def __post_init__(self):
        _positive(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")


@dataclass
class OutputSpec:
    path: str = "runs/finetune"        # metrics.json, confusion_<protocol>.png, config.yaml


@dataclass
class FinetuneConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    protocols: list[Literal["linear_probe", "knn", "finetune"]] = field(default_factory=lambda: list(PROTOCOLS))
    random_baseline: bool = True       # also run every protocol (fine-tuning too) on a randomly initialised twin
    input_stats_baseline: bool = True  # and a linear model on the inputs: per-band mean + std of each image
    #                                    (image-level tasks), the normalised bands of each pixel (dense tasks)
    linear_probe: LinearProbeSpec = field(default_factory=LinearProbeSpec)
    knn: KnnSpec = field(default_factory=KnnSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    device: str = "cpu"                # torch device; results are deterministic on CPU
    seed: int = 0                      # model init (heads, random baseline) and batch order

    def __post_init__(self):
        if not self.protocols:
            raise ValueError(f"protocols is empty: name at least one of {', '.join(PROTOCOLS)}")


def _positive(**values) -> None:
    for name, v in values.items():
        if v <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")

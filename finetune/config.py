"""The fine-tuning recipe (configs/finetune/*.yaml).

Defaults are small on purpose: ~600 chips of 32x32 or 64x64 with a tiny ViT finish in about a
minute on a laptop CPU. Raise the epochs for a real evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PROTOCOLS = ("linear_probe", "finetune")


@dataclass
class ModelSpec:
    export: str = "runs/export"        # folder written by eofm-export (model.safetensors + config.json)


@dataclass
class DataSpec:
    path: str = "runs/prep"            # prepared eofm dataset (folder holding manifest.json)
    labels: str = "ndvi_cover"         # key of finetune.labels.LABELS
    test_fraction: float = 0.25        # probability that a spatial block goes to the test split
    block_m: float = 1280.0            # side of the square spatial blocks used for the split, metres
    seed: int = 0                      # seed of the block -> split hash

    def __post_init__(self):
        from finetune.labels import LABELS
        if self.labels not in LABELS:
            raise ValueError(f"labels {self.labels!r} unknown (known: {', '.join(LABELS)})")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.block_m <= 0:
            raise ValueError(f"block_m must be > 0 metres, got {self.block_m}")


@dataclass
class LinearProbeSpec:
    epochs: int = 100                  # cheap: features are computed once, only the head trains
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 256

    def __post_init__(self):
        _positive(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)


@dataclass
class FinetuneSpec:
    epochs: int = 4                    # end-to-end training is the slow part on CPU
    lr: float = 5e-4                   # head lr; block i gets lr * layer_decay ** (depth - i)
    layer_decay: float = 0.75
    weight_decay: float = 0.05         # not applied to biases, norms, tokens
    batch_size: int = 32
    head: Literal["linear", "mlp"] = "linear"   # key of finetune.heads.HEADS, on `pooled`
    augment: bool = True               # random flips / 90-degree rotations of training chips

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
    protocols: list[Literal["linear_probe", "finetune"]] = field(default_factory=lambda: list(PROTOCOLS))
    random_baseline: bool = True       # also linear-probe a randomly initialised encoder
    linear_probe: LinearProbeSpec = field(default_factory=LinearProbeSpec)
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

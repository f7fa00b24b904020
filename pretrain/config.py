"""The pretraining recipe (configs/pretrain/*.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from data_prep.recipe import build


@dataclass
class DataSpec:
    path: str = "runs/prep"           # prepared dataset (folder or fsspec URL holding manifest.json)
    batch_size: int = 32              # per rank, per micro-step
    num_workers: int = 2              # loader processes per rank (0 = in the main process)
    shuffle_buffer: int = 256         # samples held per worker for shuffling
    start_method: Literal["spawn", "forkserver", "fork"] = "spawn"   # fsspec is not fork-safe

    def __post_init__(self):
        if self.batch_size <= 0 or self.num_workers < 0 or self.shuffle_buffer < 1:
            raise ValueError("batch_size must be > 0, num_workers >= 0, shuffle_buffer >= 1")


@dataclass
class ModelSpec:
    arch: str = "vit"                 # key of pretrain.models.BACKBONES
    size: Literal["tiny", "small", "base", "large", "huge"] = "base"
    patch_size: int = 16
    depth: int = 0                    # 0 = the size's default depth
    drop_path_rate: float = 0.0


@dataclass
class MAESpec:
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True

    def __post_init__(self):
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


# objective name -> its typed settings; the `objective` section is {name: ..., **settings}
OBJECTIVE_SPECS = {"mae": MAESpec}


@dataclass
class OptimSpec:
    lr: float = 1.5e-4                # peak learning rate (absolute, not per 256 samples)
    min_lr: float = 0.0
    weight_decay: float = 0.05        # not applied to biases, norms, tokens
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    grad_clip: float = 1.0            # 0 = off


@dataclass
class EngineSpec:
    zero_stage: int = 0               # DeepSpeed ZeRO stage 0-3
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = 1
    backend: Literal["auto", "gloo", "nccl"] = "auto"   # auto: nccl with GPUs, else gloo

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0-3, got {self.zero_stage}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")


@dataclass
class TrainSpec:
    steps: int = 1000                 # optimizer steps
    out: str = "runs/pretrain"        # run folder: config.yaml, metrics.jsonl, checkpoints/, plots
    log_every: int = 10
    checkpoint_every: int = 500       # also at the end
    keep_checkpoints: int = 2
    resume: bool = True               # continue from out/checkpoints/latest when present
    seed: int = 0
    progress: bool = True


@dataclass
class PretrainConfig:
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    objective: Any = field(default_factory=lambda: {"name": "mae"})
    optim: OptimSpec = field(default_factory=OptimSpec)
    engine: EngineSpec = field(default_factory=EngineSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def __post_init__(self):
        # Resolve the objective section into its own typed settings so that a wrong key such
        # as objective.mask_ratioo fails here, before any work starts.
        obj = self.objective
        if not isinstance(obj, dict):
            from data_prep.recipe import to_dict
            obj = to_dict(obj)
        obj = dict(obj)
        name = obj.pop("name", "mae")
        if name not in OBJECTIVE_SPECS:
            raise ValueError(f"objective.name {name!r} unknown (known: {', '.join(OBJECTIVE_SPECS)})")
        spec = build(OBJECTIVE_SPECS[name], obj, prefix="objective.")
        self.objective = {"name": name, **{k: getattr(spec, k) for k in spec.__dataclass_fields__}}

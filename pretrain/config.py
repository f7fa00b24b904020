"""The pretraining recipe (configs/pretrain/*.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from data_prep.recipe import build
from pretrain.data.augment import AugmentSpec


@dataclass
class DataSpec:
    path: str = "runs/prep"           # prepared dataset (folder or fsspec URL holding manifest.json)
    batch_size: int = 32              # per rank, per micro-step
    num_workers: int = 2              # loader processes per rank (0 = in the main process)
    shuffle_buffer: int = 256         # samples held per worker for shuffling
    start_method: Literal["spawn", "forkserver", "fork"] = "spawn"   # fsspec is not fork-safe
    augment: AugmentSpec = field(default_factory=AugmentSpec)         # applied per sample in the workers

    def __post_init__(self):
        if self.batch_size <= 0 or self.num_workers < 0 or self.shuffle_buffer < 1:
            raise ValueError("batch_size must be > 0, num_workers >= 0, shuffle_buffer >= 1")


@dataclass
class ModelSpec:
    arch: str = "vit"                 # key of pretrain.models.BACKBONES
    size: Literal["tiny", "small", "base", "large", "huge"] = "base"   # ViT width/depth/heads (timm sizes)
    patch_size: int = 16              # pixels per patch side; chip sizes must be multiples
    depth: int = 0                    # 0 = the size's default depth
    drop_path_rate: float = 0.0       # stochastic depth, linearly increasing over blocks
    time_loc: bool = False            # add date + location codes to tokens (Prithvi-EO-2.0 TL style)
    meta_drop_rate: float = 0.0       # per-sample chance of dropping those codes while training
    init_from: str = ""               # continual pretraining: an eofm export folder or a timm ViT state dict (.pth/.pt/.safetensors); see pretrain/continual.py


@dataclass
class MAESpec:
    mask_ratio: float = 0.75          # share of patches hidden from the encoder
    decoder_dim: int = 512            # width of the light decoder
    decoder_depth: int = 8            # decoder transformer blocks
    decoder_heads: int = 16
    norm_pix_loss: bool = True        # targets standardised per patch over its valid pixels
    frames: Literal["independent", "joint"] = "independent"   # series: frames as separate samples, or one T*L sequence

    def __post_init__(self):
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


@dataclass
class SelectiveMAESpec:
    mask_ratio: float = 0.85          # share of patches hidden from the encoder (0.85: 29 of 196 encoded)
    recon_ratio: float = 0.25         # share of ALL patches reconstructed, drawn from the hidden ones (49 of 196, the paper's count)
    decoder_dim: int = 512            # cross-attention decoder width
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True        # targets standardised per patch over its valid pixels
    score: Literal["gradient", "uniform"] = "gradient"   # patch information score; uniform = the released code's behaviour
    score_temperature: float = 1.0    # softmax temperature on the per-sample standardised scores
    expansion: Literal["curriculum", "similar", "dissimilar", "random"] = "curriculum"   # how the seeds grow to the encoded set
    curriculum: list[float] = field(default_factory=lambda: [0.35, 0.375, 0.725, 0.75])   # fractions of train.steps: similar | ->dissimilar | dissimilar | ->random | random
    prune_ratio: float = 0.0          # InfoBatch-style loss-based sample pruning (0 = off)
    prune_stop: float = 0.875         # fraction of training after which nothing is pruned
    frames: Literal["independent", "joint"] = "independent"   # series: frames as separate samples, or one T*L sequence

    def __post_init__(self):
        if not 0.0 < self.recon_ratio <= self.mask_ratio < 1.0:
            raise ValueError(f"need 0 < recon_ratio <= mask_ratio < 1, got {self.recon_ratio}, {self.mask_ratio}")
        c = self.curriculum
        if len(c) != 4 or list(c) != sorted(c) or c[0] < 0 or c[-1] > 1:
            raise ValueError(f"curriculum must be 4 increasing fractions in [0, 1], got {c}")
        if not 0.0 <= self.prune_ratio < 1.0 or not 0.0 <= self.prune_stop <= 1.0 or self.score_temperature <= 0:
            raise ValueError("prune_ratio in [0, 1), prune_stop in [0, 1] and score_temperature > 0 required")


# objective name -> its typed settings; the `objective` section is {name: ..., **settings}
@dataclass
class ViewContrastSpec:
    """Settings of every two-view contrastive objective (views are made inside the objective)."""
    temperature: float = 0.2          # softmax temperature of the InfoNCE terms
    proj_hidden_dim: int = 512        # projection MLP hidden width
    proj_dim: int = 128               # embedding (projection output) width
    pool: Literal["mean", "cls"] = "mean"   # backbone output fed to the projector
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])   # random resized crop, area fraction range
    flips: bool = True                # random flips and 90-degree rotations
    brightness: float = 0.4           # jitter: additive shift in normalised units, U(-b, b)
    contrast: float = 0.4             # jitter: contrast factor U(1-c, 1+c) around the scene mean
    band_jitter: float = 0.1          # jitter: per-band gain U(1-j, 1+j)
    jitter_p: float = 0.8             # probability of the intensity jitter per view
    blur_p: float = 0.5               # probability of a Gaussian blur (sigma 0.1-2 px) per view

    def __post_init__(self):
        if self.temperature <= 0 or self.proj_hidden_dim < 1 or self.proj_dim < 1:
            raise ValueError("temperature must be > 0, proj_hidden_dim and proj_dim >= 1")
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must be [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")


@dataclass
class InstanceContrastiveSpec(ViewContrastSpec):
    """Instance contrast (SimCLR-style): two views of each chip, one encoder, no labels, no teacher."""


@dataclass
class ContrastiveSpec(ViewContrastSpec):
    """Settings shared by the contrastive objectives with an EMA teacher."""
    ema_momentum: float = 0.996       # teacher momentum at step 0
    ema_momentum_end: float = 1.0     # cosine schedule to this at train.steps (= ema_momentum: constant)

    def __post_init__(self):
        super().__post_init__()
        if not (0.0 <= self.ema_momentum <= 1.0 and 0.0 <= self.ema_momentum_end <= 1.0):
            raise ValueError(f"ema_momentum and ema_momentum_end must be in [0, 1], got "
                             f"{self.ema_momentum}, {self.ema_momentum_end}")


@dataclass
class SoftContrastiveSpec(ContrastiveSpec):
    """Soft multi-label contrastive (SoftCon-style); needs land-cover fractions in the shards."""
    mask_ratio: float = 0.5           # share of patches hidden from the student (Siamese masking)
    hard_weight: float = 1.0          # weight of the InfoNCE term
    soft_weight: float = 1.0          # weight of the land-cover soft term
    soft_loss: Literal["ce", "bce", "mse"] = "ce"   # soft term: CE to row-normalised targets | BCE | MSE of cosines
    label_similarity: Literal["cosine", "jaccard"] = "cosine"   # target similarity of two scenes' labels
    label_form: Literal["fractions", "multihot"] = "fractions"   # class fractions, or presence above presence_threshold
    presence_threshold: float = 0.05  # multihot: a class is present above this fraction
    symmetric: bool = True            # also contrast columns (teacher key against all student queries)

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")


@dataclass
class SeasonContrastiveSpec(ContrastiveSpec):
    """Season contrast (SeCo / SSL4Eco); needs multi-date shards (prep `series`)."""
    mode: Literal["subspaces", "season_invariant"] = "subspaces"   # SeCo's 3 embedding subspaces, or one season-invariant space
    negatives: Literal["queue", "batch"] = "queue"   # MoCo queue per head, or the gathered global batch
    queue_size: int = 16384           # keys per head in the queue
    head_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])   # loss weight per subspace (first 1 used in season_invariant)
    ema_momentum: float = 0.999       # MoCo momentum encoder
    ema_momentum_end: float = 0.999   # equal: constant momentum (MoCo)

    def __post_init__(self):
        super().__post_init__()
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if len(self.head_weights) < (3 if self.mode == "subspaces" else 1):
            raise ValueError(f"head_weights needs one weight per subspace, got {self.head_weights}")


OBJECTIVE_SPECS = {"mae": MAESpec, "selective_mae": SelectiveMAESpec, "soft_contrastive": SoftContrastiveSpec,
                   "instance_contrastive": InstanceContrastiveSpec,
                   "season_contrastive": SeasonContrastiveSpec}


@dataclass
class ParamGroupSpec:
    match: str = ""                   # regular expression searched in parameter names, e.g. "decoder\\."
    lr_scale: float = 1.0             # multiplies the scheduled lr of the matching parameters
    weight_decay: float | None = None  # overrides optim.weight_decay for them (None = keep)

    def __post_init__(self):
        import re
        try:
            re.compile(self.match)
        except re.error as err:
            raise ValueError(f"match {self.match!r} is not a regular expression: {err}") from None
        if not self.match or self.lr_scale < 0 or (self.weight_decay is not None and self.weight_decay < 0):
            raise ValueError("match must be non-empty, lr_scale >= 0 and weight_decay >= 0")


@dataclass
class OptimSpec:
    lr: float = 1.5e-4                # peak learning rate (absolute, not per 256 samples)
    min_lr: float = 0.0               # cosine schedule floor
    weight_decay: float = 0.05        # not applied to biases, norms, tokens
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])   # AdamW betas
    warmup_steps: int = 100           # linear warm-up, then cosine decay to min_lr at schedule_steps
    schedule_steps: int = 0           # length of the warm-up + cosine schedule; 0 = train.steps
    grad_clip: float = 1.0            # 0 = off
    layer_decay: float = 1.0          # layer-wise lr decay: backbone block i gets lr * layer_decay ** (depth - i)
    groups: list[ParamGroupSpec] = field(default_factory=list)   # per-parameter-group lr scale / weight decay; first match wins

    def __post_init__(self):
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.warmup_steps < 0 or self.schedule_steps < 0:
            raise ValueError("warmup_steps and schedule_steps must be >= 0")


@dataclass
class EngineSpec:
    zero_stage: int = 0               # DeepSpeed ZeRO stage 0-3
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"   # bf16 on recent GPUs; fp16 uses loss scaling (GPU only)
    grad_accum: int = 1               # micro-batches per optimizer step
    backend: Literal["auto", "gloo", "nccl"] = "auto"   # auto: nccl with GPUs, else gloo
    timeout_min: float = 30.0         # collective timeout: a dead or stuck rank fails the job after this long
    offload_optimizer: bool = False   # ZeRO 1-3: optimizer state and update on the CPU (frees accelerator memory)
    offload_params: bool = False      # ZeRO-3: parameters live on the CPU between uses
    activation_checkpointing: bool = False   # recompute block activations in backward (backbone.set_grad_checkpointing)
    loss_scale: float = 0.0           # fp16: 0 = dynamic loss scaling, > 0 = this fixed scale
    initial_scale_power: int = 16     # fp16 dynamic scaling starts at 2**this
    loss_scale_window: int = 1000     # fp16: steps without overflow before the scale doubles
    min_loss_scale: float = 1.0       # fp16: the scale never drops below this
    elastic_resume: bool = True       # resume on another world size / ZeRO stage via a DeepSpeed universal checkpoint

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0-3, got {self.zero_stage}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.timeout_min <= 0:
            raise ValueError(f"timeout_min must be > 0, got {self.timeout_min}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.loss_scale < 0 or self.min_loss_scale <= 0 or self.loss_scale_window < 1:
            raise ValueError("loss_scale must be >= 0, min_loss_scale > 0, loss_scale_window >= 1")


@dataclass
class TrainSpec:
    steps: int = 1000                 # optimizer steps
    out: str = "runs/pretrain"        # run folder: config.yaml, metrics.jsonl, checkpoints/, plots
    log_every: int = 10               # steps between metrics.jsonl records
    checkpoint_every: int = 500       # also at the end, and on SIGTERM / SIGUSR1
    checkpoint_every_min: float = 0.0  # also every this many minutes of wall time (rank 0's clock); 0 = off
    keep_checkpoints: int = 2         # most recent checkpoints kept on disk (0 = all)
    resume: bool = True               # continue from out/checkpoints/latest when present
    seed: int = 0                     # model init, masking and data order (each rank offsets it)
    progress: bool = True             # progress bar on rank 0
    tensorboard: bool = True          # also write TensorBoard events to out/tensorboard (when tensorboard is installed)
    log_batch_keys: bool = False      # rank 0 appends each step's sample keys to batch_keys.jsonl (audits)

    def __post_init__(self):
        if self.steps < 0 or self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 0:
            raise ValueError("steps >= 0, log_every >= 1, checkpoint_every >= 1 and keep_checkpoints >= 0 required")


@dataclass
class CurationSpec:
    """Dynamic dataset curation (pretrain/curation): the model's own features pick the training set."""
    mode: Literal["none", "kmeans", "loss"] = "none"   # kmeans: hierarchical k-means + balanced keep-list; loss: InfoBatch-style
    warmup_steps: int = 1000          # first round after this many optimizer steps
    every_steps: int = 1000           # then a round every this many steps
    keep_fraction: float = 0.5        # kmeans: share of the embedded samples kept
    levels: list[int] = field(default_factory=lambda: [100, 10])   # k-means clusters per level, finest first
    eta: float = 0.0                  # 0: spread picks uniformly within leaf clusters; 1: nearest the centroid
    embed_subset: int = 0             # samples embedded per round (seeded random subset); 0 = all
    embed_batch_size: int = 64        # per rank, when embedding
    embed_workers: int = 0            # DataLoader workers when embedding
    embed_token_stride: int = 2       # encode every n-th patch row and column when embedding (2: 1/4 of the cost); 1 = all
    kmeans_iters: int = 20            # Lloyd iterations per level
    resample_steps: int = 10          # centroid re-estimation rounds from their nearest points, per level
    loss_ratio: float = 0.5           # loss: share of below-mean-loss samples skipped (kept ones weigh 1/(1-ratio))
    loss_stop: float = 0.875          # loss: no pruning after this fraction of training (annealing)

    def __post_init__(self):
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if self.warmup_steps < 0 or self.every_steps < 1:
            raise ValueError("warmup_steps must be >= 0 and every_steps >= 1")
        if not self.levels or any(int(k) < 1 for k in self.levels):
            raise ValueError(f"levels must be a non-empty list of positive cluster counts, got {self.levels}")
        if not 0.0 <= self.loss_ratio < 1.0:
            raise ValueError(f"loss_ratio must be in [0, 1), got {self.loss_ratio}")
        if self.embed_token_stride < 1 or self.embed_batch_size < 1 or self.embed_subset < 0:
            raise ValueError("embed_token_stride and embed_batch_size must be >= 1, embed_subset >= 0")


@dataclass
class PretrainConfig:
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    objective: Any = field(default_factory=lambda: {"name": "mae"})
    optim: OptimSpec = field(default_factory=OptimSpec)
    engine: EngineSpec = field(default_factory=EngineSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    curation: CurationSpec = field(default_factory=CurationSpec)

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

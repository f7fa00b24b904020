"""Process group and DeepSpeed engine setup. The only place that knows about distribution.

Works under torchrun / deepspeed / srun (they set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*) and
as a plain single process (we fill in a one-process environment). Backend: NCCL with GPUs,
gloo on CPU. DeepSpeed's own Adam would JIT-compile a C++ op, so the optimizer is torch's
AdamW (`torch_adam`), which DeepSpeed still shards under ZeRO.
"""
from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

from pretrain.config import EngineSpec, OptimSpec

COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # a dead rank fails the job instead of hanging forever


@dataclass
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed(backend: str = "auto") -> DistInfo:
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")   # say it, instead of DeepSpeed warning about it
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)   # keep INFO chatter out of users' logs; our metrics say what matters
    deepspeed.init_distributed(dist_backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, device)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norm weights, tokens and other 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("token") or "pos_embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_multiplier(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to min_ratio at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def deepspeed_config(engine: EngineSpec, optim: OptimSpec, micro_batch: int) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": engine.grad_accum,
        "zero_optimization": {"stage": engine.zero_stage},
        "optimizer": {"type": "AdamW", "params": {"lr": optim.lr, "betas": list(optim.betas), "eps": 1e-8,
                                                  "weight_decay": optim.weight_decay, "torch_adam": True}},
        "bf16": {"enabled": engine.precision == "bf16"},
        "fp16": {"enabled": engine.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
    }
    if optim.grad_clip > 0:
        cfg["gradient_clipping"] = optim.grad_clip
    return cfg


def build_engine(model: torch.nn.Module, engine: EngineSpec, optim: OptimSpec, micro_batch: int, total_steps: int):
    """-> (DeepSpeed engine, its lr scheduler). The scheduler steps once per optimizer step."""
    import deepspeed

    min_ratio = optim.min_lr / optim.lr if optim.lr > 0 else 0.0

    def scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_multiplier(s, total_steps, optim.warmup_steps, min_ratio))

    ds_engine, _, _, sched = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, optim.weight_decay),
        config=deepspeed_config(engine, optim, micro_batch), lr_scheduler=scheduler)
    return ds_engine, sched


def to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Move tensors to `device` and normalise batches shipped as stored integers there; the image
    takes the engine's compute dtype (bf16/fp16 under DeepSpeed). Metadata (wavelengths, gsd,
    times, lonlat) stays float32/64: bf16 would round 664.6 nm to 664 nm and a GSD of 10 m to the
    nearest 1/16."""
    from pretrain.data.webdataset import normalize_batch

    out = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    out = normalize_batch(out)
    if "image" in out:
        out["image"] = out["image"].to(dtype)
    return out

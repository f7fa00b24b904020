"""Process group and DeepSpeed engine setup. The only place that knows about distribution.

Works under torchrun / deepspeed / srun (they set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*; under
a bare `srun` the SLURM_* variables are mapped) and as a plain single process (we fill in a
one-process environment). Backend: NCCL with GPUs, gloo on CPU. DeepSpeed's own Adam would
JIT-compile a C++ op, so the optimizer is torch's AdamW (`torch_adam`), which DeepSpeed still
shards under ZeRO (and runs on the CPU with optimizer offload).
"""
from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pretrain.config import EngineSpec, OptimSpec

# Exit status of a run stopped by SIGTERM/SIGUSR1 after writing its checkpoint: EX_TEMPFAIL from
# sysexits.h ("try again later"); launch/slurm.sbatch requeues the job on it.
EXIT_PREEMPTED = 75


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


def _env_from_slurm() -> None:
    """One task per rank under a bare `srun` (no torchrun): SLURM_PROCID/NTASKS/LOCALID are the
    rank, world size and local rank. MASTER_ADDR/PORT must come from the batch script."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ or "MASTER_ADDR" not in os.environ:
        return
    os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                      LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    os.environ.setdefault("MASTER_PORT", "29500")


def setup_distributed(backend: str = "auto", timeout_min: float = 30.0) -> DistInfo:
    _env_from_slurm()
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
    # The timeout bounds every collective: a rank that died or hangs makes the others fail after
    # it instead of waiting forever (NCCL aborts via its async error handling, on by default).
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(minutes=timeout_min))
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, device)


def teardown_distributed() -> None:
    """Destroy the process group while the interpreter is whole. Left to interpreter exit, gloo's
    threads can still hold tensors whose release needs the GIL during finalisation: the process
    then aborts ("terminate called without an active exception") or hangs after its work is done.
    Call only where every rank gets to (the end of training, or a stop all ranks agreed on)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _layer_id(name: str, prefix: str, depth: int) -> int:
    """0 = patch embedding and tokens, i+1 = block i, depth+1 = everything after (norm, heads)."""
    if not name.startswith(prefix):
        return depth + 1
    rest = name[len(prefix):]
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) + 1
    # input side: patch embedding, tokens, and the scales of the date/location codes added to the patch tokens
    if rest.startswith(("patch_embed.", "cls_token", "pos_embed", "time_scale", "loc_scale")) \
            or "token" in rest.split(".")[0]:
        return 0
    return depth + 1


def param_groups(model: torch.nn.Module, optim: OptimSpec, backbone_prefix: str = "backbone.") -> list[dict]:
    """AdamW parameter groups, each with its `lr` (= optim.lr x scale) and `weight_decay`:
    - no weight decay on biases, norm weights, tokens and other 1-D parameters;
    - layer-wise lr decay: a backbone block i gets scale layer_decay ** (depth - i), the patch
      embedding layer_decay ** (depth + 1), everything after the blocks 1;
    - `optim.groups`: the first entry whose regex matches a name multiplies its scale and may
      replace its weight decay.
    Parameters with equal (scale, decay) share one group; the LambdaLR schedule multiplies each
    group's lr, so the ratios hold throughout."""
    depth = max((int(m.group(1)) + 1 for n, _ in model.named_parameters()
                 if (m := re.match(re.escape(backbone_prefix) + r"blocks\.(\d+)\.", n))), default=0)
    patterns = [(re.compile(g.match), g) for g in optim.groups]
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith("token") or "pos_embed" in name
        wd = 0.0 if no_decay else optim.weight_decay
        scale = optim.layer_decay ** (depth + 1 - _layer_id(name, backbone_prefix, depth))
        for rx, g in patterns:
            if rx.search(name):
                scale *= g.lr_scale
                wd = wd if g.weight_decay is None else g.weight_decay
                break
        grp = groups.setdefault((scale, wd), {"params": [], "lr": optim.lr * scale, "weight_decay": wd})
        grp["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], -k[1]))]   # full-lr, decayed group first


def lr_multiplier(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine down to min_ratio at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def deepspeed_config(engine: EngineSpec, optim: OptimSpec, micro_batch: int, load_universal: bool = False) -> dict:
    zero: dict = {"stage": engine.zero_stage}
    if engine.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if engine.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": engine.grad_accum,
        "zero_optimization": zero,
        # torch_adam: torch's AdamW (no compiled op), also under optimizer offload
        "optimizer": {"type": "AdamW", "params": {"lr": optim.lr, "betas": list(optim.betas), "eps": 1e-8,
                                                  "weight_decay": optim.weight_decay, "torch_adam": True}},
        "bf16": {"enabled": engine.precision == "bf16"},
        "fp16": {"enabled": engine.precision == "fp16", "loss_scale": engine.loss_scale,
                 "initial_scale_power": engine.initial_scale_power,
                 "loss_scale_window": engine.loss_scale_window, "min_loss_scale": engine.min_loss_scale},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
        "checkpoint": {"load_universal": load_universal},
    }
    if optim.grad_clip > 0:
        cfg["gradient_clipping"] = optim.grad_clip
    return cfg


def build_engine(model: torch.nn.Module, engine: EngineSpec, optim: OptimSpec, micro_batch: int, total_steps: int,
                 load_universal: bool = False):
    """-> (DeepSpeed engine, its lr scheduler). The scheduler steps once per optimizer step."""
    import deepspeed

    min_ratio = optim.min_lr / optim.lr if optim.lr > 0 else 0.0
    total = optim.schedule_steps or total_steps

    def scheduler(opt):
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_multiplier(s, total, optim.warmup_steps, min_ratio))

    if engine.activation_checkpointing:
        backbone = getattr(model, "backbone", model)
        switch = getattr(backbone, "set_grad_checkpointing", None)
        if switch is None:
            raise ValueError(f"engine.activation_checkpointing: {type(backbone).__name__} has no set_grad_checkpointing")
        switch(True)
    ds_engine, _, _, sched = deepspeed.initialize(
        model=model, model_parameters=param_groups(model, optim),
        config=deepspeed_config(engine, optim, micro_batch, load_universal), lr_scheduler=scheduler)
    return ds_engine, sched


class StopSignals:
    """SIGTERM and SIGUSR1 (what SLURM sends before a time limit, or a preemption) only set a
    flag here; the loop checkpoints at the next step boundary on every rank (see `agree`) and
    exits with EXIT_PREEMPTED. Doing the work inside the handler could interrupt a collective
    half-way on one rank."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def ignore(self) -> None:
        """Ignore the signals until `install`: processes started in between (loader workers)
        inherit SIG_IGN, so a signal sent to the whole process group does not kill them."""
        for s in self.SIGNALS:
            self._old.setdefault(s, signal.getsignal(s))
            signal.signal(s, signal.SIG_IGN)

    def install(self) -> None:
        for s in self.SIGNALS:
            self._old.setdefault(s, signal.getsignal(s))
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: torch's workers die on SIGTERM (their own handler re-raises it),
    and SLURM or `kill -- -PGID` signal every process; the main process decides when to stop."""
    for s in StopSignals.SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def agree(loss: torch.Tensor, stop: bool, save: bool) -> tuple[int, bool, bool]:
    """One small all-reduce per micro-step (before backward) so that every rank takes the same
    decision and none is left waiting in a collective the others skipped:
    -> (ranks whose loss is non-finite, any rank asked to stop, rank 0 says save now)."""
    flags = torch.tensor([0.0, float(stop), float(save)], device=loss.device)
    flags[0] = (~torch.isfinite(loss.detach().float())).float()
    dist.all_reduce(flags)
    n_bad, n_stop, n_save = flags.tolist()
    return int(n_bad), n_stop > 0, n_save > 0


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

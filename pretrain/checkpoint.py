"""DeepSpeed checkpoints with our training state: atomic, the last K kept, resumable exactly on
the same world size and elastically (another world size or ZeRO stage) via universal checkpoints.

A checkpoint is `<dir>/<tag>/` (tag `step%08d`) holding DeepSpeed's model/optimizer/scheduler
files (every rank writes its shard; `save_checkpoint` is collective), `rng_rank<r>.pt` per rank,
`extras.pt` (state contributed by components, e.g. pruning masks) and `eofm.json` (step, samples,
world size, ZeRO stage, data position), written last by rank 0. Only then is `<dir>/latest`
replaced (temp file + rename), so a save killed half-way leaves the previous checkpoint in
charge and a tag without `eofm.json` is never resumed from.

Resuming on another world size (or ZeRO stage) converts the tag once with DeepSpeed's
`ds_to_universal` into `<dir>/universal/<tag>/` and loads it with `checkpoint.load_universal`;
the universal copy is deleted by the next save.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("eofm.pretrain")

TAG_PREFIX = "step"
META = "eofm.json"
EXTRAS = "extras.pt"
UNIVERSAL = "universal"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from (incomplete, converted wrongly, or incompatible)."""


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def latest_tag(ckpt_dir: str | Path) -> str | None:
    p = Path(ckpt_dir) / "latest"
    return p.read_text().strip() if p.is_file() else None


def read_meta(ckpt_dir: str | Path, tag: str) -> dict:
    path = Path(ckpt_dir) / tag / META
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: incomplete checkpoint (no {META}); delete it or point latest elsewhere")
    return json.loads(path.read_text())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def save(engine, ckpt_dir: str | Path, meta: dict, client_state: dict, keep: int, rank: int,
         extras: dict | None = None) -> str:
    """Collective. `meta` must hold `step`; `extras` maps names to objects with state_dict() /
    load_state_dict() whose state is the same on every rank (rank 0 writes it)."""
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(meta["step"])
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    tmp = ckpt_dir / tag / f"rng_rank{rank}.pt.tmp"
    torch.save(rng, tmp)
    tmp.replace(tmp.with_suffix(""))
    dist.barrier()                               # every rank's files are on disk
    if rank == 0:
        if extras:
            tmp = ckpt_dir / tag / (EXTRAS + ".tmp")
            torch.save({k: v.state_dict() for k, v in extras.items()}, tmp)
            tmp.replace(ckpt_dir / tag / EXTRAS)
        _atomic_write(ckpt_dir / tag / META, json.dumps({**meta, "tag": tag}, indent=1))
        _atomic_write(ckpt_dir / "latest", tag)
        _prune(ckpt_dir, tag, keep)
    dist.barrier()
    return tag


def _prune(ckpt_dir: Path, current: str, keep: int) -> None:
    """Keep the `keep` newest complete tags (0 = all); remove older ones, unfinished leftovers of
    crashed saves, and universal copies (the new checkpoint supersedes them)."""
    tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX))
    complete = [t for t in tags if (ckpt_dir / t / META).is_file()]
    kept = set(complete[-keep:] if keep > 0 else complete) | {current}
    for t in tags:
        if t not in kept:
            shutil.rmtree(ckpt_dir / t, ignore_errors=True)
    shutil.rmtree(ckpt_dir / UNIVERSAL, ignore_errors=True)


@dataclass
class ResumePlan:
    tag: str
    meta: dict
    universal: bool      # load through a universal checkpoint (world size or ZeRO stage changed)


def plan_resume(ckpt_dir: str | Path, world: int, zero_stage: int, elastic: bool) -> ResumePlan | None:
    """Decide, before the engine is built, how to resume (the engine config depends on it)."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    meta = read_meta(ckpt_dir, tag)
    same = meta["world"] == world and meta["zero_stage"] == zero_stage
    sharded = any((Path(ckpt_dir) / tag).glob("*optim_states.pt"))
    if same or not sharded:          # ZeRO-0 state is whole in mp_rank_00: it loads on any world size
        return ResumePlan(tag, meta, universal=False)
    if not elastic:
        raise CheckpointError(f"{ckpt_dir}/{tag}: saved with world size {meta['world']} and ZeRO-{meta['zero_stage']}, "
                              f"now {world} and ZeRO-{zero_stage}; set engine.elastic_resume=true to convert it")
    return ResumePlan(tag, meta, universal=True)


def to_universal(ckpt_dir: str | Path, tag: str, workers: int = 2) -> Path:
    """DeepSpeed's ds_to_universal on one tag -> <dir>/universal/<tag> (reused if present).
    Run on one rank; a subprocess so its worker pools and prints stay out of the training process."""
    src = Path(ckpt_dir) / tag
    dst = Path(ckpt_dir) / UNIVERSAL / tag
    if dst.is_dir():
        return dst
    tmp = dst.with_name(tag + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(src),
           "--output_folder", str(tmp), "--inject_missing_state",   # needed for non-Megatron models
           "--num_extract_workers", str(workers), "--num_merge_workers", str(max(1, workers // 2))]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise CheckpointError(f"{src}: conversion to a universal checkpoint failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
    tmp.replace(dst)
    return dst


def load(engine, ckpt_dir: str | Path, plan: ResumePlan, rank: int, restore_rng: bool,
         extras: dict | None = None) -> dict:
    """Restore engine state, the extras' state and (`restore_rng`: same world size) this rank's
    RNG -> the saved meta. With `plan.universal` the engine must be built with load_universal=True."""
    ckpt_dir = Path(ckpt_dir)
    if plan.universal:
        if rank == 0:
            log.info("world size / ZeRO stage changed since %s: converting it to a universal checkpoint", plan.tag)
            to_universal(ckpt_dir, plan.tag)
        dist.barrier()
        path, _ = engine.load_checkpoint(str(ckpt_dir / UNIVERSAL), tag=plan.tag)
    else:
        path, _ = engine.load_checkpoint(str(ckpt_dir), tag=plan.tag)
    if path is None:
        raise CheckpointError(f"{ckpt_dir}/{plan.tag}: DeepSpeed could not load this checkpoint")
    rng_file = ckpt_dir / plan.tag / f"rng_rank{rank}.pt"
    if restore_rng and rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)  # our own file: python RNG state is a tuple
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    extras_file = ckpt_dir / plan.tag / EXTRAS
    if extras and extras_file.is_file():
        saved = torch.load(extras_file, weights_only=False)
        for name, obj in extras.items():
            if name in saved:
                obj.load_state_dict(saved[name])
            else:
                log.warning("%s: no state for %r (added since); it starts fresh", extras_file, name)
    return plan.meta

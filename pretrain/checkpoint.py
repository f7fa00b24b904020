"""DeepSpeed checkpoints with our training state, pruned to the last K.

`save_checkpoint` is collective: every rank writes its shard of model/optimizer state under
`<dir>/<tag>/`, then DeepSpeed writes `<dir>/latest`. Resuming reads `latest`, so a save that
dies half-way leaves the previous checkpoint in charge. Each rank also keeps its RNG state
(`rng_rank<r>.pt`) so masking continues from where it was.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

TAG_PREFIX = "step"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def latest_tag(ckpt_dir: str | Path) -> str | None:
    p = Path(ckpt_dir) / "latest"
    return p.read_text().strip() if p.is_file() else None


def save(engine, ckpt_dir: str | Path, step: int, client_state: dict, keep: int, rank: int) -> str:
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    tmp = ckpt_dir / tag / f"rng_rank{rank}.pt.tmp"
    torch.save(rng, tmp)
    tmp.replace(tmp.with_suffix(""))
    dist.barrier()
    if rank == 0:
        tags = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX))
        for old in tags[:-keep] if keep > 0 else []:
            if old != tag:
                shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    dist.barrier()
    return tag


def load(engine, ckpt_dir: str | Path, rank: int) -> dict | None:
    """Restore engine state and this rank's RNG; returns the client state, or None if no checkpoint."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"{ckpt_dir}/{tag}: DeepSpeed could not load this checkpoint")
    rng_file = Path(ckpt_dir) / tag / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)  # our own file: python RNG state is a tuple
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return client

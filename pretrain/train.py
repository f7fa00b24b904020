"""The training loop: one loop for every objective, on one CPU process or many GPUs.

The loop never branches on the objective: objectives are nn.Modules whose forward(batch)
returns {"loss": ..., other scalars to log}.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from data_prep import manifest as manifest_mod
from data_prep.recipe import save_recipe, to_dict
from pretrain import checkpoint
from pretrain.config import PretrainConfig
from pretrain.data.normalize import normalization_table
from pretrain.data.webdataset import make_loader
from pretrain.engine import build_engine, setup_distributed, to_device
from pretrain.models import build_backbone
from pretrain.objectives import build_objective

log = logging.getLogger("eofm.pretrain")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


def build_model(cfg: PretrainConfig):
    overrides = {"patch_size": cfg.model.patch_size, "drop_path_rate": cfg.model.drop_path_rate,
                 "time_loc": cfg.model.time_loc, "meta_drop_rate": cfg.model.meta_drop_rate}
    if cfg.model.depth:
        overrides["depth"] = cfg.model.depth
    backbone = build_backbone(cfg.model.arch, cfg.model.size, **overrides)
    if cfg.model.init_from:             # continual pretraining; before the objective copies any teacher
        from pretrain.continual import init_backbone
        report = init_backbone(backbone, cfg.model.init_from)
        if not dist.is_initialized() or dist.get_rank() == 0:
            log.info(report.summary())
    settings = {k: v for k, v in cfg.objective.items() if k != "name"}
    return build_objective(cfg.objective["name"], backbone, **settings)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _dataset_digest(url: str) -> str:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    return hashlib.sha256(fs.cat_file(f"{root}/{manifest_mod.NAME}")).hexdigest()


def train(cfg: PretrainConfig) -> dict:
    """Run (or resume) pretraining; returns the final metrics record."""
    info = setup_distributed(cfg.engine.backend)
    rank, world = info.rank, info.world
    out = Path(cfg.train.out)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(cfg, out)
    manifest = manifest_mod.read(cfg.data.path)
    _seed_everything(cfg.train.seed + rank)

    model = build_model(cfg)
    engine, _ = build_engine(model, cfg.engine, cfg.optim, cfg.data.batch_size, cfg.train.steps)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.engine.precision, torch.float32)

    step, samples_seen, generation, skip = 0, 0, 0, 0
    data_state = {"path": cfg.data.path, "batch_size": cfg.data.batch_size, "num_workers": cfg.data.num_workers,
                  "shuffle_buffer": cfg.data.shuffle_buffer, "world": world, "seed": cfg.train.seed,
                  "grad_accum": cfg.engine.grad_accum}
    client = checkpoint.load(engine, ckpt_dir, rank) if cfg.train.resume else None
    if client is not None:
        step, samples_seen = client["step"], client["samples_seen"]
        generation = client.get("data_generation", 0)
        if client.get("data") == data_state:
            skip = step * cfg.engine.grad_accum     # exact resume: the batches the run would have seen
        else:
            # the stream cannot be replayed (other world size, workers, batch...): a fresh
            # seeded stream, so the restarted run does not repeat the batches it already saw
            generation += 1
            if rank == 0:
                log.warning("data settings changed since the checkpoint (%s -> %s): the data stream is not "
                            "resumed exactly, a new seeded stream starts", client.get("data"), data_state)
        if rank == 0:
            log.info("resumed from %s at step %d (%s)", checkpoint.latest_tag(ckpt_dir), step,
                     "exact data position" if skip else "new data stream")

    loader = make_loader(cfg.data.path, cfg.data.batch_size, rank, world,
                         seed=cfg.train.seed + 1_000_003 * generation, num_workers=cfg.data.num_workers,
                         shuffle_buffer=cfg.data.shuffle_buffer, start_method=cfg.data.start_method,
                         skip_batches=skip, augment_spec=cfg.data.augment)
    state = {
        "config": to_dict(cfg),
        "arch_args": engine.module.backbone.arch_args,
        "normalization": normalization_table(manifest),
        "manifest_sha256": _dataset_digest(cfg.data.path),
        "data_generation": generation,
        "data": data_state,
    }
    metrics_file = out / "metrics.jsonl"
    keys_file = out / "batch_keys.jsonl" if cfg.train.log_batch_keys and rank == 0 else None
    bar = tqdm(total=cfg.train.steps, initial=step, desc="pretrain", unit="step",
               disable=rank != 0 or not cfg.train.progress)
    it = iter(loader)
    window = {"loss": 0.0, "n": 0, "wait": 0.0, "t0": time.perf_counter(), "samples": 0, "extra": {}}
    record: dict = {}
    engine.train()
    while step < cfg.train.steps:
        if hasattr(engine.module, "set_progress"):   # optional objective hook (curricula, schedules)
            engine.module.set_progress(step, cfg.train.steps)
        for _ in range(cfg.engine.grad_accum):
            t_wait = time.perf_counter()
            batch = next(it)
            window["wait"] += time.perf_counter() - t_wait
            if keys_file is not None:
                with open(keys_file, "a") as f:
                    f.write(json.dumps({"step": step + 1, "keys": batch["key"]}) + "\n")
            batch = to_device(batch, info.device, dtype)
            outputs = engine(batch)
            loss = outputs["loss"]
            if not torch.isfinite(loss.detach()).item():
                raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at step {step} on rank {rank}; "
                                    f"the last good checkpoint is {checkpoint.latest_tag(ckpt_dir)} in {ckpt_dir}")
            engine.backward(loss)
            engine.step()
            n = batch["image"].shape[0]
            window["loss"] += float(loss.detach()) * n
            window["n"] += n
            for k, v in outputs.items():
                if k != "loss":
                    window["extra"][k] = window["extra"].get(k, 0.0) + float(v) * n
        step += 1
        samples_seen += cfg.data.batch_size * cfg.engine.grad_accum * world
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            record = _log(window, step, samples_seen, engine, world, info.device)
            if rank == 0:
                with open(metrics_file, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            window = {"loss": 0.0, "n": 0, "wait": 0.0, "t0": time.perf_counter(), "samples": 0, "extra": {}}
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            checkpoint.save(engine, ckpt_dir, step, {**state, "step": step, "samples_seen": samples_seen},
                            cfg.train.keep_checkpoints, rank)
    bar.close()
    if rank == 0:
        from pretrain.plots import plot_run, plot_reconstructions
        plot_run(out)
        plot_reconstructions(engine.module, next(it), out / "reconstructions.png", info.device, dtype)
    dist.barrier()
    return record


def _log(window: dict, step: int, samples_seen: int, engine, world: int, device) -> dict:
    """Average the window's loss across ranks and describe throughput."""
    sums = torch.tensor([window["loss"], window["n"], window["wait"]], dtype=torch.float64)
    dist.all_reduce(sums)
    elapsed = time.perf_counter() - window["t0"]
    samples = sums[1].item()
    record = {
        "step": step,
        "loss": sums[0].item() / max(samples, 1),
        "lr": engine.get_lr()[0],
        "samples_seen": samples_seen,
        "samples_per_s": samples / elapsed,
        "data_wait_frac": (sums[2].item() / world) / elapsed,
        "time": time.time(),
    }
    for k, v in window["extra"].items():
        record[k] = v / max(window["n"], 1)
    if device.type == "cuda":
        record["max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return record

"""The training loop: one loop for every objective, on one CPU process or many GPUs.

The loop never branches on the objective: objectives are nn.Modules whose forward(batch)
returns {"loss": ..., other scalars to log}.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import resource
import signal
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
from pretrain.data.webdataset import close_loader, make_loader
from pretrain.engine import StopSignals, agree, build_engine, setup_distributed, to_device
from pretrain.models import build_backbone
from pretrain.objectives import build_objective

log = logging.getLogger("eofm.pretrain")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the last good checkpoint."""


class Stopped(RuntimeError):
    """SIGTERM/SIGUSR1 arrived: a checkpoint was written and the run stopped (exit EXIT_PREEMPTED)."""


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


def train(cfg: PretrainConfig, extras: dict | None = None) -> dict:
    """Run (or resume) pretraining; returns the final metrics record.

    `extras`: name -> object with state_dict()/load_state_dict() whose state is the same on every
    rank (e.g. pruning schedules); saved with each checkpoint and restored on resume, together with
    the objective's own `checkpoint_extras()` when it has one."""
    info = setup_distributed(cfg.engine.backend, cfg.engine.timeout_min)
    rank, world = info.rank, info.world
    out = Path(cfg.train.out)
    ckpt_dir = out / "checkpoints"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_recipe(cfg, out)
    manifest = manifest_mod.read(cfg.data.path)
    _seed_everything(cfg.train.seed + rank)

    model = build_model(cfg)
    extras = {**getattr(model, "checkpoint_extras", dict)(), **(extras or {})}
    curator, loss_curation = _curation(cfg, manifest, rank, out)
    if curator is not None:
        extras["curation"] = curator
    if loss_curation is not None:
        extras["loss_curation"] = loss_curation
    plan = (checkpoint.plan_resume(ckpt_dir, world, cfg.engine.zero_stage, cfg.engine.elastic_resume)
            if cfg.train.resume else None)
    engine, sched = build_engine(model, cfg.engine, cfg.optim, cfg.data.batch_size, cfg.train.steps,
                                 load_universal=plan is not None and plan.universal)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.engine.precision, torch.float32)

    step, samples_seen, generation, skip = 0, 0, 0, 0
    data_state = {"path": cfg.data.path, "batch_size": cfg.data.batch_size, "num_workers": cfg.data.num_workers,
                  "shuffle_buffer": cfg.data.shuffle_buffer, "world": world, "seed": cfg.train.seed,
                  "grad_accum": cfg.engine.grad_accum}
    if plan is not None:
        same_world = plan.meta["world"] == world
        meta = checkpoint.load(engine, ckpt_dir, plan, rank, restore_rng=same_world, extras=extras)
        step, samples_seen = meta["step"], meta["samples_seen"]
        generation = meta.get("data_generation", 0)
        if meta.get("data") == data_state:
            # exact resume: the batches the run would have seen (since the last curation round,
            # which started a new stream over its keep-list)
            since = curator.since_step if curator is not None else 0
            skip = (step - since) * cfg.engine.grad_accum
        else:
            # the stream cannot be replayed (other world size, workers, batch...): a fresh
            # seeded stream, so the restarted run does not repeat the batches it already saw
            generation += 1
            if rank == 0:
                log.warning("data settings changed since the checkpoint (%s -> %s): the data stream is not "
                            "resumed exactly, a new seeded stream starts", meta.get("data"), data_state)
        if not same_world:        # the saved RNG states belong to other ranks: seed afresh, deterministically
            _seed_everything(cfg.train.seed + rank + 1_000_003 * generation)
        if rank == 0:
            log.info("resumed from %s at step %d (%s%s)", plan.tag, step,
                     "exact data position" if skip else "new data stream",
                     f", universal checkpoint: world size {plan.meta['world']} -> {world}" if plan.universal else "")

    signals = StopSignals()
    signals.ignore()              # loader workers started below inherit SIG_IGN: only this process reacts

    streams = []                  # the open iterator, so its workers are stopped when we leave

    def open_stream(skip_batches: int):
        """The rank's endless batch iterator: seeded by the data generation and the curation
        round, over the curation keep-list when there is one (the previous one is closed)."""
        while streams:
            close_loader(streams.pop())
        rounds = curator.round if curator is not None else 0
        loader = make_loader(cfg.data.path, cfg.data.batch_size, rank, world,
                             seed=cfg.train.seed + 1_000_003 * generation + 7_777_777 * rounds,
                             num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
                             start_method=cfg.data.start_method, skip_batches=skip_batches,
                             augment_spec=cfg.data.augment, keep=curator.mask if curator is not None else None,
                             ignore_signals=True, reuse_buffers=True)   # each batch is consumed before the next
        with torch.random.fork_rng(devices=[]):   # starting the loader draws a seed; keep the restored RNG exact
            streams.append(iter(loader))
        return streams[-1]

    it = open_stream(skip)
    signals.install()
    try:
        return _loop(cfg, info, engine, sched, it, step, samples_seen, generation, data_state, manifest,
                     extras, signals, dtype, curator, loss_curation, open_stream)
    finally:
        signals.restore()
        while streams:
            close_loader(streams.pop())


def _curation(cfg: PretrainConfig, manifest: dict, rank: int, out: Path):
    """(Curator or None, LossCuration or None) for `curation.mode`."""
    spec = cfg.curation
    if spec.mode == "kmeans":
        from pretrain.curation.curator import Curator
        total = sum(int(r["samples"]) for r in manifest["shards"])
        return Curator(spec, cfg.data.path, total, cfg.train.seed, out / "curation"), None
    if spec.mode == "loss":
        from pretrain.curation.loss_mode import LossCuration
        return None, LossCuration(spec.loss_ratio, spec.loss_stop, cfg.train.seed, rank)
    return None, None


def _loop(cfg, info, engine, sched, it, step, samples_seen, generation, data_state, manifest, extras,
          signals, dtype, curator=None, loss_curation=None, open_stream=None) -> dict:
    rank, world = info.rank, info.world
    out = Path(cfg.train.out)
    ckpt_dir = out / "checkpoints"
    client_state = {                     # DeepSpeed stores it with the model; eofm-export reads it
        "config": to_dict(cfg),
        "arch_args": engine.module.backbone.arch_args,
        "normalization": normalization_table(manifest),
        "manifest_sha256": _dataset_digest(cfg.data.path),
    }

    def save() -> str:
        meta = {"step": step, "samples_seen": samples_seen, "world": world, "zero_stage": cfg.engine.zero_stage,
                "precision": cfg.engine.precision, "data_generation": generation, "data": data_state,
                "time": time.time()}
        tag = checkpoint.save(engine, ckpt_dir, meta, {**client_state, "step": step, "samples_seen": samples_seen},
                              cfg.train.keep_checkpoints, rank, extras)
        return tag

    metrics_file = out / "metrics.jsonl"
    keys_file = out / "batch_keys.jsonl" if cfg.train.log_batch_keys and rank == 0 else None
    tb = _tensorboard(out) if cfg.train.tensorboard and rank == 0 else None
    bar = tqdm(total=cfg.train.steps, initial=step, desc="pretrain", unit="step",
               disable=rank != 0 or not cfg.train.progress)
    window = _new_window()
    record: dict = {}
    last_save = time.monotonic()
    engine.train()
    while step < cfg.train.steps:
        if hasattr(engine.module, "set_progress"):   # optional objective hook (curricula, schedules, EMA teachers)
            engine.module.set_progress(step, cfg.train.steps)
        for _ in range(cfg.engine.grad_accum):
            t_wait = time.perf_counter()
            batch = next(it)
            window["wait"] += time.perf_counter() - t_wait
            if keys_file is not None:
                with open(keys_file, "a") as f:
                    f.write(json.dumps({"step": step + 1, "keys": batch["key"]}) + "\n")
            batch = to_device(batch, info.device, dtype)
            if loss_curation is not None:        # drop well-learned samples before any compute
                loaded = len(batch["key"])
                batch = loss_curation.plan(batch, step, cfg.train.steps)
            outputs = engine(batch)
            if loss_curation is not None:
                loss_curation.update(batch, outputs)
                outputs = {**outputs, "curation_kept_fraction": torch.tensor(len(batch["key"]) / loaded)}
            loss = outputs["loss"]
            due = rank == 0 and cfg.train.checkpoint_every_min > 0 and \
                time.monotonic() - last_save >= 60 * cfg.train.checkpoint_every_min
            n_bad, stop, save_now = agree(loss, signals.received is not None, due)
            if n_bad:
                raise NonFiniteLoss(
                    f"non-finite loss at step {step + 1} on {n_bad} of {world} rank(s) (rank {rank}: {loss.item()}); "
                    f"stopped without saving; the last good checkpoint is {checkpoint.latest_tag(ckpt_dir)} in "
                    f"{ckpt_dir} (lower optim.lr, raise optim.warmup_steps, or use bf16 instead of fp16)")
            engine.backward(loss)
            engine.step()
            n = batch["image"].shape[0]
            window["loss"] += float(loss.detach()) * n
            window["n"] += n
            window["tokens"] += n * _tokens_per_sample(batch["image"], cfg.model.patch_size)
            for k, v in outputs.items():
                if k != "loss" and (not isinstance(v, torch.Tensor) or v.ndim == 0):   # scalars only
                    window["extra"][k] = window["extra"].get(k, 0.0) + float(v) * n
        step += 1
        samples_seen += cfg.data.batch_size * cfg.engine.grad_accum * world
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps or stop:
            record = _log(window, step, samples_seen, engine, sched, cfg, info)
            if rank == 0:
                with open(metrics_file, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if tb is not None:
                    for k, v in record.items():
                        if isinstance(v, (int, float)) and k not in ("step", "time"):
                            tb.add_scalar(f"train/{k}", v, step)
                    tb.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            window = _new_window()
        if curator is not None and curator.due(step):
            # collective: every rank embeds its share, rank 0 clusters, the keep-list is broadcast;
            # then a new stream over the kept samples starts (the old workers are shut down). Also
            # at the last step, so that a run later extended (more train.steps) continues exactly.
            report = curator.run(engine.module.backbone, step, rank, world, info.device, dtype)
            engine.train()
            it = open_stream(0)
            if rank == 0:
                log.info("curation round %d at step %d: kept %d of %d embedded samples",
                         report["round"], step, report["kept"], report["embedded"])
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or stop or save_now:
            tag = save()
            last_save = time.monotonic()
            if stop:
                bar.close()
                name = signal.Signals(signals.received).name if signals.received else "a signal on another rank"
                raise Stopped(f"stopped by {name} at step {step}: checkpoint {ckpt_dir / tag} written; "
                              f"run the same command again to resume")
    bar.close()
    if tb is not None:
        tb.close()
    # ZeRO-3 holds a shard of each weight per rank: gather them (collective) so rank 0 alone can run
    # the model for the figure while the others wait
    from contextlib import nullcontext

    import deepspeed
    whole = (deepspeed.zero.GatheredParameters(list(engine.module.parameters()))
             if cfg.engine.zero_stage == 3 else nullcontext())
    with whole:
        if rank == 0:
            from pretrain.plots import plot_reconstructions, plot_run
            if metrics_file.is_file():
                plot_run(out)
            plot_reconstructions(engine.module, next(it), out / "reconstructions.png", info.device, dtype)
        dist.barrier()
    return record


def _new_window() -> dict:
    return {"loss": 0.0, "n": 0, "tokens": 0, "wait": 0.0, "t0": time.perf_counter(), "extra": {}}


def _tokens_per_sample(image: torch.Tensor, patch: int) -> int:
    """Input patch tokens per sample (before any masking): frames x (H/p) x (W/p)."""
    frames = image.shape[1] if image.ndim == 5 else 1
    return frames * (image.shape[-2] // patch) * (image.shape[-1] // patch)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:           # optional: pip install tensorboard
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _log(window: dict, step: int, samples_seen: int, engine, sched, cfg: PretrainConfig, info) -> dict:
    """Average the window's loss across ranks and describe throughput and memory."""
    device, world = info.device, info.world
    sums = torch.tensor([window["loss"], window["n"], window["wait"], window["tokens"]], dtype=torch.float64)
    dist.all_reduce(sums)
    peak = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,   # KiB -> GiB
                         torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0])
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    elapsed = time.perf_counter() - window["t0"]
    samples = sums[1].item()
    record = {
        "step": step,
        "loss": sums[0].item() / max(samples, 1),
        # the schedule's lr (groups with layer decay or lr_scale get a fixed fraction of it)
        "lr": cfg.optim.lr * sched.get_last_lr()[0] / sched.base_lrs[0] if sched.base_lrs[0] else 0.0,
        "samples_seen": samples_seen,
        "samples_per_s": samples / elapsed,
        "tokens_per_s": sums[3].item() / elapsed,
        "data_wait_frac": (sums[2].item() / world) / elapsed,
        "max_rss_gb": peak[0].item(),
        "time": time.time(),
    }
    if device.type == "cuda":
        record["max_mem_gb"] = peak[1].item()
    norm = engine.get_global_grad_norm()
    if norm is not None:
        record["grad_norm"] = float(norm)
    if cfg.engine.precision == "fp16":
        record["loss_scale"] = float(getattr(engine.optimizer, "cur_scale", getattr(engine.optimizer, "loss_scale", 0)))
    for k, v in window["extra"].items():
        record[k] = v / max(window["n"], 1)
    return record

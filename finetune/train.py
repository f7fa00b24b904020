"""Evaluation protocols: linear probe (frozen encoder) and end-to-end fine-tuning.

Both return test-set predictions; `run` ties export, task, protocols and report together.
Everything is seeded, so repeated CPU runs give the same numbers.
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from finetune.config import FinetuneConfig, FinetuneSpec, LinearProbeSpec
from finetune.data import Task
from finetune.heads import Classifier, linear_head, param_groups
from finetune.metrics import classification_metrics

FEATURE_BATCH = 64  # chips per forward pass when only features are needed (no activations kept)


def _batches(n: int, batch_size: int, generator: torch.Generator | None = None):
    """Index tensors covering range(n); shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def _cosine(step: int, total: int, warmup: int) -> float:
    """lr multiplier: linear warmup over `warmup` steps, then cosine from 1 to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _inputs(task: Task, idx, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """image (B, C, H, W), wavelengths_nm (C,), gsd_m (B,) tensors for task chips `idx`."""
    idx = np.asarray(idx)
    return (torch.from_numpy(task.images[idx]).to(device),
            torch.from_numpy(task.wavelengths_nm).to(device),
            torch.from_numpy(task.gsd_m[idx]).to(device))


@torch.no_grad()
def extract_features(encoder: nn.Module, task: Task, idx: np.ndarray, device: str = "cpu",
                     progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Frozen `pooled` features of chips `idx`: (len(idx), D) float32 on the CPU."""
    encoder.eval()
    out = []
    for b in tqdm(list(_batches(len(idx), FEATURE_BATCH)), desc=desc, disable=not progress, leave=False):
        out.append(encoder.forward_features(*_inputs(task, idx[b.numpy()], device))["pooled"].float().cpu())
    return torch.cat(out)


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, spec: LinearProbeSpec,
               seed: int) -> nn.Linear:
    """Linear classifier on standardised features x (N, D), labels y (N,), AdamW + cosine lr."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = linear_head(x.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = math.ceil(len(x) / spec.batch_size)
    total = spec.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, total, 0))
    for _ in range(spec.epochs):
        for b in _batches(len(x), spec.batch_size, gen):
            loss = F.cross_entropy(head(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def linear_probe(encoder: nn.Module, task: Task, spec: LinearProbeSpec, seed: int,
                 device: str = "cpu", progress: bool = False, desc: str = "linear probe") -> np.ndarray:
    """Frozen encoder (eval mode) -> standardised pooled features -> linear classifier.
    Returns test predictions (n_test,) int64."""
    train_idx, test_idx = task.train_idx, task.test_idx
    f_train = extract_features(encoder, task, train_idx, device, progress, f"{desc}: train features")
    f_test = extract_features(encoder, task, test_idx, device, progress, f"{desc}: test features")
    # Train-split statistics only, so nothing about the test chips leaks into the classifier.
    mean, std = f_train.mean(0), f_train.std(0, correction=0).clamp_min(1e-6)
    f_train, f_test = (f_train - mean) / std, (f_test - mean) / std
    head = fit_linear(f_train, torch.from_numpy(task.labels[train_idx]), len(task.classes), spec, seed)
    with torch.no_grad():
        return head(f_test).argmax(1).numpy()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random dihedral transform (flip + k*90 degree rotation) for the batch (B, C, H, W).
    Land cover has no preferred orientation, so these are label-preserving."""
    k, flip = torch.randint(0, 4, (2,), generator=gen).tolist()
    x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip % 2 else x


def finetune(encoder: nn.Module, task: Task, spec: FinetuneSpec, seed: int, device: str = "cpu",
             progress: bool = False) -> np.ndarray:
    """Encoder + head on `pooled` trained end to end (AdamW, layer-wise lr decay, warmup +
    cosine). `encoder` is trained in place: pass a copy. Returns test predictions (n_test,)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(encoder, len(task.classes), spec.head).to(device)
    groups = param_groups(model, spec.lr, spec.weight_decay, spec.layer_decay)
    opt = torch.optim.AdamW(groups, lr=spec.lr)
    train_idx = task.train_idx
    labels = torch.from_numpy(task.labels)
    steps_per_epoch = math.ceil(len(train_idx) / spec.batch_size)
    total = spec.epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total // 10)  # short warmup: the fresh head's first gradients are large
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, total, warmup))
    bar = tqdm(total=total, desc="finetune", unit="step", disable=not progress, leave=False)
    model.train()
    for _ in range(spec.epochs):
        for b in _batches(len(train_idx), spec.batch_size, gen):
            idx = train_idx[b.numpy()]
            image, wl, gsd = _inputs(task, idx, device)
            if spec.augment:
                image = _augment(image, gen)
            loss = F.cross_entropy(model(image, wl, gsd), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # guards the pretrained weights early on
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    preds = []
    with torch.no_grad():
        for b in _batches(len(task.test_idx), FEATURE_BATCH):
            preds.append(model(*_inputs(task, task.test_idx[b.numpy()], device)).argmax(1).cpu())
    return torch.cat(preds).numpy()


def _record(task: Task, preds: np.ndarray, seconds: float, **info) -> dict:
    """Metrics of one protocol + split sizes, JSON-ready."""
    m = classification_metrics(task.labels[task.test_idx], preds, task.classes)
    return {**m, "n_train": int(len(task.train_idx)), "n_test": int(len(task.test_idx)),
            "seconds": round(seconds, 2), **info}


def run(cfg: FinetuneConfig, progress: bool = True) -> dict:
    """Load the export and task, run the protocols, write the report into cfg.output.path.
    Returns the metrics dict that was written to metrics.json."""
    from data_prep.recipe import to_dict
    from finetune import labels as label_sources
    from finetune.backbone import load_backbone, random_backbone
    from finetune.data import load_task
    from finetune.report import write_report

    started = time.time()
    device = cfg.device
    encoder, export_cfg = load_backbone(cfg.model.export, device)
    source = label_sources.get(cfg.data.labels)
    task = load_task(cfg.data.path, source, export_cfg, cfg.data.block_m, cfg.data.test_fraction,
                     cfg.data.seed, progress)

    results: dict[str, dict] = {}
    lp = to_dict(cfg.linear_probe)
    if "linear_probe" in cfg.protocols:
        t = time.time()
        preds = linear_probe(encoder, task, cfg.linear_probe, cfg.seed, device, progress)
        results["linear_probe"] = _record(task, preds, time.time() - t, encoder="export", settings=lp)
    if cfg.random_baseline:
        t = time.time()
        rand = random_backbone(export_cfg, cfg.seed, device)
        preds = linear_probe(rand, task, cfg.linear_probe, cfg.seed, device, progress, "random-init probe")
        results["linear_probe_random_init"] = _record(
            task, preds, time.time() - t, encoder=f"random init (seed {cfg.seed}), same architecture",
            settings=lp)
    if "finetune" in cfg.protocols:
        t = time.time()
        preds = finetune(copy.deepcopy(encoder), task, cfg.finetune, cfg.seed, device, progress)
        results["finetune"] = _record(task, preds, time.time() - t, encoder="export",
                                      settings=to_dict(cfg.finetune))

    report = {
        "label_source": {"name": source.name, "classes": list(source.classes),
                         "description": source.description,
                         "note": "labels derived from the chips themselves: a pipeline check, not a benchmark"
                         if source.name == "ndvi_cover" else ""},
        "data": cfg.data.path,
        "export": cfg.model.export,
        "export_info": {k: export_cfg.get(k) for k in ("architecture", "arch", "objective", "steps",
                                                        "sensor", "data_manifest_sha256")},
        "sensor": task.sensor,
        "bands": task.bands,
        "chip_size": list(task.images.shape[2:]),
        "class_counts": {"all": task.class_counts(), "train": task.class_counts(task.train_idx),
                         "test": task.class_counts(task.test_idx)},
        "unlabelled_chips": task.n_unlabelled,
        "split": {"method": "spatial blocks", "block_m": cfg.data.block_m,
                  "test_fraction": cfg.data.test_fraction, "seed": cfg.data.seed,
                  "blocks_train": len({task.blocks[i] for i in task.train_idx}),
                  "blocks_test": len({task.blocks[i] for i in task.test_idx})},
        "protocols": results,
        "seconds": round(time.time() - started, 2),
    }
    write_report(cfg, report)
    return report

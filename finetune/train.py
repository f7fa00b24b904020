"""Evaluation protocols: linear probe, k-NN (frozen encoder) and end-to-end fine-tuning.

Each protocol gets the task and the training indices of one partial-label regime and returns
test-set outputs: class logits / scores (N_test, K) for image-level tasks, label maps
(N_test, H, W) for segmentation, value maps for regression. `run` ties export, task, repeated
splits, regimes, protocols, baselines and report together. Everything is seeded, so repeated
CPU runs give the same numbers.
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

from finetune import FinetuneError
from finetune.backbone import feature_maps
from finetune.baselines import NAME as INPUT, input_features
from finetune.config import FinetuneConfig, FinetuneSpec, KnnSpec, LinearProbeSpec
from finetune.data import Task, train_subset
from finetune.datasets import IGNORE
from finetune.heads import (DENSE_HEADS, IMAGE_HEADS, Classifier, DenseModel, linear_head, param_groups,
                            pixel_linear_start)
from finetune.metrics import (classification_metrics, multilabel_metrics, regression_metrics,
                              segmentation_metrics)
from finetune.probe import logistic_probe

FEATURE_BATCH = 64  # chips per forward pass when only features are needed (no activations kept)
RANDOM = "_random_init"   # result-name suffix of the random twin (INPUT: the baseline's name)
HEADLINE = {"classification": ("accuracy", "macro_f1"), "multilabel": ("map_macro", "map_micro", "f1_micro"),
            "segmentation": ("miou", "accuracy"), "regression": ("rmse", "mae", "r2")}


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
    """image (B, C, H, W), wavelengths_nm (C,), gsd_m (B,) tensors for task samples `idx`."""
    idx = np.asarray(idx)
    return (torch.from_numpy(task.images[idx]).to(device),
            torch.from_numpy(task.wavelengths_nm).to(device),
            torch.from_numpy(task.gsd_m[idx]).to(device))


def _target_scale(task: Task, idx: np.ndarray) -> tuple[float, float]:
    """Regression: (mean, std) of the finite training targets, so heads regress unit-scale values."""
    if task.kind != "regression":
        return 0.0, 1.0
    t = task.targets[idx]
    t = t[np.isfinite(t)]
    return float(t.mean()), max(float(t.std()), 1e-6)


def _loss(kind: str, out: torch.Tensor, target: torch.Tensor, scale=(0.0, 1.0)) -> torch.Tensor:
    """classification CE; multilabel BCE; segmentation pixel CE (IGNORE skipped); regression
    MSE on standardised values over finite targets. out: (B, K) or (B, K, H, W)."""
    if kind == "classification":
        return F.cross_entropy(out, target)
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(out, target)
    if kind == "segmentation":
        return F.cross_entropy(out, target, ignore_index=IGNORE)
    ok = torch.isfinite(target)
    pred = out[:, 0]
    if not ok.any():
        return pred.sum() * 0.0
    return F.mse_loss(pred[ok], (target[ok] - scale[0]) / scale[1])


def _outputs(kind: str, out: torch.Tensor, scale=(0.0, 1.0)) -> torch.Tensor:
    """Raw head output -> what metrics take: logits, sigmoid scores, label map, value map."""
    if kind == "multilabel":
        return out.sigmoid()
    if kind == "segmentation":
        return out.argmax(1)
    if kind == "regression":
        return out[:, 0] * scale[1] + scale[0]
    return out


def evaluate(task: Task, outputs: np.ndarray) -> dict:
    """Metrics of test-set outputs, by task kind (finetune.metrics)."""
    y = task.targets[task.test_idx]
    if task.kind == "classification":
        return classification_metrics(y, np.asarray(outputs).argmax(1), task.classes)
    if task.kind == "multilabel":
        return multilabel_metrics(y, outputs, task.classes)
    if task.kind == "segmentation":
        return segmentation_metrics(y, outputs, task.classes, IGNORE)
    return regression_metrics(y, outputs)


# ---- frozen features -----------------------------------------------------------------------------

@torch.no_grad()
def extract_features(encoder: nn.Module, task: Task, idx: np.ndarray, device: str = "cpu",
                     progress: bool = False, desc: str = "features", dense: bool = False) -> torch.Tensor:
    """Frozen features of samples `idx` on the CPU: `pooled` (len(idx), D), or with dense=True
    the last block's normed patch-token map (len(idx), D, H/p, W/p)."""
    encoder.eval()
    out = []
    for b in tqdm(list(_batches(len(idx), FEATURE_BATCH)), desc=desc, disable=not progress, leave=False):
        x = _inputs(task, idx[b.numpy()], device)
        f = feature_maps(encoder, *x, (encoder.depth - 1,))[0] if dense else encoder.forward_features(*x)["pooled"]
        out.append(f.float().cpu())
    return torch.cat(out)


def _standardise(f: torch.Tensor, train: np.ndarray) -> torch.Tensor:
    """Per-feature (channel) standardisation with TRAIN statistics only, so nothing about the
    test samples leaks into the classifier."""
    dims = (0,) if f.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if f.ndim == 2 else (1, -1, 1, 1)
    mean = f[train].mean(dims).reshape(shape)
    std = f[train].std(dims, correction=0).clamp_min(1e-6).reshape(shape)
    return (f - mean) / std


def fit_linear(x: torch.Tensor, y: torch.Tensor, num_out: int, spec: LinearProbeSpec, seed: int,
               kind: str = "classification", size=None, scale=(0.0, 1.0),
               pixels: torch.Tensor | None = None) -> nn.Module:
    """Linear head on standardised features, AdamW + cosine lr. Image-level: x (N, D) -> (N, K).
    Dense: x (N, D, h, w) -> 1x1 conv -> bilinear to `size` -> (N, K, H, W), pixel loss; with
    `pixels` (N, C, H, W) (the standardised bands) plus a 1x1 conv of them at full resolution.
    `head.predict(x[, pixels])` gives the outputs."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head = linear_head(x.shape[1], num_out) if x.ndim == 2 else nn.Conv2d(x.shape[1], num_out, 1)
    # Start from the per-pixel logistic / ridge model of the bands (it then needs few steps): the
    # bands come as `pixels` beside token maps, or are `x` itself at full resolution (the dense
    # input_stats baseline, which is then a converged per-pixel linear model).
    bands = pixels if pixels is not None else (
        x if x.ndim == 4 and size is not None and tuple(x.shape[2:]) == tuple(size) else None)
    if bands is not None:
        if pixels is not None:
            head.pixel = nn.Conv2d(pixels.shape[1], num_out, 1, bias=False)
        w, b = pixel_linear_start(bands.numpy(), y.numpy(), num_out, kind, scale, seed)
        with torch.no_grad():
            if pixels is not None:
                head.weight.zero_()        # token features start at 0: the start is the bands' model
            (head.pixel if pixels is not None else head).weight[:, :, 0, 0] = w
            head.bias.copy_(b)

    def forward(z, p=None):
        out = head(z) if x.ndim == 2 else F.interpolate(head(z), size=size, mode="bilinear", align_corners=False)
        return out if p is None else out + head.pixel(p)

    opt = torch.optim.AdamW(head.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    total = spec.epochs * math.ceil(len(x) / spec.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, total, 0))
    for _ in range(spec.epochs):
        for b in _batches(len(x), spec.batch_size, gen):
            loss = _loss(kind, forward(x[b], None if pixels is None else pixels[b]), y[b], scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    head.predict = forward
    return head


def linear_probe(features: torch.Tensor, task: Task, train_idx: np.ndarray, spec: LinearProbeSpec,
                 seed: int) -> tuple[np.ndarray, dict]:
    """Linear model on frozen features of ALL task samples (`extract_features`, indexed like the
    task), standardised with and trained on `train_idx`. Classification: cross-validated
    logistic regression (finetune.probe); multi-label and dense: `fit_linear`. Returns test
    outputs (see module doc) and what the probe chose ({} when nothing was chosen)."""
    f = _standardise(features, train_idx)
    if task.kind == "classification":
        logits, info = logistic_probe(f[train_idx], task.targets[train_idx], f[task.test_idx], len(task.classes),
                                      spec.l2_grid, spec.cv_folds, seed, spec.max_iter)
        return logits, info
    scale = _target_scale(task, train_idx)
    y = torch.from_numpy(task.targets[train_idx])
    num_out = 1 if task.kind == "regression" else len(task.classes)
    px = None   # dense probe on token maps: each pixel's bands enter too (finetune.heads, pixel path)
    if spec.pixel_path and not task.image_level and tuple(features.shape[2:]) != tuple(task.images.shape[2:]):
        px = _standardise(torch.from_numpy(task.images), train_idx)
    head = fit_linear(f[train_idx], y, num_out, spec, seed, task.kind, task.images.shape[2:], scale,
                      None if px is None else px[train_idx])
    with torch.no_grad():
        out = [_outputs(task.kind, head.predict(f[task.test_idx][b], None if px is None else px[task.test_idx][b]),
                        scale) for b in _batches(len(task.test_idx), FEATURE_BATCH)]
    return torch.cat(out).numpy(), {}


def knn(features: torch.Tensor, task: Task, train_idx: np.ndarray, spec: KnnSpec) -> np.ndarray:
    """Weighted k-NN on L2-normalised pooled features (cosine similarity), each of the k nearest
    training samples voting with weight exp(similarity / temperature) (divided by the nearest's
    weight, which changes no decision). Classification: summed votes per class (N_test, K); multi-label: the vote-weighted mean of the neighbours' label
    vectors (N_test, K), a score in [0, 1] per class."""
    if not task.image_level:
        raise FinetuneError(f"knn needs an image-level task (classification or multilabel), not {task.kind}")
    f = F.normalize(features.float(), dim=1)
    train, test = f[train_idx], f[task.test_idx]
    k = min(spec.k, len(train_idx))
    sim, nn_idx = (test @ train.T).topk(k, dim=1)                       # (N_test, k)
    w = ((sim - sim[:, :1]) / spec.temperature).exp()  # exp(sim / T) up to a per-row factor: no overflow
    y = torch.from_numpy(task.targets[train_idx])
    if task.kind == "classification":
        onehot = F.one_hot(y[nn_idx], len(task.classes)).float()        # (N_test, k, K)
        return (w[..., None] * onehot).sum(1).numpy()
    return ((w[..., None] * y[nn_idx].float()).sum(1) / w.sum(1, keepdim=True)).numpy()


# ---- fine-tuning --------------------------------------------------------------------------------

def _augment(x: torch.Tensor, gen: torch.Generator, target: torch.Tensor | None = None):
    """One random dihedral transform (flip + k*90 degree rotation) for the batch (B, C, H, W),
    applied alike to a label map (B, H, W). Land cover has no preferred orientation."""
    k, flip = torch.randint(0, 4, (2,), generator=gen).tolist()

    def t(a, dims):
        a = torch.rot90(a, k, dims=dims)
        return torch.flip(a, dims=(dims[1],)) if flip % 2 else a

    return t(x, (2, 3)), (t(target, (1, 2)) if target is not None and target.ndim == 3 else target)


def build_model(encoder: nn.Module, task: Task, spec: FinetuneSpec) -> nn.Module:
    """Classifier (image-level) or DenseModel (segmentation / regression) with spec.head."""
    head = spec.head
    if task.image_level:
        head = "linear" if head == "auto" else head
        if head not in IMAGE_HEADS:
            raise FinetuneError(f"finetune.head={head}: image-level tasks take {', '.join(IMAGE_HEADS)}")
        return Classifier(encoder, len(task.classes), head)
    head = "upernet" if head == "auto" else head
    if head not in DENSE_HEADS:
        raise FinetuneError(f"finetune.head={head}: {task.kind} takes {', '.join(DENSE_HEADS)}")
    try:
        return DenseModel(encoder, 1 if task.kind == "regression" else len(task.classes), head, tuple(spec.layers),
                          pixel_path=spec.pixel_path, in_bands=task.images.shape[1])
    except ValueError as err:
        raise FinetuneError(f"finetune.layers: {err}") from None


def finetune(encoder: nn.Module, task: Task, train_idx: np.ndarray, spec: FinetuneSpec, seed: int,
             device: str = "cpu", progress: bool = False) -> np.ndarray:
    """Encoder + head trained end to end (AdamW, layer-wise lr decay, warmup + cosine), or the
    head alone with spec.freeze_encoder. `encoder` is trained in place: pass a copy.
    Returns test outputs (module doc)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(encoder, task, spec).to(device)
    scale = _target_scale(task, train_idx)
    if isinstance(model, DenseModel) and spec.pixel_path and spec.pixel_init:
        model.warm_start(task.images, task.targets, train_idx, task.kind, scale, task.wavelengths_nm, seed)
    if spec.freeze_encoder:
        model.encoder.requires_grad_(False)
    groups = param_groups(model, spec.lr, spec.weight_decay, spec.layer_decay)
    opt = torch.optim.AdamW(groups, lr=spec.lr)
    targets = torch.from_numpy(task.targets)
    steps_per_epoch = math.ceil(len(train_idx) / spec.batch_size)
    total = spec.epochs * steps_per_epoch
    warmup = min(steps_per_epoch, total // 10)  # short warmup: the fresh head's first gradients are large
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, total, warmup))
    bar = tqdm(total=total, desc="finetune", unit="step", disable=not progress, leave=False)
    model.train()
    if spec.freeze_encoder:
        model.encoder.eval()  # no drop-path noise in a frozen encoder
    for _ in range(spec.epochs):
        for b in _batches(len(train_idx), spec.batch_size, gen):
            idx = train_idx[b.numpy()]
            image, wl, gsd = _inputs(task, idx, device)
            y = targets[idx].to(device)
            if spec.augment:
                image, y = _augment(image, gen, y)
            loss = _loss(task.kind, model(image, wl, gsd), y, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)  # guards pretrained weights early on
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    out = []
    with torch.no_grad():
        for b in _batches(len(task.test_idx), FEATURE_BATCH):
            out.append(_outputs(task.kind, model(*_inputs(task, task.test_idx[b.numpy()], device)), scale).cpu())
    return torch.cat(out).numpy()


# ---- the run ------------------------------------------------------------------------------------

def load(cfg: FinetuneConfig, export_cfg: dict, progress: bool = False) -> Task:
    """The recipe's dataset as a Task (reader for data.format, then finetune.data.build_task)."""
    from finetune import datasets, labels as label_sources
    from finetune.data import build_task, read_eofm

    d = cfg.data
    if d.format == "eofm":
        raw = read_eofm(d.path, label_sources.get(d.labels), progress)
    elif d.format == "eurosat":
        raw = datasets.read_eurosat(d.path, d.split_file or None)
    elif d.format == "bigearthnet":
        raw = datasets.read_bigearthnet(d.path, d.split_file or None)
    else:
        f = d.folder
        raw = datasets.read_folder(d.path, "segmentation" if d.task == "auto" else d.task, f.bands, f.wavelengths_nm,
                                   f.classes, f.sensor, f.units, f.ignore_value, d.split_file or None)
    kind = "multilabel" if d.format == "bigearthnet" and d.task == "auto" else d.task
    return build_task(raw, export_cfg, bands=d.bands, tile_size=d.tile, kind=kind, split=d.split,
                      test_fraction=d.test_fraction, block_m=d.block_m, seed=d.seed,
                      normalization=d.normalization, default_split="blocks" if d.format == "eofm" else "random",
                      repeats=d.repeats)


def summarise(results: list[dict], kind: str) -> dict:
    """protocol -> fraction -> metric -> {mean, std, n} over label seeds x repeated splits (std
    with ddof 0)."""
    out: dict = {}
    for r in results:
        out.setdefault(r["protocol"], {}).setdefault(str(r["label_fraction"]), []).append(r)
    return {p: {f: {m: {"mean": float(np.mean([r[m] for r in rs])), "std": float(np.std([r[m] for r in rs])),
                        "n": len(rs)} for m in HEADLINE[kind]}
                for f, rs in by_f.items()} for p, by_f in out.items()}


def compare(summary: dict, protocols: list[str]) -> dict:
    """protocol -> fraction -> {pretrained, random_init, input_stats}: the summary entries of the
    protocol, of the same protocol on the random-init twin, and of the input-statistics baseline
    (a linear model), side by side; a baseline that did not run is left out."""
    base = summary.get(INPUT, {})
    return {p: {f: {k: v for k, v in (("pretrained", stats), ("random_init", summary.get(p + RANDOM, {}).get(f)),
                                      ("input_stats", base.get(f))) if v is not None}
                for f, stats in summary[p].items()} for p in protocols}


def run(cfg: FinetuneConfig, progress: bool = True) -> dict:
    """Load the export and task; for every repeated split x partial-label regime run every
    protocol on the export and on its random-init twin, and the input-statistics baseline; write
    the report into cfg.output.path. Returns the dict written to metrics.json."""
    from data_prep.recipe import to_dict
    from finetune import labels as label_sources
    from finetune.backbone import load_backbone, random_backbone
    from finetune.report import write_report

    started = time.time()
    device = cfg.device
    encoder, export_cfg = load_backbone(cfg.model.export, device)
    task = load(cfg, export_cfg, progress)
    h, w = task.images.shape[2:]
    p = encoder.patch_size
    if h % p or w % p:
        raise FinetuneError(f"{cfg.data.path}: images are {h}x{w}, not a multiple of the export's patch size {p}: "
                            f"set data.tile to a multiple of {p}")
    if "knn" in cfg.protocols and not task.image_level:
        raise FinetuneError(f"protocol knn needs an image-level task; this one is {task.kind} (drop knn from protocols)")

    encoders = {"": encoder}
    if cfg.random_baseline:
        encoders[RANDOM] = random_backbone(export_cfg, cfg.seed, device)
    features = {}  # frozen features once per encoder, shared by every split and regime
    for tag, enc in encoders.items():
        if {"linear_probe", "knn"} & set(cfg.protocols):
            t = time.time()
            features[tag] = (extract_features(enc, task, np.arange(len(task.keys)), device, progress,
                                              f"features{tag}", dense=not task.image_level), time.time() - t)
    jobs = [(protocol, tag) for protocol in cfg.protocols for tag in encoders]
    if cfg.input_stats_baseline:
        t = time.time()
        features[INPUT] = (input_features(task), time.time() - t)
        jobs.append(("linear_probe", INPUT))
    described = {"": "export", RANDOM: f"random init (seed {cfg.seed}), same architecture",
                 INPUT: "none: linear model on " + ("per-band mean and std of each image's valid pixels"
                                                    if task.image_level else "each pixel's bands") + " (normalised)"}

    settings = {"linear_probe": to_dict(cfg.linear_probe), "knn": to_dict(cfg.knn), "finetune": to_dict(cfg.finetune)}
    results = []
    for rep in range(task.repeats):
        split = task.with_split(rep)
        for fraction in cfg.data.label_fractions:
            for label_seed in cfg.data.label_seeds:
                train_idx = train_subset(split, fraction, label_seed)
                seed = cfg.seed + label_seed + 1000 * rep
                for protocol, tag in jobs:
                    t = time.time()
                    chosen = {}
                    if protocol == "finetune":
                        out = finetune(copy.deepcopy(encoders[tag]), split, train_idx, cfg.finetune, seed, device,
                                       progress)
                    elif protocol == "knn":
                        out = knn(features[tag][0], split, train_idx, cfg.knn)
                    else:
                        out, chosen = linear_probe(features[tag][0], split, train_idx, cfg.linear_probe, seed)
                    seconds = time.time() - t + (features[tag][1] if protocol != "finetune" else 0.0)
                    results.append({
                        "protocol": INPUT if tag == INPUT else protocol + tag, "label_fraction": fraction,
                        "label_seed": label_seed, "repeat": rep, "split_seed": task.split_seeds[rep],
                        **evaluate(split, out),
                        "n_train": int(len(train_idx)), "n_test": int(len(split.test_idx)),
                        "seconds": round(seconds, 2), "encoder": described[tag], "settings": settings[protocol],
                        **({"probe": chosen} if chosen else {})})

    # The headline entry per protocol: all training labels (largest fraction), first seed and split.
    top = max(cfg.data.label_fractions)
    headline = {}
    for r in results:
        if r["label_fraction"] == top and r["label_seed"] == cfg.data.label_seeds[0] and r["repeat"] == 0:
            headline.setdefault(r["protocol"], r)
    summary = summarise(results, task.kind)
    source = label_sources.get(cfg.data.labels) if cfg.data.format == "eofm" else None
    report = {
        "task": task.kind,
        "format": cfg.data.format,
        "label_source": {"name": source.name if source else cfg.data.format, "classes": list(task.classes),
                         "description": source.description if source else "",
                         "note": "labels derived from the chips themselves: a pipeline check, not a benchmark"
                         if source and source.name == "ndvi_cover" else ""},
        "data": cfg.data.path,
        "export": cfg.model.export,
        "export_info": {k: export_cfg.get(k) for k in ("architecture", "arch", "objective", "steps",
                                                        "sensor", "data_manifest_sha256")},
        "sensor": task.sensor,
        "bands": task.bands,
        "normalization": task.normalization,
        "chip_size": list(task.images.shape[2:]),
        "n_samples": len(task.keys),
        "class_counts": {"all": task.class_counts(), "train": task.class_counts(task.train_idx),
                         "test": task.class_counts(task.test_idx)},
        "unlabelled_chips": task.n_unlabelled,
        "split": task.split_info,
        "notes": task.notes,
        "label_fractions": cfg.data.label_fractions,
        "label_seeds": cfg.data.label_seeds,
        "repeats": task.repeats,
        "comparison": compare(summary, cfg.protocols),
        "protocols": headline,
        "summary": summary,
        "runs": results,
        "seconds": round(time.time() - started, 2),
    }
    write_report(cfg, report)
    return report

"""Dynamic dataset curation while training (k-means mode): after `warmup_steps`, every
`every_steps`, embed (a seeded subset of) the training set with the current encoder, cluster
the embeddings hierarchically and keep a balanced `keep_fraction` of them. The keep-list is a
boolean mask over global sample indices (manifest shard order, then position: the index of
`ZarrSamples` and `ExactOnce`); the training stream (`ShardStream(keep=...)`) reads only those.

Distributed: every rank embeds its share of the samples (`ExactOnce`: same batch count on all
ranks), the pooled features are all-gathered, rank 0 clusters and samples (so float differences
between devices can never make ranks disagree), and the mask is broadcast. The mask, the round
number and the step at which the current stream started are the curator's state, saved with every
checkpoint, so a resumed run continues with the same selection and the same stream position.
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pretrain.curation.balanced import balanced_sample
from pretrain.curation.kmeans import hierarchical_kmeans
from pretrain.data.index import pack_mask, unpack_mask

log = logging.getLogger("eofm.curation")


def _region(lonlat) -> str:
    """A coarse 30-degree grid cell name for the make-up report."""
    lon, lat = float(lonlat[0]), float(lonlat[1])
    return f"lat{int((lat + 90) // 30) * 30 - 90:+d}_lon{int((lon + 180) // 30) * 30 - 180:+d}"


def token_grid(frames: int, gh: int, gw: int, stride: int) -> torch.Tensor:
    """Indices of every `stride`-th patch along rows and columns, in each frame (frame-major
    token order of ViT.embed): (frames * ceil(gh/stride) * ceil(gw/stride),) long."""
    rows, cols = torch.arange(0, gh, stride), torch.arange(0, gw, stride)
    one = (rows[:, None] * gw + cols[None]).reshape(-1)
    return torch.cat([f * gh * gw + one for f in range(frames)])


def pooled_features(backbone, image, wavelengths_nm, gsd_m, times, lonlat, stride: int = 1) -> torch.Tensor:
    """(B, [T,] C, H, W) -> (B, D): mean of the final patch tokens. stride > 1 encodes only a
    regular grid of patches (every stride-th row and column, with their own position codes):
    stride 2 costs a quarter of the full forward. MAE-style encoders are trained on such partial
    token sets, so the pooled feature stays meaningful for clustering."""
    tokens = backbone.embed(image, wavelengths_nm, gsd_m, times, lonlat)          # (B, [T*]L, D)
    if stride > 1:
        p = backbone.patch_size
        frames = image.shape[1] if image.ndim == 5 else 1
        keep = token_grid(frames, image.shape[-2] // p, image.shape[-1] // p, stride).to(tokens.device)
        tokens = tokens[:, keep]
    return backbone.encode(tokens)[:, 1:].mean(1)


class Curator:
    """The k-means curation schedule, its rounds and its state."""

    def __init__(self, spec, dataset_url: str, total_samples: int, seed: int, out_dir: str | Path):
        self.spec, self.url, self.total, self.seed = spec, dataset_url, int(total_samples), int(seed)
        self.out = Path(out_dir)
        self.round = 0
        self.since_step = 0                      # the step at which the current data stream started
        self.mask: np.ndarray | None = None      # (N,) bool keep-list; None = every sample

    # -- schedule and state ------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """True when a curation round should run after optimizer step `step`."""
        s = self.spec
        return s.mode == "kmeans" and step >= s.warmup_steps and (step - s.warmup_steps) % s.every_steps == 0

    def state_dict(self) -> dict:
        return {"round": self.round, "since_step": self.since_step, "total": self.total,
                "mask": None if self.mask is None else pack_mask(self.mask)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["total"]) != self.total:
            raise ValueError(f"curation state is for {state['total']} samples, the dataset has {self.total}")
        self.round, self.since_step = int(state["round"]), int(state["since_step"])
        packed = state["mask"]
        self.mask = None if packed is None else unpack_mask(packed, self.total)

    # -- one round -----------------------------------------------------------------------------
    def _subset(self) -> set[int] | None:
        n = self.spec.embed_subset
        if not n or n >= self.total:
            return None
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.round)
        return set(torch.randperm(self.total, generator=g)[:n].tolist())

    @torch.no_grad()
    def embed(self, backbone: torch.nn.Module, rank: int, world: int, device, dtype, select=None):
        """Pooled features of the (selected) samples, gathered on every rank:
        features (M, D) float32 CPU, indices (M,) long, attrs: list of per-sample dicts."""
        from pretrain.data.exact import make_eval_loader

        was_training = backbone.training
        backbone.eval()
        feats, idx, attrs = [], [], []
        loader = make_eval_loader(self.url, self.spec.embed_batch_size, rank, world,
                                  num_workers=self.spec.embed_workers, select=select)
        for b in loader:
            image = b["image"].to(device=device, dtype=dtype)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                f = pooled_features(backbone, image, b["wavelengths_nm"].to(device), b["gsd_m"].to(device),
                                    b["times"].to(device), b["lonlat"].to(device), self.spec.embed_token_stride)
            keep = ~b["pad"]
            feats.append(f.float()[keep.to(device)])
            idx.append(b["index"][keep].to(device))
            lc = b.get("landcover")
            for j in keep.nonzero().squeeze(1).tolist():
                a = {"sensor": b["sensor"], "region": _region(b["lonlat"][j])}
                if lc is not None:
                    a["landcover"] = int(lc[j].argmax())
                attrs.append(a)
        backbone.train(was_training)
        local_f = torch.cat(feats) if feats else torch.zeros(0, 1, device=device)
        local_i = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long, device=device)
        if world > 1:
            # ranks hold different numbers of real (non-filler) samples: gather as objects
            parts_f, parts_i, parts_a = [None] * world, [None] * world, [None] * world
            dist.all_gather_object(parts_f, local_f.cpu())
            dist.all_gather_object(parts_i, local_i.cpu())
            dist.all_gather_object(parts_a, attrs)
            local_f, local_i = torch.cat(parts_f), torch.cat(parts_i)
            attrs = [a for p in parts_a for a in p]
        order = torch.argsort(local_i.cpu())
        return local_f.cpu()[order], local_i.cpu()[order], [attrs[i] for i in order.tolist()]

    def run(self, backbone: torch.nn.Module, step: int, rank: int, world: int, device, dtype) -> dict:
        """Embed, cluster, sample; sets the new mask on every rank. Returns the round's report."""
        s = self.spec
        t0 = time.perf_counter()
        select = self._subset()
        feats, index, attrs = self.embed(backbone, rank, world, device, dtype, select)
        t_embed = time.perf_counter() - t0
        payload = [None]
        if rank == 0:
            t1 = time.perf_counter()
            h = hierarchical_kmeans(feats.to(device), s.levels, iters=s.kmeans_iters, seed=self.seed + self.round,
                                    resample_steps=s.resample_steps)
            target = int(round(s.keep_fraction * feats.shape[0]))
            picked = balanced_sample(h, feats, target, eta=s.eta, seed=self.seed + self.round)
            t_cluster = time.perf_counter() - t1
            mask = np.zeros(self.total, bool)
            mask[index[picked].numpy()] = True
            report = self._report(step, h, picked, index, attrs, mask, t_embed, t_cluster)
            payload = [(pack_mask(mask), report)]
        if world > 1:
            dist.broadcast_object_list(payload, src=0)
        packed, report = payload[0]
        self.mask = unpack_mask(packed, self.total)
        self.round += 1
        self.since_step = step
        if rank == 0:
            self._write(report)
        return report

    # -- reporting -----------------------------------------------------------------------------
    def _report(self, step, h, picked, index, attrs, mask, t_embed, t_cluster) -> dict:
        labels0 = h.labels[0].cpu()
        top = labels0
        for lab in h.labels[1:]:
            top = lab.cpu()[top]                 # each point's top-level cluster
        k_top = int(h.centroids[-1].shape[0])
        sizes = torch.bincount(top, minlength=k_top)
        kept = torch.bincount(top[picked], minlength=k_top)
        before = self.mask[index.numpy()] if self.mask is not None else np.ones(len(index), bool)
        makeup = {}
        for field in ("sensor", "region", "landcover"):
            if not attrs or field not in attrs[0]:
                continue
            makeup[field] = {
                "embedded": dict(Counter(str(a[field]) for a in attrs)),
                "kept_before": dict(Counter(str(a[field]) for a, b in zip(attrs, before) if b)),
                "kept_now": dict(Counter(str(attrs[i][field]) for i in picked.tolist())),
            }
        return {
            "round": self.round, "step": step, "embedded": int(len(index)), "dataset_samples": self.total,
            "kept": int(mask.sum()), "keep_fraction": self.spec.keep_fraction, "eta": self.spec.eta,
            "levels": list(self.spec.levels),
            "level0_cluster_sizes": torch.bincount(labels0, minlength=int(h.centroids[0].shape[0])).tolist(),
            "top_cluster_sizes": sizes.tolist(), "top_cluster_kept": kept.tolist(),
            "top_cluster_kept_fraction": [round(k / n, 4) if n else 0.0 for k, n in zip(kept.tolist(), sizes.tolist())],
            "makeup": makeup, "seconds_embed": round(t_embed, 3), "seconds_cluster": round(t_cluster, 3),
        }

    def _write(self, report: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "curation.jsonl", "a") as f:
            f.write(json.dumps(report) + "\n")
        try:
            from pretrain.curation.plots import plot_round
            plot_round(report, self.out / f"curation_round{report['round']:03d}.png")
        except Exception as err:                # a figure must never stop training
            log.warning("curation figure failed: %s", err)

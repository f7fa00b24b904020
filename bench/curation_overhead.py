"""Cost of a dynamic-curation round against the training it curates, and k-means scaling.

  python bench/curation_overhead.py [--workdir /tmp/cb] [--every 1000] [--out docs/bench_curation.json]

Workload: real Sentinel-2 L2A pixels (Major-TOM cells repeated 2x2, bench/prep_throughput.py)
prepared by `eofm-prep` as 12-band 64x64 chips; a ViT-S/8 encoder (384 wide, 12 blocks) with MAE
(mask 0.75, decoder 128 x 2), batch 32, one process, measured in this one run:
- t_step: one MAE training step (forward, backward, AdamW) on a loader batch;
- t_round: one `Curator.run` over every sample of the dataset (exact-once embedding of pooled
  features in eval mode + hierarchical k-means [100, 10] + balanced sampling of 50 %).
The overhead of curating every S steps is t_round / (S * t_step); the per-sample costs printed
with it let one scale the answer to other dataset sizes and subsets (embedding grows linearly
with the samples embedded, k-means as measured in the second table).
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def kmeans_scaling(sizes: list[int], dim: int = 384, levels=(100, 10)) -> list[dict]:
    import torch

    from pretrain.curation.balanced import balanced_sample
    from pretrain.curation.kmeans import hierarchical_kmeans

    out = []
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        centres = torch.randn(50, dim, generator=g) * 3
        x = centres[torch.randint(50, (n,), generator=g)] + torch.randn(n, dim, generator=g)
        t0 = time.perf_counter()
        h = hierarchical_kmeans(x, list(levels), iters=20, seed=0, resample_steps=10)
        t1 = time.perf_counter()
        balanced_sample(h, x, n // 2, eta=0.0)
        t2 = time.perf_counter()
        out.append({"samples": n, "dim": dim, "levels": list(levels), "kmeans_s": round(t1 - t0, 3),
                    "sampling_s": round(t2 - t1, 3)})
        print("k-means", out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/eofm-curation-bench")
    ap.add_argument("--every", type=int, default=1000, help="steps between rounds, for the overhead figure")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps")
    ap.add_argument("--kmeans-sizes", default="2000,8000,32000,128000")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    import prep_throughput as pt
    from loader_throughput import prepare
    from pretrain.config import CurationSpec
    from pretrain.curation.curator import Curator
    from pretrain.data.webdataset import make_loader, normalize_batch
    from pretrain.models import build_backbone
    from pretrain.objectives import build_objective

    torch.set_num_threads(1)
    work = Path(args.workdir)
    ds = work / "s2_64"
    if not (ds / "manifest.json").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        prepare(pt.mosaic_products(work / "src", 2), ds, 64, "webdataset")
    total = sum(r["samples"] for r in json.loads((ds / "manifest.json").read_text())["shards"])

    torch.manual_seed(0)
    backbone = build_backbone("vit", "small", patch_size=8)
    model = build_objective("mae", backbone, mask_ratio=0.75, decoder_dim=128, decoder_depth=2, decoder_heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = iter(make_loader(str(ds), 32, 0, 1, seed=0, num_workers=0, shuffle_buffer=64))
    batches = [normalize_batch(b) for b in itertools.islice(it, args.steps + 2)]

    def step(b):
        loss = model(b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for b in batches[:2]:                                   # warm-up
        step(b)
    t0 = time.perf_counter()
    for b in batches[2:]:
        step(b)
    t_step = (time.perf_counter() - t0) / args.steps

    spec = CurationSpec(mode="kmeans", warmup_steps=0, every_steps=args.every, keep_fraction=0.5,
                        levels=[100, 10], embed_batch_size=64)
    cur = Curator(spec, str(ds), total, seed=0, out_dir=work / "report")
    t0 = time.perf_counter()
    report = cur.run(backbone, step=0, rank=0, world=1, device=torch.device("cpu"), dtype=torch.float32)
    t_round = time.perf_counter() - t0
    result = {
        "dataset_samples": total, "model": "ViT-S/8 MAE, 64x64x12, batch 32, CPU 1 thread",
        "t_step_s": round(t_step, 3), "train_s_per_sample": round(t_step / 32, 5),
        "t_round_s": round(t_round, 2), "embed_s": report["seconds_embed"], "cluster_s": report["seconds_cluster"],
        "embed_s_per_sample": round(report["seconds_embed"] / total, 5),
        "every_steps": args.every,
        "overhead_fraction": round(t_round / (args.every * t_step), 4),
        "kmeans_scaling": kmeans_scaling([int(n) for n in args.kmeans_sizes.split(",")]),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

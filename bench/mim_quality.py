"""Quality check of the two MIM objectives on real Sentinel-2 chips: both losses must fall steadily.

  python bench/mim_quality.py [--steps 200] [--out runs/mim_quality] [--figure docs/mim_quality.png]

Prepares configs/prep/real_s2.yaml with 32 px chips (the Major-TOM and SSL4EO-S12 L2A products in
../shared/data/real -> 32 px chips at 10 m, 12 bands) unless --data exists, then runs
`eofm-pretrain` (the real CLI: DeepSpeed, loader, checkpoints, plots) with
configs/pretrain/real_s2.yaml (MAE) and configs/pretrain/selective_mae_real_s2.yaml, with the
same overrides for both: 4 px patches (64 tokens, as in the quickstart), batch 16, 30 warm-up
steps, a shuffle buffer holding the whole set (i.i.d. batches). Same tiny backbone (ViT-tiny
width, 4 blocks), lr schedule and steps. Each run folder gets training.png and
reconstructions.png; this script prints first/last logged loss (means over 10 steps) and draws
both loss curves into one figure.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {"mae": "configs/pretrain/real_s2.yaml", "selective_mae": "configs/pretrain/selective_mae_real_s2.yaml"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--data", default="runs/real_s2_32/data")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shuffle-buffer", type=int, default=2400,
                    help="the whole 2306-chip set: shards hold chips product by product, and a small buffer "
                         "gives batches from one product for long stretches (the loss then tracks the product)")
    ap.add_argument("--out", default="runs/mim_quality")
    ap.add_argument("--figure", default="docs/mim_quality.png")
    args = ap.parse_args(argv)

    from pretrain.plots import _plt, read_metrics

    if not (ROOT / args.data / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep", "run", "configs/prep/real_s2.yaml",
                        f"output.path={args.data}", "chips.size=32", "chips.stride=32"], cwd=ROOT, check=True)
    summary = {}
    for name, config in RUNS.items():
        out = Path(args.out) / name
        subprocess.run([sys.executable, "-m", "pretrain", config, f"data.path={args.data}", f"train.out={out}",
                        f"train.steps={args.steps}", "train.log_every=10", "model.patch_size=4",
                        f"data.batch_size={args.batch}", f"data.shuffle_buffer={args.shuffle_buffer}", "optim.warmup_steps=30", f"train.checkpoint_every={args.steps}",
                        "train.resume=false", "train.progress=false"], cwd=ROOT, check=True)
        recs = read_metrics(ROOT / out)
        losses = [r["loss"] for r in recs]
        summary[name] = {"steps": [r["step"] for r in recs], "loss": losses, "first": losses[0], "last": losses[-1],
                         "samples_per_s": sorted(r["samples_per_s"] for r in recs)[len(recs) // 2]}
        print(f"{name}: loss {losses[0]:.4f} (steps 1-10) -> {losses[-1]:.4f} (last 10 of {args.steps}); "
              f"median {summary[name]['samples_per_s']:.1f} samples/s", flush=True)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, s in summary.items():
        ax.plot(s["steps"], s["loss"], label=name)
    ax.set(title=f"real Sentinel-2 32 px chips, ViT-tiny/4 x4 blocks, batch {args.batch}", xlabel="step",
           ylabel="norm-pix loss (10-step means)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / args.figure, dpi=100)
    (ROOT / args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()

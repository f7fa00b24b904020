"""Figures people would rather look at than read: loss curves and MAE reconstructions."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

RGB_WAVELENGTHS = (664.6, 559.8, 492.4)  # S2 B04, B03, B02


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl -> records, keeping the last record for each step (resumed runs re-log)."""
    by_step: dict[int, dict] = {}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is this a pretraining run folder?)")
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def plot_run(run_dir: str | Path) -> Path:
    """Loss, learning rate and throughput (samples/s, tokens/s) vs step -> run_dir/training.png."""
    plt = _plt()
    recs = read_metrics(run_dir)
    steps = [r["step"] for r in recs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r["loss"] for r in recs], color="tab:blue")
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    axes[1].plot(steps, [r["lr"] for r in recs], color="tab:orange")
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot(steps, [r["samples_per_s"] for r in recs], color="tab:green")
    axes[2].set(title="throughput (all ranks)", xlabel="step", ylabel="samples / s")
    if all("tokens_per_s" in r for r in recs):        # older runs lack it
        twin = axes[2].twinx()
        twin.plot(steps, [r["tokens_per_s"] for r in recs], color="tab:purple", alpha=0.6, lw=0.8)
        twin.set_ylabel("input tokens / s", color="tab:purple")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / "training.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _rgb(img: np.ndarray, wavelengths: np.ndarray, lo_hi: tuple | None = None) -> tuple[np.ndarray, tuple]:
    """(C,H,W) normalised -> ((H,W,3) in [0,1], (lo, hi)): bands nearest to red/green/blue,
    2-98% stretch (computed here unless given, so several panels can share one stretch)."""
    idx = [int(np.argmin(np.abs(wavelengths - w))) for w in RGB_WAVELENGTHS]
    rgb = np.stack([img[i] for i in idx], -1).astype(np.float32)
    lo, hi = lo_hi if lo_hi is not None else (np.percentile(rgb, 2), np.percentile(rgb, 98))
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1), (lo, hi)


@torch.no_grad()
def plot_reconstructions(objective, batch: dict, path: str | Path, device, dtype, n: int = 4) -> Path | None:
    """Input / masked input / reconstruction for a few chips (objectives with `reconstruct`)."""
    if not hasattr(objective, "reconstruct"):
        return None
    from pretrain.engine import to_device

    plt = _plt()
    was_training = objective.training
    objective.eval()
    small = {k: (v[:n] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
    rec = objective.reconstruct(to_device(small, device, dtype))
    objective.train(was_training)
    image, pred, mask = (rec[k].float().cpu().numpy() for k in ("image", "pred_image", "mask"))
    wl = small["wavelengths_nm"][0].float().cpu().numpy()
    # SelectiveMAE: only some masked patches are loss targets; show them as a fourth panel
    targets = rec["target_mask"].cpu().numpy() if "target_mask" in rec else None
    titles = ("input", "visible to encoder", "reconstruction") + (() if targets is None else ("loss targets",))
    rows = min(n, image.shape[0])
    fig, axes = plt.subplots(rows, len(titles), figsize=(2.5 * len(titles), 2.5 * rows), squeeze=False)
    for r in range(rows):
        rgb_in, stretch = _rgb(image[r], wl)
        masked = mask[r][..., None]
        panels = (rgb_in, np.where(masked, 0.5, rgb_in), np.where(masked, _rgb(pred[r], wl, stretch)[0], rgb_in))
        if targets is not None:
            panels += (np.where(targets[r][..., None], rgb_in, 0.5),)
        for ax, im, title in zip(axes[r], panels, titles):
            ax.imshow(im)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

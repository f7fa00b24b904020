"""Outputs of a fine-tuning run: metrics.json, confusion_<protocol>.png (classification and
segmentation), config.yaml, a text table."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def confusion_figure(confusion, classes, title: str, path: str) -> None:
    """Save a confusion matrix (K, K) (rows true, columns predicted) as a PNG.
    Colours are row-normalised (recall per true class) so rare classes stay readable;
    cells show the raw counts."""
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(classes)
    side = min(1.6 * k + 2.5, 16.0)  # 19 BigEarthNet classes still fit a page
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=9 if k <= 10 else 6,
                    color="white" if frac[i, j] > 0.5 else "black")
    names = [c if len(c) <= 24 else c[:22] + "…" for c in classes]
    ax.set_xticks(range(k), [c.replace("_", "\n") for c in names], rotation=90 if k > 6 else 0)
    ax.set_yticks(range(k), [c.replace("_", "\n") for c in names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg, report: dict) -> Path:
    """Write config.yaml, metrics.json and, for classification / segmentation, one confusion
    figure per protocol (all training labels, first seed) into cfg.output.path."""
    from data_prep.recipe import save_recipe

    out = Path(cfg.output.path)
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(cfg, out)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "metrics.json")  # atomic: a metrics.json present is complete
    classes = report["label_source"]["classes"]
    for name, r in report["protocols"].items():
        if "confusion" not in r:
            continue
        score = (f"accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f}" if report["task"] == "classification"
                 else f"mIoU {r['miou']:.3f}, pixel accuracy {r['accuracy']:.3f}")
        title = (f"{name}: {score} (n_test={r['n_test']})\nlabels: {report['label_source']['name']}"
                 + (" (pipeline check, not a benchmark)" if report["label_source"].get("note") else ""))
        confusion_figure(r["confusion"], classes, title, str(out / f"confusion_{name}.png"))
    return out


COLUMNS = (("pretrained", "pretrained"), ("random_init", "random init"), ("input_stats", "input stats"))


def _cell(stats: dict | None) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:.3f} +- {stats['std']:.3f}" if stats["n"] > 1 else f"{stats['mean']:.3f}"


def table(report: dict) -> str:
    """Text table from report["comparison"]: one line per protocol x label fraction x headline
    metric, with the pretrained encoder, its random-init twin and the input-statistics baseline
    side by side (mean +- std over label seeds x repeated splits), n_train/n_test of the first
    run and the pretrained run's seconds; a footer says what the spread is over."""
    from finetune.train import HEADLINE

    metrics = HEADLINE[report["task"]]
    lines = [f"{'protocol':<14} {'labels':>6} {'metric':<9} " + " ".join(f"{t:>15}" for _, t in COLUMNS)
             + f" {'train/test':>11} {'time':>7}"]
    firsts = {(r["protocol"], str(r["label_fraction"])): r for r in reversed(report["runs"])}
    for name, by_fraction in report["comparison"].items():
        for fraction, cols in by_fraction.items():
            r = firsts[(name, fraction)]
            for i, m in enumerate(metrics):
                head = f"{name:<14} {float(fraction):>6.0%}" if i == 0 else " " * 21
                tail = f" {r['n_train']:>5}/{r['n_test']:<5} {r['seconds']:>6.1f}s" if i == 0 else ""
                lines.append(f"{head} {m:<9} " + " ".join(f"{_cell(cols.get(k) and cols[k][m]):>15}"
                                                          for k, _ in COLUMNS) + tail)
    n_seeds, repeats = len(report["label_seeds"]), report.get("repeats", 1)
    lines.append(f"mean +- std over {n_seeds * repeats} runs ({repeats} split{'s' * (repeats > 1)} x {n_seeds} "
                 f"label seed{'s' * (n_seeds > 1)}); input stats: a linear model on "
                 + ("per-band mean and std of each image" if report["task"] in ("classification", "multilabel")
                    else "each pixel's bands") + ", the same on every line")
    return "\n".join(lines)

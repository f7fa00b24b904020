"""The figure of one curation round: cluster sizes against what was kept, and the make-up of
the kept set (sensor, land cover, region) before and after the round."""
from __future__ import annotations

from pathlib import Path


def plot_round(report: dict, path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = list(report.get("makeup", {}))
    fig, axes = plt.subplots(1, 1 + len(fields), figsize=(5 * (1 + len(fields)), 3.6), squeeze=False)
    ax = axes[0, 0]
    sizes, kept = report["top_cluster_sizes"], report["top_cluster_kept"]
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    x = range(len(order))
    ax.bar(x, [sizes[i] for i in order], color="#c8d3e0", label="embedded")
    ax.bar(x, [kept[i] for i in order], color="#2b6cb0", label="kept")
    ax.set_xlabel("top-level cluster (by size)")
    ax.set_ylabel("samples")
    ax.set_title(f"round {report['round']} at step {report['step']}: kept {report['kept']} of {report['dataset_samples']}")
    ax.legend()
    for ax, field in zip(axes[0, 1:], fields):
        m = report["makeup"][field]
        cats = sorted(m["embedded"], key=lambda c: -m["embedded"][c])[:12]
        tot = {k: max(1, sum(v.values())) for k, v in m.items()}
        w = 0.28
        for j, (name, color) in enumerate((("embedded", "#c8d3e0"), ("kept_before", "#90a4c0"), ("kept_now", "#2b6cb0"))):
            ax.bar([i + (j - 1) * w for i in range(len(cats))], [m[name].get(c, 0) / tot[name] for c in cats],
                   width=w, color=color, label=name.replace("_", " "))
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share")
        ax.set_title(f"make-up by {field}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)

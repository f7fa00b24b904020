"""Dense heads against a per-pixel linear model of the bands, on a real segmentation task
(issue 15, item 5).

Task: cloud / cloud-shadow / clear segmentation of a real Sentinel-2 L1C scene, the test scene of
ukis-csmask (DLR, Apache-2.0; ../shared/data/real/more_S2/ukis_csmask/sentinel2.npz): 512x512
pixels of top-of-atmosphere reflectance in 6 bands (B02, B03, B04, B08, B11, B12, ~30 m) with
its reference mask (the `y_true` of ukis-csmask's own tests). Mask values, checked against the
mean spectra: 4 = cloud (bright in every band), 0 = cloud shadow (dark in every band), 1 and 3 =
clear (water-like and land) -> classes clear / cloud / cloud_shadow (70 / 19 / 11 % of pixels).
A per-pixel linear model gets cloud from brightness but confuses shadow with dark clear ground;
shadow is defined by its cloud nearby, so spatial context can help and the task is not
saturated.

Layout written for `eofm-finetune` (data.format=folder): the scene cut into 16 blocks of
128x128 (images/r<i>c<j>.tif + labels/r<i>c<j>.tif), tiled to 32x32 chips by data.tile=32.
Repeated spatial splits: split s puts 4 of the 16 blocks (random, seed s) in test, the other
12 in train (splits/split_<s>.csv); normalisation from each split's training blocks.

Compared on every split, for the pretrained export and for a random-init twin of it:
  pixel logreg      multinomial logistic regression on the normalised bands of each pixel, full
                    batch L-BFGS to convergence (no encoder)
  input_stats       eofm-finetune's dense input-statistics baseline (the same model, its code)
  linear_probe new  frozen last-block token map + each pixel's bands -> linear (the default)
  linear_probe old  the same with linear_probe.pixel_path=false: token map only, upsampled
  <head> new        finetune protocol, dense head with the full-resolution pixel path and the
                    per-pixel linear start (the defaults)
  <head> old        the same with finetune.pixel_path=false: token maps only, upsampled
  <head> new-noinit pixel path trained from scratch (finetune.pixel_init=false; --variants)
Reported: test mIoU, its paired difference to pixel logreg on the same split, cloud-shadow IoU
and pixel accuracy, mean +- std over splits.

  python bench/dense_eval.py --export /tmp/dense_export [--splits 3] [--epochs 10]
         [--heads linear light] [--out runs/dense_eval] [--json docs/bench_dense.json]
  python bench/dense_eval.py --summarise docs/bench_dense.json     # the table of a saved run
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune.backbone import load_backbone, random_backbone  # noqa: E402
from finetune.config import DataSpec, FinetuneConfig, FinetuneSpec, FolderSpec, ModelSpec  # noqa: E402
from finetune.datasets import IGNORE  # noqa: E402
from finetune.baselines import input_features  # noqa: E402
from finetune.config import LinearProbeSpec  # noqa: E402
from finetune.train import evaluate, extract_features, finetune, linear_probe, load  # noqa: E402

UKIS = ROOT.parent / "shared/data/real/more_S2/ukis_csmask/sentinel2.npz"
BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
CLASSES = ["clear", "cloud", "cloud_shadow"]
MASK_TO_CLASS = {0: 2, 1: 0, 2: 0, 3: 0, 4: 1}   # ukis-csmask reference values -> CLASSES
BLOCK = 128


def build_dataset(out: Path, src: Path = UKIS) -> Path:
    """The folder layout (images/, labels/) of the 16 blocks of the scene; returns `out`."""
    import rasterio
    from rasterio.transform import from_origin

    z = np.load(src)
    img, msk = z["img"].astype(np.float32), z["msk"][..., 0]
    lab = np.full(msk.shape, 255, np.uint8)
    for v, c in MASK_TO_CLASS.items():
        lab[msk == v] = c
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    n = img.shape[0] // BLOCK
    for i in range(n):
        for j in range(n):
            win = np.s_[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            # A made-up local grid (30 m pixels, the blocks in place): the npz has no georeferencing.
            tr = from_origin(j * BLOCK * 30.0, 1e6 - i * BLOCK * 30.0, 30.0, 30.0)
            prof = dict(driver="GTiff", height=BLOCK, width=BLOCK, transform=tr)
            with rasterio.open(out / "images" / f"r{i}c{j}.tif", "w", count=len(BANDS), dtype="float32",
                               **prof) as ds:
                ds.write(np.moveaxis(img[win], -1, 0))
                ds.descriptions = tuple(BANDS)
            with rasterio.open(out / "labels" / f"r{i}c{j}.tif", "w", count=1, dtype="uint8", nodata=255,
                               **prof) as ds:
                ds.write(lab[win][None])
    return out


def write_split(root: Path, seed: int, n_test: int = 4) -> Path:
    """splits/split_<seed>.csv: `n_test` random blocks (of the 16) test, the rest train."""
    ids = sorted(p.stem for p in (root / "images").glob("*.tif"))
    test = set(np.random.default_rng(seed).choice(ids, n_test, replace=False).tolist())
    path = root / "splits" / f"split_{seed}.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text("id,split\n" + "".join(f"{i},{'test' if i in test else 'train'}\n" for i in ids))
    return path


def pixel_linear(task, train_idx: np.ndarray, seed: int, steps: int = 200) -> np.ndarray:
    """Multinomial logistic regression on the normalised bands of every labelled training pixel
    (full-batch L-BFGS, light L2); returns test label maps (N_test, H, W)."""
    torch.manual_seed(seed)
    x = torch.from_numpy(task.images[train_idx]).permute(0, 2, 3, 1).reshape(-1, task.images.shape[1])
    y = torch.from_numpy(task.targets[train_idx]).reshape(-1)
    keep = y != IGNORE
    x, y = x[keep], y[keep]
    lin = torch.nn.Linear(x.shape[1], len(task.classes))
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + 1e-4 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        t = torch.from_numpy(task.images[task.test_idx]).permute(0, 2, 3, 1)
        return lin(t).argmax(-1).numpy()


def config(root: Path, split_file: Path, export: str) -> FinetuneConfig:
    return FinetuneConfig(
        model=ModelSpec(export=export),
        data=DataSpec(format="folder", path=str(root), task="segmentation", tile=32, split="file",
                      split_file=str(split_file), normalization="train",
                      folder=FolderSpec(bands=BANDS, classes=CLASSES, units="reflectance")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", default="", help="eofm-export folder")
    ap.add_argument("--out", default="runs/dense_eval")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--heads", nargs="+", default=["linear", "light"], help="fine-tuned dense heads")
    ap.add_argument("--protocols", nargs="+", default=["probe", "finetune"], choices=["probe", "finetune"])
    ap.add_argument("--no-random", action="store_true", help="skip the random-init encoder")
    ap.add_argument("--variants", nargs="+", default=["new", "old"], choices=["new", "old", "new-noinit"],
                    help="new: pixel path + per-pixel linear start; new-noinit: pixel path from scratch; "
                         "old: token maps only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--summarise", default="", metavar="JSON", help="only print the table of a saved --json")
    args = ap.parse_args()
    if args.summarise:
        summarise(json.loads(Path(args.summarise).read_text())["runs"])
        return
    torch.set_num_threads(args.threads)

    root = build_dataset(Path(args.out) / "data")
    export, export_cfg = load_backbone(args.export)
    encoders = {"pretrained": export}
    if not args.no_random:
        encoders["random init"] = random_backbone(export_cfg, seed=0)
    runs = []

    def record(split, encoder, protocol, out, task, seconds):
        m = evaluate(task, out)
        runs.append({"split": split, "encoder": encoder, "protocol": protocol, "miou": m["miou"],
                     "accuracy": m["accuracy"], "per_class_iou": {k: v["iou"] for k, v in m["per_class"].items()},
                     "seconds": round(seconds, 1)})
        print(f"split {split}  {encoder:12s} {protocol:16s} mIoU {m['miou']:.3f}  acc {m['accuracy']:.3f}  "
              f"({seconds:.0f} s)", flush=True)

    for s in range(args.splits):
        task = load(config(root, write_split(root, s), args.export), export_cfg)
        t = time.time()
        record(s, "-", "pixel logreg", pixel_linear(task, task.train_idx, s), task, time.time() - t)
        t = time.time()
        record(s, "-", "input_stats", linear_probe(input_features(task), task, task.train_idx, LinearProbeSpec(), s)[0],
               task, time.time() - t)
        if "probe" in args.protocols:
            for tag, enc in encoders.items():
                feats = extract_features(enc, task, np.arange(len(task.keys)), dense=True)
                for variant in ("new", "old"):
                    t = time.time()
                    out, _ = linear_probe(feats, task, task.train_idx, LinearProbeSpec(pixel_path=variant == "new"), s)
                    record(s, tag, f"linear_probe {variant}", out, task, time.time() - t)
        for head in (args.heads if "finetune" in args.protocols else []):
            for tag, enc in encoders.items():
                for variant in args.variants:
                    spec = FinetuneSpec(epochs=args.epochs, lr=args.lr, head=head, pixel_path=variant != "old",
                                        pixel_init=variant == "new")
                    t = time.time()
                    out = finetune(copy.deepcopy(enc), task, task.train_idx, spec, seed=s)
                    record(s, tag, f"{head} {variant}", out, task, time.time() - t)

    rows = summarise(runs)
    print(f"\n{len(task.train_idx)} train / {len(task.test_idx)} test chips of 32x32 per split, "
          f"{args.splits} splits, finetune {args.epochs} epochs\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "summary": rows, "runs": runs}, indent=1,
                                              default=float) + "\n")


def summarise(runs: list[dict]) -> list[dict]:
    """Mean +- std over splits per (protocol, encoder): mIoU, its paired difference to the
    per-pixel logistic regression of the same split, cloud-shadow IoU, pixel accuracy; printed
    as a markdown table."""
    base = {r["split"]: r["miou"] for r in runs if r["protocol"] == "pixel logreg"}
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["protocol"], r["encoder"]), []).append(r)
    print("| protocol | encoder | mIoU | mIoU − per-pixel logreg (paired) | cloud-shadow IoU | pixel accuracy |")
    print("|---|---|---|---|---|---|")
    rows = []
    for (protocol, enc), rs in groups.items():
        mi = np.array([r["miou"] for r in rs])
        d = np.array([r["miou"] - base[r["split"]] for r in rs])
        sh = np.array([r["per_class_iou"]["cloud_shadow"] for r in rs])
        ac = np.array([r["accuracy"] for r in rs])
        rows.append({"protocol": protocol, "encoder": enc, "miou_mean": mi.mean(), "miou_std": mi.std(),
                     "delta_mean": d.mean(), "delta_std": d.std(), "delta_min": d.min(), "shadow_iou_mean": sh.mean(),
                     "shadow_iou_std": sh.std(), "accuracy_mean": ac.mean(), "accuracy_std": ac.std(), "n": len(rs)})
        print(f"| {protocol} | {enc} | {mi.mean():.3f} ± {mi.std():.3f} | {d.mean():+.3f} ± {d.std():.3f} | "
              f"{sh.mean():.3f} ± {sh.std():.3f} | {ac.mean():.3f} ± {ac.std():.3f} |")
    return rows


if __name__ == "__main__":
    main()

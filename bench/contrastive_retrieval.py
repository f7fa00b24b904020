"""Do the contrastive objectives learn what they should? Two dates of one place should embed
closer than two places; SoftCon should group scenes by land cover. Measured on held-out places,
against the same encoder at random init and raw pixels.

Data:
  fixture  `seasonal_places` (tests/pretrain/contrastive_helpers.py): places with their own
           layout of 4 land-cover classes whose 12-band spectra change from date to date (the
           same change everywhere). 2048 pretraining places, 128 UNSEEN places for the test: a
           case where season invariance can be learned and must generalise.
  real     the bundled SSL4EO-S12 location 0000200 (L2A, 2020-06-04 and 2020-08-13), 16-px chips
           (256 places, 2 dates) by configs/prep/ssl4eo_softcon.yaml with derived land cover.
           The western half pretrains ("seen" places, other date); the eastern half is held out.
           One 2.6 x 2.6 km scene is all there is, so the held-out half measures generalisation
           from ~1.3 km2 of farmland.

Metrics on the encoder's mean-pooled tokens (what fine-tuning uses), date 1 vs date 2:
  top1      the other date of the same place is the nearest of all places (both ways, averaged;
            chance 1/places);
  pair_acc  share of pairs (i, j != i) with cos(a_i, b_i) > cos(a_i, b_j) (chance 0.5);
  lc_nn     land-cover cosine between a scene and its nearest other scene (chance: lc_random,
            the mean over all pairs).

  python bench/contrastive_retrieval.py [--steps 1000] [--json docs/bench_contrastive.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.engine import lr_multiplier  # noqa: E402
from pretrain.models import build_backbone  # noqa: E402
from pretrain.objectives import build_objective  # noqa: E402
from tests.conftest import SSL4EO_S2A  # noqa: E402
from tests.pretrain.contrastive_helpers import (chip_column, date_embeddings, derived_landcover,  # noqa: E402
                                                 load_all, neighbour_label_similarity, pair_accuracy, retrieval_top1,
                                                 seasonal_places, take)

# Light views and a fast teacher: 16-px chips and a thousand CPU steps cannot learn rotation
# invariance or follow a 0.99+ momentum teacher (with the defaults — crop 0.2-1, flips and
# rotations, momentum 0.99 -> 1 — the loss on the real chips stayed at chance after 200 steps).
BENCH_SETTINGS = dict(proj_hidden_dim=128, proj_dim=64, crop_scale=[0.7, 1.0], flips=False,
                      ema_momentum=0.9, ema_momentum_end=0.9)

METHODS = {
    "season_contrastive (SeCo subspaces)": ("season_contrastive", {"mode": "subspaces", "negatives": "batch"}),
    "season_contrastive (season-invariant)": ("season_contrastive", {"mode": "season_invariant",
                                                                     "negatives": "batch"}),
    "soft_contrastive (SoftCon)": ("soft_contrastive", {}),
}


def prepare(out: Path, chip: int) -> Path:
    lc = derived_landcover(sorted(p for p in SSL4EO_S2A.iterdir() if p.is_dir()), out / "landcover_derived.tif")
    data = out / f"data{chip}"
    subprocess.run([sys.executable, "-m", "data_prep", "run", "configs/prep/ssl4eo_softcon.yaml",
                    f"output.path={data}", f"landcover.path={lc}", f"chips.size={chip}", f"chips.stride={chip}",
                    "--quiet"], cwd=ROOT, check=True)
    return data


def encoder(seed: int, args) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone("vit", "tiny", embed_dim=args.dim, num_heads=4, depth=args.depth, patch_size=args.patch)


def evaluate(backbone, batch: dict) -> dict:
    """Season retrieval and land-cover grouping of a set of places (module docstring)."""
    return scores(*date_embeddings(backbone, batch), batch["landcover"])


def scores(a: torch.Tensor, b: torch.Tensor, landcover: torch.Tensor) -> dict:
    return {"top1": round(0.5 * (retrieval_top1(a, b) + retrieval_top1(b, a)), 4),
            "pair_acc": round(0.5 * (pair_accuracy(a, b) + pair_accuracy(b, a)), 4),
            "lc_nn": round(neighbour_label_similarity(a, landcover), 4)}


def train(name: str, kw: dict, data: dict, args) -> tuple[torch.nn.Module, list[float], float]:
    obj = build_objective(name, encoder(args.seed, args), **{**BENCH_SETTINGS, **kw}).train()
    params = [p for p in obj.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, args.steps, 20, 0.01))
    n = data["image"].shape[0]
    losses, t0 = [], time.perf_counter()
    for step in range(args.steps):
        obj.set_progress(step, args.steps)         # what train.py calls: EMA teacher update
        out = obj(take(data, torch.randperm(n)[:args.batch]))
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(out["loss"].detach()))
    return obj.backbone, losses, time.perf_counter() - t0


def datasets(args) -> dict:
    """name -> (pretraining places, held-out places)."""
    out = {}
    if args.only in (None, "fixture"):
        out["fixture"] = (seasonal_places(2048, seed=0), seasonal_places(128, seed=1))
    if args.only == "fixture":
        return out
    data = load_all(prepare(ROOT / args.out, args.chip))
    cols = sorted({chip_column(k) for k in data["key"]})
    west = [i for i, k in enumerate(data["key"]) if chip_column(k) in cols[:len(cols) // 2]]
    east = [i for i in range(len(data["key"])) if i not in set(west)]
    out["real"] = (take(data, west), take(data, east))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_contrastive")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--chip", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["fixture", "real"], default=None)
    p.add_argument("--json", default="")
    args = p.parse_args()
    torch.set_num_threads(2)
    result = {"command": "python " + " ".join(sys.argv), "steps": args.steps, "batch": args.batch,
              "encoder": f"ViT dim {args.dim} depth {args.depth} patch {args.patch}", "chip_px": args.chip,
              "settings": BENCH_SETTINGS, "data": {}}
    for name, (train_set, test_set) in datasets(args).items():
        x, lc = test_set["image"], test_set["landcover"]
        y = torch.nn.functional.normalize(lc.float(), dim=1)
        off_diag = ~torch.eye(len(y), dtype=torch.bool)
        entry = {"places": {"pretrain": len(train_set["key"]), "test": len(test_set["key"])},
                 "chance": {"top1": round(1 / len(x), 4), "pair_acc": 0.5,
                            "lc_random": round(float((y @ y.T)[off_diag].mean()), 4)},
                 "baselines_test": {"raw pixels": scores(x[:, 0].flatten(1), x[:, 1].flatten(1), lc),
                                    "random-init encoder": evaluate(encoder(args.seed, args), test_set)},
                 "methods": {}}
        seen = take(train_set, range(min(128, len(train_set["key"]))))
        entry["baselines_seen_places"] = {"random-init encoder": evaluate(encoder(args.seed, args), seen)}
        print(name, json.dumps(entry["chance"]), json.dumps(entry["baselines_test"]),
              json.dumps(entry["baselines_seen_places"]))
        for label, (objective, kw) in METHODS.items():
            backbone, losses, secs = train(objective, kw, train_set, args)
            entry["methods"][label] = {
                "test": evaluate(backbone, test_set), "seen_places": evaluate(backbone, seen),
                "loss_first50": round(sum(losses[:50]) / 50, 3), "loss_last50": round(sum(losses[-50:]) / 50, 3),
                "train_s": round(secs, 1)}
            print(name, label, json.dumps(entry["methods"][label]))
        result["data"][name] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

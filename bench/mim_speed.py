"""Training step time of SelectiveMAE versus MAE at the same backbone, batch and image size.

  python bench/mim_speed.py --size base --patch 16 --image 224 --batch 8 [--device cuda --precision bf16]
                            [--rounds 5 --steps 1 --warmup 1] [--threads 1] [--out docs/bench_mim.json]

One step = forward + backward + AdamW update of the whole objective (backbone + decoder), with
each objective's default recipe: MAE mask 0.75, 8-block self-attention decoder over all tokens;
SelectiveMAE mask 0.85, recon 0.25, 8-block cross-attention decoder over the targets only, plus
its per-step selection work (gradient score, similarity expansion; counted in its time). Both
decoders 512 wide with 16 heads, as in the papers. Synthetic smooth 12-band images (speed does
not depend on pixel values). The two objectives alternate within each round (order flipped every
round) and the ratio is of the medians of per-round mean step times, all in one process: the
machine is shared and noisy, ratios within one run are what to compare.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.models import build_backbone  # noqa: E402
from pretrain.objectives import build_objective  # noqa: E402

S2_NM = [442.7, 492.4, 559.8, 664.6, 704.1, 740.5, 782.8, 832.8, 864.7, 945.1, 1613.7, 2202.4]


def make_batch(b: int, size: int, device, dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    low = torch.randn(b, len(S2_NM), size // 8, size // 8, generator=g)
    image = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")
    image = image + 0.1 * torch.randn(image.shape, generator=g)
    return {"image": image[:, None].to(device, dtype), "valid": torch.ones(b, 1, size, size, dtype=torch.bool, device=device),
            "wavelengths_nm": torch.tensor(S2_NM).expand(b, -1).to(device), "gsd_m": torch.full((b,), 10.0, device=device),
            "key": [f"k{i}" for i in range(b)]}


def build(name: str, args, device, dtype):
    torch.manual_seed(0)
    bb = build_backbone("vit", args.size, patch_size=args.patch, **({"depth": args.depth} if args.depth else {}))
    obj = build_objective(name, bb, decoder_dim=args.decoder_dim, decoder_depth=args.decoder_depth, decoder_heads=16)
    obj = obj.to(device)
    if dtype != torch.float32:
        obj = obj.to(dtype)  # what a bf16 DeepSpeed engine does to the module
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    return obj, opt


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(obj, batch) -> float:
    """Forward + backward FLOPs of one step per sample (torch's FlopCounterMode: matmuls, convs,
    attention), a machine-independent view of the same comparison."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        obj(batch)["loss"].backward()
    obj.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch["image"].shape[0]


def run_steps(obj, opt, batch, n: int, device) -> float:
    """Mean seconds per optimizer step over n steps."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        loss = obj(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t0) / n


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="base", choices=["tiny", "small", "base", "large", "huge"])
    ap.add_argument("--depth", type=int, default=0, help="0 = the size's depth")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--image", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--decoder-dim", type=int, default=512)
    ap.add_argument("--decoder-depth", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1, help="steps per objective per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per objective first")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads (0 = torch's default). 1 is steadier on a shared machine: OpenMP "
                         "barriers of small ops stall for seconds when another process takes a core")
    ap.add_argument("--out", default="", help="append the result to this JSON list")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch = make_batch(args.batch, args.image, device, dtype)
    sides = {name: build(name, args, device, dtype) for name in ("mae", "selective_mae")}
    flops = {}
    for name, (obj, opt) in sides.items():
        obj.train()
        flops[name] = step_flops(obj, batch)
        run_steps(obj, opt, batch, args.warmup, device)
    print("GFLOP per sample per step: " + ", ".join(f"{n} {f / 1e9:.1f}" for n, f in flops.items()), flush=True)
    times = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            times[name].append(run_steps(*sides[name], batch, args.steps, device))
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f} s/step" for n in sides), flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    n_tok = (args.image // args.patch) ** 2
    result = {
        "what": "training step time, SelectiveMAE vs MAE",
        "size": args.size, "depth": sides["mae"][0].backbone.depth, "patch": args.patch, "image": args.image,
        "batch": args.batch, "bands": len(S2_NM), "tokens": n_tok, "decoder": [args.decoder_dim, args.decoder_depth],
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "precision": args.precision, "rounds": args.rounds, "steps_per_round": args.steps,
        "seconds_per_step": times, "median_seconds_per_step": med,
        "samples_per_s": {n: args.batch / t for n, t in med.items()},
        "speedup": med["mae"] / med["selective_mae"],
        "gflop_per_sample_step": {n: f / 1e9 for n, f in flops.items()},
        "flop_ratio": flops["mae"] / flops["selective_mae"],
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps({k: result[k] for k in ("size", "image", "batch", "device", "median_seconds_per_step", "speedup",
                                             "flop_ratio")}))
    if args.out:
        path = Path(args.out)
        runs = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(runs + [result], indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

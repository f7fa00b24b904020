"""MAE pretraining throughput and model FLOPs utilisation (MFU) through the real engine.

Builds the configured backbone + MAE objective, wraps it with the DeepSpeed engine exactly as
`eofm-pretrain` does (one process; run it under torchrun for several), and times optimizer steps
on synthetic batches of the given shape (the loader is benchmarked in bench/loader_throughput.py).
Model FLOPs per step are counted once with torch's FlopCounterMode (forward + backward of every
matmul/conv/attention, as executed: with the mask ratio, the encoder sees only visible tokens);
MFU = model FLOPs per second / the accelerator's peak dense FLOPs for the compute dtype.

  python bench/mfu.py --device cuda                          # ViT-B/16 MAE, 224 px, 12 bands, bf16
  python bench/mfu.py --device cuda --size large --batch 128 --peak-tflops 989
  python bench/mfu.py --device cpu --size tiny --depth 2 --image 64 --batch 8 --steps 3  # smoke run

Prints one JSON line (and writes it to --out when given): images_per_s, tokens_per_s,
tflops_per_s, mfu, step_ms, max_mem_gb, with the exact settings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# Peak dense tensor FLOPs per device (datasheets; bf16 = fp16 on these parts), for --peak-tflops auto.
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
               "L40S": 362.0, "A10G": 125.0, "V100": 125.0}


def _peak_tflops(device: torch.device, precision: str, given: float) -> float | None:
    if given > 0:
        return given
    if device.type != "cuda" or precision == "fp32":
        return None            # unknown: MFU needs --peak-tflops (e.g. a CPU's measured matmul peak)
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops
    return None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--size", default="base", help="ViT size preset (tiny/small/base/large/huge)")
    p.add_argument("--depth", type=int, default=0, help="0 = the size's depth")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--image", type=int, default=224, help="chip side in pixels")
    p.add_argument("--bands", type=int, default=12)
    p.add_argument("--batch", type=int, default=64, help="micro-batch per process")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--decoder-dim", type=int, default=512)
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"], help="default bf16 on cuda, fp32 on cpu")
    p.add_argument("--zero-stage", type=int, default=1)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak dense TFLOPs per device (0 = from the GPU name)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU visible (use --device cpu for a smoke run)")
    precision = a.precision or ("bf16" if a.device == "cuda" else "fp32")

    from data_prep.recipe import load_recipe
    from pretrain.config import PretrainConfig
    from pretrain.engine import build_engine, setup_distributed
    from pretrain.train import build_model

    cfg = load_recipe(PretrainConfig, None, [
        f"model.size={a.size}", f"model.depth={a.depth}", f"model.patch_size={a.patch}",
        f"objective.mask_ratio={a.mask_ratio}", f"objective.decoder_dim={a.decoder_dim}",
        f"objective.decoder_depth={a.decoder_depth}", f"engine.precision={precision}",
        f"engine.zero_stage={a.zero_stage}", f"engine.activation_checkpointing={str(a.activation_checkpointing).lower()}",
        f"data.batch_size={a.batch}", "optim.warmup_steps=1"])
    info = setup_distributed(cfg.engine.backend, cfg.engine.timeout_min)
    torch.manual_seed(0)
    engine, _ = build_engine(build_model(cfg), cfg.engine, cfg.optim, a.batch, a.warmup + a.steps + 1)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    dev = info.device
    wl = torch.linspace(443.0, 2190.0, a.bands)          # S2-like band centres
    batch = {"image": torch.randn(a.batch, 1, a.bands, a.image, a.image, device=dev).to(dtype),
             "valid": torch.ones(a.batch, 1, a.image, a.image, dtype=torch.bool, device=dev),
             "wavelengths_nm": wl.expand(a.batch, -1).to(dev), "gsd_m": torch.full((a.batch,), 10.0, device=dev),
             "times": torch.zeros(a.batch, 1, dtype=torch.float64, device=dev),
             "lonlat": torch.zeros(a.batch, 2, device=dev), "key": [str(i) for i in range(a.batch)],
             "sensor": "synthetic"}

    def step():
        loss = engine(batch)["loss"]
        engine.backward(loss)
        engine.step()
        return loss

    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:       # one step, counted (not timed)
        step()
    flops = counter.get_total_flops()
    for _ in range(a.warmup):
        step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sync()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    world = info.world
    tokens = (a.image // a.patch) ** 2
    peak = _peak_tflops(dev, precision, a.peak_tflops)
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "world": world, "size": a.size, "depth": engine.module.backbone.depth, "patch": a.patch, "image": a.image,
        "bands": a.bands, "batch_per_process": a.batch, "mask_ratio": a.mask_ratio, "precision": precision,
        "zero_stage": a.zero_stage, "activation_checkpointing": a.activation_checkpointing,
        "step_ms": dt * 1e3, "images_per_s": a.batch * world / dt, "tokens_per_s": a.batch * world * tokens / dt,
        "model_gflops_per_step_per_process": flops / 1e9, "tflops_per_s_per_process": flops / dt / 1e12,
        "peak_tflops": peak, "mfu": (flops / dt / 1e12) / peak if peak else None,
        "max_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        "final_loss": float(loss.detach()), "torch": torch.__version__,
    }
    if info.rank == 0:
        print(json.dumps(result))
        if a.out:
            a.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()

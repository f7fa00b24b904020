"""eofm-export: pretraining checkpoint -> self-describing encoder folder.

  eofm-export CHECKPOINT_DIR OUT_DIR

CHECKPOINT_DIR is a run folder (holding checkpoints/), a checkpoints folder (holding
`latest`), or one tag folder inside it. Works for every ZeRO stage and world size: the
fp32 weights are gathered from DeepSpeed's shards. OUT_DIR receives
  model.safetensors   encoder weights only (ViT key names)
  config.json         architecture, bands and wavelengths, normalisation statistics,
                      objective, steps, hash of the training data's manifest
  README.md           a model card: what it was trained on and how to load it
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from data_prep.jsondoc import parse_versioned

FORMAT = "eofm-export"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """A checkpoint cannot be exported, or a folder is not an eofm export."""


def _locate(path: Path) -> tuple[Path, str]:
    """-> (checkpoints folder, tag)."""
    for candidate in (path / "checkpoints", path):
        if (candidate / "latest").is_file():
            return candidate, (candidate / "latest").read_text().strip()
    if list(path.glob("*model_states.pt")):
        return path.parent, path.name
    raise ExportError(f"{path}: no DeepSpeed checkpoint here (expected checkpoints/latest, latest, or a tag folder)")


def _load_states(ckpt_dir: Path, tag: str) -> tuple[dict, dict]:
    """-> (full fp32 state dict of the objective module, client state)."""
    tag_dir = ckpt_dir / tag
    model_files = sorted(tag_dir.glob("*model_states.pt"))
    if not model_files:
        raise ExportError(f"{tag_dir}: no *model_states.pt files")
    client = torch.load(model_files[0], map_location="cpu", weights_only=False)  # our own checkpoint
    if list(tag_dir.glob("*optim_states.pt")) and client.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:
        state = client["module"]
    return {k: v.float() for k, v in state.items()}, client


def export(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    ckpt_dir, tag = _locate(Path(checkpoint))
    state, client = _load_states(ckpt_dir, tag)
    if "arch_args" not in client:
        raise ExportError(f"{ckpt_dir}/{tag}: not an eofm pretraining checkpoint (no arch_args in its state)")
    encoder = {k[len("backbone."):]: v.contiguous() for k, v in state.items() if k.startswith("backbone.")}
    if not encoder:
        raise ExportError(f"{ckpt_dir}/{tag}: no backbone.* weights in the checkpoint")
    cfg = client["config"]
    norm = client["normalization"]
    sensor = next(iter(norm))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": "eofm_vit",
        "arch": cfg["model"]["arch"],
        "model_args": client["arch_args"],
        "patch_size": client["arch_args"]["patch_size"],
        "embed_dim": client["arch_args"]["embed_dim"],
        "num_features": client["arch_args"]["embed_dim"],
        "sensor": sensor,
        "bands": norm[sensor]["bands"],
        "wavelengths_nm": norm[sensor]["wavelengths_nm"],
        "gsd_m": norm[sensor]["gsd_m"],
        "normalization": norm,
        "input": "physical units (e.g. surface reflectance) -> (x - mean) / std per band; invalid pixels 0",
        "objective": cfg["objective"]["name"],
        "objective_args": {k: v for k, v in cfg["objective"].items() if k != "name"},
        "steps": client["step"],
        "samples_seen": client["samples_seen"],
        "data": cfg["data"]["path"],
        "data_manifest_sha256": client["manifest_sha256"],
        "checkpoint": f"{ckpt_dir}/{tag}",
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, write in (("model.safetensors", lambda p: save_file(encoder, str(p), metadata={"format": FORMAT})),
                        ("config.json", lambda p: p.write_text(json.dumps(config, indent=1))),
                        ("README.md", lambda p: p.write_text(model_card(config)))):
        tmp = out / (name + ".tmp")
        write(tmp)
        os.replace(tmp, out / name)
    return out


def model_card(c: dict) -> str:
    norm = c["normalization"][c["sensor"]]
    rows = "\n".join(f"| {b} | {w:.1f} | {m:.4f} | {s:.4f} |"
                     for b, w, m, s in zip(norm["bands"], norm["wavelengths_nm"], norm["mean"], norm["std"]))
    return f"""# eofm encoder ({c['arch']}, patch {c['patch_size']}, dim {c['embed_dim']})

Self-supervised `{c['objective']}` pretraining for {c['steps']} steps ({c['samples_seen']} samples)
on `{c['data']}` (manifest sha256 `{c['data_manifest_sha256'][:16]}…`), sensor `{c['sensor']}`.

## Load

```python
from pretrain.export import load_exported
encoder, config = load_exported("{'{'}this folder{'}'}")
feats = encoder.forward_features(image, wavelengths_nm, gsd_m)   # image (B, C, H, W) normalised
feats["pooled"]  # (B, {c['embed_dim']})
```

The patch embedding is generated from band centre wavelengths, so any band set can be fed
(pass its wavelengths); normalise each band with the statistics below first.

## Input normalisation ({norm['units']}, {c['gsd_m']} m)

| band | wavelength nm | mean | std |
|---|---|---|---|
{rows}

Invalid pixels (nodata, cloud) are set to 0 after normalisation.

## Training

Objective settings: `{json.dumps(c['objective_args'])}`. Checkpoint: `{c['checkpoint']}`.
"""


def load_exported(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """-> (ViT encoder in eval mode, config dict). Safe loading only (safetensors)."""
    from safetensors.torch import load_file

    from pretrain.models import BACKBONES

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ExportError(f"{folder}: not an eofm export (needs config.json and model.safetensors)")
    config = parse_versioned(cfg_path.read_text(), str(cfg_path), FORMAT, FORMAT_VERSION, ExportError)
    if config.get("arch") not in BACKBONES:
        raise ExportError(f"{cfg_path}: unknown architecture {config.get('arch')!r} (known: {', '.join(BACKBONES)})")
    model = BACKBONES[config["arch"]](**config["model_args"])
    model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    return model.to(device).eval(), config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eofm-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run folder, its checkpoints/ folder, or one checkpoint tag folder")
    p.add_argument("out", help="output folder for model.safetensors, config.json and README.md")
    args = p.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out)
    except ExportError as err:
        print(f"eofm-export: error: {err}", file=sys.stderr)
        return 2
    cfg = json.loads((out / "config.json").read_text())
    print(f"exported {cfg['arch']} (dim {cfg['embed_dim']}, patch {cfg['patch_size']}, {cfg['steps']} steps) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

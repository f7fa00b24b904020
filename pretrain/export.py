"""eofm-export: pretraining checkpoint -> self-describing encoder folder.

  eofm-export CHECKPOINT_DIR OUT_DIR [--timm-bands B02,B03,B04,B08 --timm-img-size 224]

CHECKPOINT_DIR is a run folder (holding checkpoints/), a checkpoints folder (holding
`latest`), or one tag folder inside it. Works for every ZeRO stage and world size: the
fp32 weights are gathered from DeepSpeed's shards. OUT_DIR receives
  model.safetensors   encoder weights only (ViT key names)
  config.json         architecture, bands and wavelengths, normalisation statistics,
                      objective, steps, hash of the training data's manifest
  README.md           a model card: what it was trained on and how to load it
With --timm-bands, OUT_DIR/timm/ also receives a plain timm VisionTransformer for that fixed
band set, image size and GSD (model.safetensors + timm.json; see `to_timm`). CHECKPOINT_DIR may
also be an existing export folder: then only the timm files are written.
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
    _atomic(out / "model.safetensors", lambda p: save_file(encoder, str(p), metadata={"format": FORMAT}))
    _atomic(out / "config.json", lambda p: p.write_text(json.dumps(config, indent=1)))
    _atomic(out / "README.md", lambda p: p.write_text(model_card(config)))  # last: a card means complete
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
encoder, config = load_exported("{'{'}this folder{'}'}")   # safetensors only; config.json rebuilds the ViT
feats = encoder.forward_features(image, wavelengths_nm, gsd_m, return_layers=(1, 3))
feats["pooled"]  # (B, {c['embed_dim']}) mean of the final normed patch tokens; also "cls", "tokens" (B, L, D)
feats["layers"]  # list of (B, L, D) un-normed tokens after the requested blocks
```
`image` is (B, C, H, W) normalised (below), H and W multiples of {c['patch_size']}; `wavelengths_nm`
(C,) the band centres; `gsd_m` metres per pixel. The patch embedding is generated from band
centre wavelengths, so any band set can be fed (pass its wavelengths); missing bands are simply
left out, never zero-filled.

**Multi-level features (terratorch / torchgeo style decoders, e.g. UPerNet):**
```python
from finetune.backbone import MultiLevelBackbone
backbone = MultiLevelBackbone(encoder, wavelengths_nm=[492.4, 559.8, 664.6, 832.8], gsd_m=10.0,
                              layers=(0, 1, 2, 3))      # block indices (default: 4 evenly spaced)
maps = backbone(image)          # list of (B, {c['embed_dim']}, H/{c['patch_size']}, W/{c['patch_size']}), one per layer
backbone.out_channels           # [{c['embed_dim']}, ...] per level
```

**timm (standard ViT, one fixed band set):**
`eofm-export {'{'}this folder{'}'} {'{'}this folder{'}'} --timm-bands B02,B03,B04,B08 --timm-img-size 224`
writes `timm/model.safetensors` + `timm/timm.json`; then
```python
import json, timm
from safetensors.torch import load_file
meta = json.load(open("timm/timm.json"))
model = timm.create_model(meta["model_name"], pretrained=False, **meta["kwargs"])  # in_chans = len(bands)
model.load_state_dict(load_file("timm/model.safetensors"))
```
(or `pretrain.export.load_timm("timm")`). Outputs match the eofm encoder for those bands at that
size and GSD; the patch kernel and position code are fixed there.

## Input normalisation ({norm['units']}, {c['gsd_m']} m)

| band | wavelength nm | mean | std |
|---|---|---|---|
{rows}

Invalid pixels (nodata, cloud) are set to 0 after normalisation.

## Training

Objective settings: `{json.dumps(c['objective_args'])}`. Checkpoint: `{c['checkpoint']}`.
"""


def read_config(path: str | os.PathLike) -> tuple[Path, dict]:
    """-> (export folder, parsed config.json). `path` is the folder or a file inside it.
    ExportError (naming the path) for anything that is not an eofm export."""
    path = Path(path)
    folder = path.parent if path.is_file() and path.name in ("config.json", "model.safetensors") else path
    if path.is_file() and folder is path:
        raise ExportError(f"{path}: not an eofm export (a file; an export is a folder holding "
                          f"config.json and model.safetensors written by eofm-export)")
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ExportError(f"{folder}: not an eofm export (needs config.json and model.safetensors)")
    config = parse_versioned(cfg_path.read_text(), str(cfg_path), FORMAT, FORMAT_VERSION, ExportError)
    for key in ("arch", "model_args", "normalization"):
        if key not in config:
            raise ExportError(f"{cfg_path}: not an eofm export config (no {key!r})")
    return folder, config


def load_exported(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """-> (ViT encoder in eval mode, config dict). Safe loading only: the weights are read with
    safetensors (no pickle); a foreign or damaged file is an ExportError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pretrain.models import BACKBONES

    folder, config = read_config(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if config["arch"] not in BACKBONES:
        raise ExportError(f"{cfg_path}: unknown architecture {config['arch']!r} (known: {', '.join(BACKBONES)})")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{weights}: not a readable safetensors file ({err})") from None
    model = BACKBONES[config["arch"]](**config["model_args"])
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise ExportError(f"{weights}: weights do not match {config['arch']} {config['model_args']} "
                          f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatch
        raise ExportError(f"{weights}: weights do not match config.json: {err}") from None
    return model.to(device).eval(), config


# ---- timm: a plain VisionTransformer for one fixed band set ---------------------------------

def band_wavelengths(config: dict, bands: list[str]) -> list[float]:
    """Centre wavelengths (nm) of band names: from the export's normalisation tables (any
    sensor), else the Sentinel-2 table (data_prep.bands), else the name read as a number."""
    from data_prep.bands import SAR_PSEUDO_WAVELENGTH_NM, SENTINEL2, canonical_s2_band

    known: dict[str, float] = {}
    for table in config.get("normalization", {}).values():
        known.update(zip(table["bands"], table["wavelengths_nm"]))
    out = []
    for b in bands:
        if b in known:
            out.append(float(known[b]))
            continue
        try:
            out.append(SENTINEL2[canonical_s2_band(b)][0])
            continue
        except ValueError:
            pass                              # not a Sentinel-2 band name: the tables below decide
        if b.upper() in SAR_PSEUDO_WAVELENGTH_NM:
            out.append(SAR_PSEUDO_WAVELENGTH_NM[b.upper()])
            continue
        try:
            out.append(float(b.lower().removesuffix("nm")))
        except ValueError:
            raise ExportError(f"band {b!r}: unknown name (not in the export's normalisation tables or the "
                              f"Sentinel-2 table); give its centre wavelength in nm instead, e.g. 665nm") from None
    return out


def to_timm(encoder, wavelengths_nm, img_size: int | tuple[int, int], gsd_m: float) -> tuple[dict, dict]:
    """Materialise the encoder for one band set, image size and GSD as a timm ViT.

    The spectral patch embedding generates a (D, C, p, p) kernel from the C wavelengths: for a
    fixed band set it is an ordinary conv patch embedding. The GSD-scaled sin-cos positions of
    an (H, W) image become timm's `pos_embed` (the cls slot gets 0: eofm gives cls no position).
    Date/location codes (time_loc encoders) are left out: timm gets the encoder without them.
    Blocks and final norm are timm `Block`s / LayerNorm already, so their keys carry over.
    Returns (state_dict, kwargs) for `timm.create_model("vit_base_patch16_224", pretrained=False,
    **kwargs)` (any vit_* name: kwargs set every size); `model.forward_features(x)` then equals
    eofm's normed tokens (B, 1+L, D) and `model(x)` the cls feature (B, D).
    """
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    p, d = encoder.patch_size, encoder.embed_dim
    if h % p or w % p:
        raise ExportError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    wl = torch.as_tensor(list(wavelengths_nm), dtype=torch.float32)
    with torch.no_grad():
        kernel = encoder.patch_embed.kernel(wl).float()
        pos = encoder.position_code(h // p, w // p, d, torch.tensor([float(gsd_m)]))
    # timm's keys only: date/location scales (time_loc encoders) have no timm counterpart; the
    # timm model is the encoder called without times/lonlat.
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()
             if k == "cls_token" or k.startswith(("blocks.", "norm."))}
    state["patch_embed.proj.weight"] = kernel.contiguous()
    state["patch_embed.proj.bias"] = encoder.patch_embed.bias.detach().clone()
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, d), pos], 1).contiguous()
    a = encoder.arch_args
    kwargs = dict(img_size=[h, w], patch_size=p, in_chans=len(wl), num_classes=0, global_pool="token",
                  embed_dim=a["embed_dim"], depth=a["depth"], num_heads=a["num_heads"], mlp_ratio=a["mlp_ratio"],
                  qkv_bias=True, class_token=True)
    return state, kwargs


def export_timm(export_dir: str | os.PathLike, bands: list[str], img_size: int, gsd_m: float | None = None,
                out_dir: str | os.PathLike | None = None) -> Path:
    """Write <out_dir or export_dir/timm>/ model.safetensors + timm.json for `bands`."""
    from safetensors.torch import save_file

    encoder, config = load_exported(export_dir)
    wl = band_wavelengths(config, bands)
    gsd = float(gsd_m if gsd_m is not None else config.get("gsd_m") or encoder.ref_gsd_m)
    state, kwargs = to_timm(encoder, wl, img_size, gsd)
    out = Path(out_dir) if out_dir else Path(export_dir) / "timm"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "eofm-timm", "format_version": 1, "model_name": "vit_base_patch16_224",
            "kwargs": kwargs, "bands": list(bands), "wavelengths_nm": wl, "gsd_m": gsd,
            "normalization": _norm_for(config, bands),
            "note": "fixed band set, image size and GSD; other sizes need timm's pos_embed resampling (approximate)"}
    _atomic(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "eofm-timm"}))
    _atomic(out / "timm.json", lambda p: p.write_text(json.dumps(meta, indent=1)))
    return out


def _norm_for(config: dict, bands: list[str]) -> dict:
    """{band: {mean, std}} for the bands the export has statistics for (first sensor that has it)."""
    out = {}
    for table in config.get("normalization", {}).values():
        for b, m, s in zip(table["bands"], table["mean"], table["std"]):
            if b in bands and b not in out:
                out[b] = {"mean": m, "std": s}
    return out


def load_timm(folder: str | os.PathLike):
    """-> timm VisionTransformer written by export_timm (eval mode), its timm.json dict."""
    import timm
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = parse_versioned((folder / "timm.json").read_text(), str(folder / "timm.json"), "eofm-timm", 1, ExportError)
    model = timm.create_model(meta["model_name"], pretrained=False, **meta["kwargs"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval(), meta


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eofm-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run folder, its checkpoints/ folder, or one checkpoint tag folder")
    p.add_argument("out", help="output folder for model.safetensors, config.json and README.md")
    p.add_argument("--timm-bands", default="", help="also write OUT/timm/: a timm ViT for these bands "
                   "(comma-separated names, e.g. B02,B03,B04,B08, or wavelengths like 665nm)")
    p.add_argument("--timm-img-size", type=int, default=224, help="image side for the timm model (default 224)")
    p.add_argument("--timm-gsd", type=float, default=None, help="metres per pixel for the timm model's "
                   "position code (default: the pretraining data's GSD)")
    args = p.parse_args(argv)
    try:
        if (Path(args.checkpoint) / "config.json").is_file() and not args.timm_bands:
            raise ExportError(f"{args.checkpoint}: already an export; pass --timm-bands to write timm weights from it")
        if (Path(args.checkpoint) / "config.json").is_file():
            src = args.checkpoint
        else:
            src = export(args.checkpoint, args.out)
            cfg = json.loads((src / "config.json").read_text())
            print(f"exported {cfg['arch']} (dim {cfg['embed_dim']}, patch {cfg['patch_size']}, "
                  f"{cfg['steps']} steps) -> {src}")
        if args.timm_bands:
            bands = [b.strip() for b in args.timm_bands.split(",") if b.strip()]
            out = export_timm(src, bands, args.timm_img_size, args.timm_gsd, Path(args.out) / "timm")
            print(f"timm VisionTransformer for {','.join(bands)} at {args.timm_img_size}px -> {out}")
    except ExportError as err:
        print(f"eofm-export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Encoders for evaluation: the exported one, and a randomly initialised twin as a baseline."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from finetune import FinetuneError

EXPORT_FORMAT = "eofm-export"


def read_export_config(folder: str) -> dict:
    """config.json of an export folder, after checking that it is one (clear error otherwise)."""
    root = Path(folder)
    if not root.is_dir():
        raise FinetuneError(f"{folder}: export folder not found (run eofm-export first, or fix model.export)")
    path = root / "config.json"
    if not path.is_file():
        raise FinetuneError(f"{folder}: not an eofm export (no config.json)")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as err:
        raise FinetuneError(f"{folder}: not an eofm export (config.json is not valid JSON: {err})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != EXPORT_FORMAT:
        fmt = cfg.get("format") if isinstance(cfg, dict) else None
        raise FinetuneError(f"{folder}: not an eofm export (config.json format={fmt!r}, expected {EXPORT_FORMAT!r})")
    if not (root / "model.safetensors").is_file():
        raise FinetuneError(f"{folder}: eofm export without model.safetensors")
    return cfg


def load_backbone(folder: str, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Exported encoder (eval mode) and its config dict; no pretraining config needed."""
    read_export_config(folder)  # our own check first: the loader's errors may not name the folder
    from pretrain.export import load_exported  # lazy: keeps this module importable on its own

    try:
        return load_exported(str(folder), device=device)
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise FinetuneError(f"{folder}: cannot load the exported encoder: {err}") from err


def random_backbone(export_cfg: dict, seed: int, device: str = "cpu") -> torch.nn.Module:
    """Same architecture as the export (`ViT(**model_args)`), fresh init from `seed`, eval mode."""
    from pretrain.models.vit import ViT

    if export_cfg.get("arch", "vit") != "vit":
        raise FinetuneError(f"random baseline: architecture {export_cfg.get('arch')!r} is not supported")
    # A private generator state: the baseline is the same whatever ran before it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViT(**export_cfg["model_args"])
    return model.to(device).eval()

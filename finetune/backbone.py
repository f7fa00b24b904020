"""Encoders for evaluation: the exported one, and a randomly initialised twin as a baseline."""
from __future__ import annotations

from pathlib import Path

import torch

from finetune import FinetuneError

def load_backbone(folder: str, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Exported encoder (eval mode) and its config dict; no pretraining config needed."""
    from pretrain.export import ExportError, load_exported  # lazy: keeps this module importable on its own

    if not Path(folder).is_dir():
        raise FinetuneError(f"{folder}: export folder not found (run eofm-export first, or fix model.export)")
    try:
        return load_exported(str(folder), device=device)
    except ExportError as err:
        raise FinetuneError(str(err)) from None
    except (OSError, KeyError, RuntimeError) as err:
        raise FinetuneError(f"{folder}: cannot load the exported encoder: {err}") from err


def random_backbone(export_cfg: dict, seed: int, device: str = "cpu") -> torch.nn.Module:
    """Same architecture as the export (`ViT(**model_args)`), fresh init from `seed`, eval mode."""
    from pretrain.models import BACKBONES

    # A private generator state: the baseline is the same whatever ran before it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BACKBONES[export_cfg["arch"]](**export_cfg["model_args"])
    return model.to(device).eval()

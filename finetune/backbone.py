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


def default_layers(depth: int, n: int = 4) -> tuple[int, ...]:
    """n block indices spread evenly up to the last block: depth 12 -> (2, 5, 8, 11); shallow
    encoders repeat indices (depth 2 -> (0, 0, 1, 1)), so a decoder always gets n levels."""
    return tuple(int(round((i + 1) * depth / n)) - 1 if depth >= n else (i * depth) // n for i in range(n))


class MultiLevelBackbone(torch.nn.Module):
    """An eofm encoder as a multi-level feature extractor (the terratorch / torchgeo / mmseg
    backbone interface): forward(image (B, C, H, W)) -> list of (B, D, H/p, W/p), one map per
    block in `layers`. Each level is the block's patch tokens passed through the encoder's
    final LayerNorm (shared, pretrained), reshaped to the patch grid.

    The band set is fixed at construction (wavelengths_nm, C values) and gsd_m is the default
    metres per pixel; forward also takes them per call (a dataset with another sensor).
    `out_channels` lists D per level, as decoders (UPerNet, FPN) expect.
    """

    def __init__(self, encoder: torch.nn.Module, wavelengths_nm=None, gsd_m: float = 10.0,
                 layers: tuple[int, ...] | None = None):
        super().__init__()
        self.encoder = encoder
        self.layers = tuple(layers) if layers else default_layers(encoder.depth)
        self.register_buffer("wavelengths_nm", None if wavelengths_nm is None else
                             torch.as_tensor(list(wavelengths_nm), dtype=torch.float32), persistent=False)
        self.gsd_m = float(gsd_m)
        self.out_channels = [encoder.embed_dim] * len(self.layers)
        self.patch_size = encoder.patch_size

    def forward(self, image: torch.Tensor, wavelengths_nm=None, gsd_m=None) -> list[torch.Tensor]:
        wl = self.wavelengths_nm if wavelengths_nm is None else wavelengths_nm
        if wl is None:
            raise ValueError("MultiLevelBackbone: give wavelengths_nm (at construction or per call)")
        return feature_maps(self.encoder, image, wl, self.gsd_m if gsd_m is None else gsd_m, self.layers)


def feature_maps(encoder: torch.nn.Module, image: torch.Tensor, wavelengths_nm, gsd_m,
                 layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Patch tokens after the blocks in `layers`, final-normed, as maps (B, D, H/p, W/p)."""
    b, _, h, w = image.shape
    p = encoder.patch_size
    feats = encoder.forward_features(image, wavelengths_nm, gsd_m, return_layers=tuple(layers))
    return [encoder.norm(t).transpose(1, 2).reshape(b, -1, h // p, w // p) for t in feats["layers"]]

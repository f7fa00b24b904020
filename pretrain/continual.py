"""Continual pretraining: start the backbone from existing weights (`model.init_from`).

Two sources:
- an eofm export folder (config.json + model.safetensors, pretrain/export.py): every tensor of
  the same name and shape is loaded, the wavelength-generated patch embedding included, so any
  band set keeps working;
- a timm VisionTransformer state dict (.pth / .pt / .bin via torch.load(weights_only=True), or
  .safetensors; a {"model": ...} / {"state_dict": ...} wrapper and "module." / "backbone."
  prefixes are accepted). timm's blocks use the same key names as ours, so the transformer
  blocks, the final norm and the cls token are transferred. timm's patch embedding is a fixed
  conv for one band set (e.g. RGB) and cannot be reused by the wavelength-generated embedding:
  `patch_embed.*` is re-initialised (as SoftCon re-initialises its first layer for 13 or 2
  bands). timm's learned `pos_embed` is dropped (we use GSD-scaled sin-cos positions) and so is
  its classifier `head.*`.
A tensor present in both with different shapes (another width, mlp ratio...) is an error naming
it: silently skipping it would train a different model than the one asked for. The report
(loaded / re-initialised / ignored names) is logged by train.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["InitReport", "load_source_state", "init_backbone"]

_PREFIXES = ("module.", "backbone.", "encoder.")


@dataclass
class InitReport:
    source: str
    kind: str                                   # "eofm-export" | "timm"
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)   # ours, absent from the source
    ignored: list[str] = field(default_factory=list)         # the source's, no place in ours

    def summary(self) -> str:
        def groups(names):
            return sorted({n.split(".")[0] for n in names})
        return (f"init_from {self.source} ({self.kind}): loaded {len(self.loaded)} tensors "
                f"({', '.join(groups(self.loaded))}); re-initialised {len(self.reinitialised)} "
                f"({', '.join(groups(self.reinitialised)) or '-'}); ignored {len(self.ignored)} from the source "
                f"({', '.join(groups(self.ignored)) or '-'})")


def _strip(state: dict) -> dict:
    for wrapper in ("model", "state_dict"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def load_source_state(path: str) -> tuple[dict, str]:
    """-> (state dict with our key names where they match, kind)."""
    p = Path(path)
    if p.is_dir():
        from pretrain.export import load_exported
        encoder, _ = load_exported(p)
        return encoder.state_dict(), "eofm-export"
    if not p.is_file():
        raise FileNotFoundError(f"model.init_from: {path} is neither an eofm export folder nor a weights file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"model.init_from: cannot read {path} as a state dict: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"model.init_from: {path} holds a {type(state).__name__}, not a state dict")
    return _strip(state), "timm"


def init_backbone(backbone: nn.Module, path: str) -> InitReport:
    """Copy matching tensors of `path` into `backbone` in place; returns what happened."""
    source, kind = load_source_state(path)
    own = backbone.state_dict()
    report = InitReport(source=str(path), kind=kind)
    for name, value in source.items():
        if name not in own:
            report.ignored.append(name)
            continue
        if name.startswith("patch_embed.") and kind == "timm":
            report.ignored.append(name)       # a fixed-band conv: not our generated embedding
            continue
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(f"model.init_from: {path}: {name} has shape {tuple(value.shape)}, the model "
                             f"expects {tuple(own[name].shape)} (set model.size/depth/patch_size to the "
                             f"source's architecture)")
        own[name] = value.to(own[name].dtype)
        report.loaded.append(name)
    report.reinitialised = [n for n in own if n not in set(report.loaded)]
    if not any(n.startswith("blocks.") for n in report.loaded):
        raise ValueError(f"model.init_from: {path}: no transformer block matched the model's key names "
                         f"(source keys start with: {', '.join(sorted({k.split('.')[0] for k in source})[:8])})")
    backbone.load_state_dict(own, strict=True)
    return report

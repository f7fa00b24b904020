"""Objective registry: ``build_objective("mae", backbone, mask_ratio=0.75, ...)``."""

from __future__ import annotations

from torch import nn

from pretrain.objectives.mae import MAE

__all__ = ["OBJECTIVES", "build_objective", "MAE"]

OBJECTIVES = {"mae": MAE}


def build_objective(name: str, backbone: nn.Module, **cfg) -> nn.Module:
    """Wrap a backbone in a registered pretraining objective; cfg goes to its constructor."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](backbone, **cfg)

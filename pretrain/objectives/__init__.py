"""Objective registry: ``build_objective("mae", backbone, mask_ratio=0.75, ...)``."""

from __future__ import annotations

from torch import nn

from pretrain.objectives.instance_contrastive import InstanceContrastive
from pretrain.objectives.mae import MAE
from pretrain.objectives.season_contrastive import SeasonContrastive
from pretrain.objectives.soft_contrastive import SoftContrastive
from pretrain.objectives.selective_mae import SelectiveMAE

__all__ = ["OBJECTIVES", "build_objective", "MAE", "InstanceContrastive", "SoftContrastive", "SeasonContrastive", "SelectiveMAE"]

OBJECTIVES = {"mae": MAE, "soft_contrastive": SoftContrastive,
              "instance_contrastive": InstanceContrastive, "season_contrastive": SeasonContrastive,
              "selective_mae": SelectiveMAE}


def build_objective(name: str, backbone: nn.Module, **cfg) -> nn.Module:
    """Wrap a backbone in a registered pretraining objective; cfg goes to its constructor."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](backbone, **cfg)

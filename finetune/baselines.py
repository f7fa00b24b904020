"""The input-statistics baseline: what a linear model gets from the normalised inputs alone.

An encoder's features are worth their compute only if a probe on them beats a probe on these:
  image-level tasks  per-band mean and std over each image's valid pixels (2C numbers per
                     image), fed to the same linear probe as the encoders' pooled features;
  dense tasks        the C normalised bands of each pixel, fed to a per-pixel linear layer (the
                     probe's 1x1 convolution on a full-resolution "feature map").
"""
from __future__ import annotations

import numpy as np
import torch

from finetune.data import Task

NAME = "input_stats"


def band_statistics(images: np.ndarray, valid: np.ndarray, chunk: int = 256) -> np.ndarray:
    """images (N, C, H, W), valid (N, H, W) bool -> (N, 2C) float32: per-band mean over the valid
    pixels, then per-band std (population); zeros for an image without a valid pixel."""
    out = []
    for i in range(0, len(images), chunk):                          # bounded float64 temporaries
        x = images[i:i + chunk].astype(np.float64)
        w = valid[i:i + chunk, None].astype(np.float64)             # (n, 1, H, W)
        count = np.maximum(w.sum((2, 3)), 1.0)                      # (n, 1)
        mean = (x * w).sum((2, 3)) / count                          # (n, C)
        var = (np.square(x - mean[..., None, None]) * w).sum((2, 3)) / count
        out.append(np.concatenate([mean, np.sqrt(var)], 1))
    return np.concatenate(out).astype(np.float32)


def input_features(task: Task) -> torch.Tensor:
    """Baseline features of ALL task samples, indexed like the task: (N, 2C) band statistics for
    image-level tasks, the normalised images (N, C, H, W) themselves for dense tasks."""
    if task.image_level:
        return torch.from_numpy(band_statistics(task.images, task.valid))
    return torch.from_numpy(task.images)

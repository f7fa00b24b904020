"""Token selection for SelectiveMAE: a per-patch information score, a seeded draw, and the
similarity-driven expansion with its training-length curriculum. Pure tensor functions.

Paper recipe (SelectiveMAE, arXiv 2406.11933), all per sample: draw half of the K encoded tokens
from p = softmax(score); add the other half in two sub-steps by ranking every unselected token
by its maximum cosine similarity to the selected set (patch embeddings incl. positions), taking
the most similar ("analogous"), later the least similar ("complementary"), later random
tokens; then draw R reconstruction targets from p over the unselected tokens.

Differences from the released code, on purpose: its HOG score is standardised then averaged
per patch, which is 0 by construction, so its seeds and targets are uniform-random (``score:
uniform`` reproduces that); and it builds the not-yet-selected mask of some stages from one
batch element for the whole batch. Here the score is the gradient energy over all bands (any
band count) and every mask is per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SCORES", "EXPANSIONS", "DEFAULT_CURRICULUM", "gradient_score", "score_logits",
           "expansion_mix", "select_tokens"]

SCORES = ("gradient", "uniform")
EXPANSIONS = ("curriculum", "similar", "dissimilar", "random")
# Fractions of training where the paper's stages change (its epochs 280, 300, 580, 600 of 800):
# similar until a, blend to dissimilar until b, dissimilar until c, blend to random until d.
DEFAULT_CURRICULUM = (0.35, 0.375, 0.725, 0.75)
_NO_INFO = -30.0  # logit of a patch without valid pixel pairs: drawn only when nothing else is left


def gradient_score(image: torch.Tensor, valid: torch.Tensor, p: int) -> torch.Tensor:
    """Texture richness of each patch: mean over its pixels of the RMS (over bands) of the
    horizontal/vertical finite differences, counting only differences between two valid pixels.

    image (B, C, H, W) normalised, valid (B, H, W) bool -> (B, L) float32, NaN where a patch has
    no valid pixel pair. Bands are standardised, so every band weighs the same whatever C is.
    """
    x = image.float()
    v = valid.float()
    dx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))  # difference to the right neighbour
    dy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))  # ... to the one below
    vx = F.pad(v[..., :, 1:] * v[..., :, :-1], (0, 1))
    vy = F.pad(v[..., 1:, :] * v[..., :-1, :], (0, 0, 0, 1))
    energy = (dx.pow(2).mean(1) * vx + dy.pow(2).mean(1) * vy) / (vx + vy).clamp_min(1)  # (B, H, W)
    has = ((vx + vy) > 0).float()
    num = F.avg_pool2d((energy.sqrt() * has)[:, None], p)[:, 0].flatten(1)
    den = F.avg_pool2d(has[:, None], p)[:, 0].flatten(1)
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))


def score_logits(score: torch.Tensor | None, shape, temperature: float, device) -> torch.Tensor:
    """(B, N) raw scores (NaN = no information) -> sampling logits: standardised per sample and
    divided by the temperature. None (the `uniform` score) -> zeros."""
    if score is None:
        return torch.zeros(shape, device=device)
    ok = ~torch.isnan(score)
    s = torch.where(ok, score, torch.zeros_like(score))
    n = ok.sum(1, keepdim=True).clamp_min(1)
    mean = s.sum(1, keepdim=True) / n
    std = ((((s - mean) * ok) ** 2).sum(1, keepdim=True) / n).sqrt()
    z = (s - mean) / (std + 1e-6) / temperature
    return torch.where(ok, z, torch.full_like(z, _NO_INFO))


def expansion_mix(progress: float, mode: str = "curriculum",
                  curriculum=DEFAULT_CURRICULUM) -> tuple[float, float, float]:
    """Shares (similar, dissimilar, random) of the expansion tokens at a training progress in [0, 1]."""
    if mode == "similar":
        return 1.0, 0.0, 0.0
    if mode == "dissimilar":
        return 0.0, 1.0, 0.0
    if mode == "random":
        return 0.0, 0.0, 1.0
    if mode != "curriculum":
        raise ValueError(f"expansion must be one of {EXPANSIONS}, got {mode!r}")
    a, b, c, d = curriculum
    if progress < a:
        return 1.0, 0.0, 0.0
    if progress < b:
        t = (progress - a) / (b - a)
        return 1.0 - t, t, 0.0
    if progress < c:
        return 0.0, 1.0, 0.0
    if progress < d:
        t = (progress - c) / (d - c)
        return 0.0, 1.0 - t, t
    return 0.0, 0.0, 1.0


def _split(n: int, mix) -> tuple[int, int, int]:
    """n tokens -> counts (similar, dissimilar, random) in proportion to mix, summing to n."""
    n_sim = int(round(mix[0] * n))
    n_dis = min(n - n_sim, int(round(mix[1] * n)))
    return n_sim, n_dis, n - n_sim - n_dis


def _take(key: torch.Tensor, free: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (B, n) of the n largest `key` among `free` (B, N) bool positions."""
    return key.masked_fill(~free, float("-inf")).topk(n, dim=1).indices


def select_tokens(logits: torch.Tensor, emb: torch.Tensor, keep: int, recon: int, mix,
                  generator: torch.Generator | None = None):
    """Choose the encoded tokens and the reconstruction targets of each sample.

    logits (B, N) sampling logits; emb (B, N, D) token embeddings (for similarity; no grad
    needed); keep K >= 1 tokens to encode, recon R <= N - K targets; mix = (similar,
    dissimilar, random) shares of the expansion tokens.
    Returns ids_keep (B, K) and ids_target (B, R), long, disjoint per sample.
    """
    b, n = logits.shape
    if not 1 <= keep <= n or not 0 <= recon <= n - keep:
        raise ValueError(f"cannot encode {keep} and reconstruct {recon} of {n} tokens")
    # floor: a large score spread must not underflow any token to probability 0 (the draws
    # without replacement need at least K/2 resp. R candidates with p > 0)
    probs = logits.float().softmax(1).clamp_min(1e-20)
    seeds = max(1, keep // 2)
    chosen = [torch.multinomial(probs, seeds, replacement=False, generator=generator)]
    free = torch.ones(b, n, dtype=torch.bool, device=logits.device)
    free.scatter_(1, chosen[0], False)
    unit = F.normalize(emb.detach().float(), dim=-1)
    maxsim = torch.full((b, n), float("-inf"), device=logits.device)

    def update(ids):  # running max cosine similarity of every token to the selected set
        sel = unit.gather(1, ids[:, :, None].expand(-1, -1, unit.shape[2]))  # (B, k, D)
        return torch.maximum(maxsim, torch.bmm(sel, unit.transpose(1, 2)).amax(1))

    maxsim = update(chosen[0])
    rest = keep - seeds
    for n_step in (rest // 2, rest - rest // 2):  # two sub-steps as in the paper (7 + 8 of 15)
        if n_step == 0:
            continue
        n_sim, n_dis, n_rand = _split(n_step, mix)
        step_ids = []
        for count, key in ((n_sim, maxsim), (n_dis, -maxsim), (n_rand, None)):
            if count == 0:
                continue
            if key is None:
                key = torch.rand(b, n, device=logits.device, generator=generator)
            ids = _take(key, free, count)
            free.scatter_(1, ids, False)
            step_ids.append(ids)
        ids = torch.cat(step_ids, 1)
        chosen.append(ids)
        maxsim = update(ids)
    ids_keep = torch.cat(chosen, 1)
    if recon == 0:
        return ids_keep, ids_keep.new_zeros(b, 0)
    target_probs = probs.masked_fill(~free, 0.0)
    ids_target = torch.multinomial(target_probs, recon, replacement=False, generator=generator)
    return ids_keep, ids_target

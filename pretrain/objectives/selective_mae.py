"""SelectiveMAE (Wang et al., arXiv 2406.11933): encode a small, informed selection of tokens
and reconstruct only part of the rest, with a cross-attention decoder.

Per sample (N tokens): K = int(N (1 - mask_ratio)) tokens are encoded (15 % by default: 29 of
196 at 224 px / 16 px), chosen by `_selection.select_tokens` (score-driven seeds, similarity
expansion following the curriculum); R = int(N recon_ratio) of the other tokens are the
reconstruction targets (0.25: 49 of 196, the paper's count; the rest is never decoded). The
decoder's queries are a mask token plus the target's position code; each block
cross-attends from the queries to the encoder output (no self-attention among queries, as in
CrossMAE/SelectiveMAE), so cost grows with R, not N, and any subset of positions can be
decoded (`reconstruct` decodes all masked ones for figures). Loss: norm-pix MSE on valid pixels
of the targets, as in MAE. Optional InfoBatch-style pruning (`_pruning.LossPruner`) is off by
default. The training progress (for the curriculum and the pruning stop) comes from
`set_progress(step, total_steps)`, called by the training loop before each step.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from pretrain.models.patch_embed import SpectralLinear
from pretrain.models.vit import init_weights
from pretrain.objectives._mim import FRAMES, MIMInput, norm_pix_targets, patch_loss, prepare
from pretrain.objectives._pruning import LossPruner
from pretrain.objectives._selection import (DEFAULT_CURRICULUM, EXPANSIONS, SCORES, expansion_mix,
                                            gradient_score, score_logits, select_tokens)
from pretrain.objectives.mae import _figure_tensors, _frame_weights

__all__ = ["SelectiveMAE", "CrossAttentionBlock", "token_counts"]


def token_counts(n: int, mask_ratio: float, recon_ratio: float) -> tuple[int, int]:
    """(encoded K, reconstructed R) for N tokens; raises when they do not fit."""
    keep, recon = int(n * (1 - mask_ratio)), int(n * recon_ratio)
    if keep < 1 or recon < 1 or keep + recon > n:
        raise ValueError(f"{n} tokens: mask_ratio {mask_ratio} encodes {keep} and recon_ratio "
                         f"{recon_ratio} reconstructs {recon}; need K >= 1, R >= 1, K + R <= N")
    return keep, recon


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: queries attend to a memory, then an MLP; no self-attention.

    forward(q (B, R, D), mem (B, M, D)) -> (B, R, D).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder_dim {dim} is not divisible by decoder_heads {num_heads}")
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.num_heads = num_heads
        self.norm_q, self.norm_mem, self.norm_mlp = norm(dim), norm(dim), norm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, q: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        b, r, d = q.shape
        h = self.num_heads
        query = self.q(self.norm_q(q)).view(b, r, h, d // h).transpose(1, 2)  # (B, h, R, d/h)
        k, v = self.kv(self.norm_mem(mem)).view(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(query, k, v)  # (B, h, R, d/h)
        q = q + self.proj(att.transpose(1, 2).reshape(b, r, d))
        return q + self.mlp(self.norm_mlp(q))


def _subset(x: MIMInput, idx: torch.Tensor) -> MIMInput:
    """The samples `idx` of a MIMInput (after pruning)."""
    pick = lambda t: None if t is None else t[idx]  # noqa: E731
    keys = None if x.keys is None else [x.keys[i] for i in idx.tolist()]
    return MIMInput(x.image[idx], x.valid[idx], x.wavelengths, x.gsd[idx], pick(x.times), pick(x.lonlat),
                    keys, x.patches[idx], x.vpix[idx], x.frames, x.grid)


class SelectiveMAE(nn.Module):
    """SelectiveMAE objective owning its decoder.

    forward(batch) -> {"loss", "encoded_fraction", "recon_fraction", "valid_fraction",
    "expand_similar", "expand_dissimilar", "expand_random", and "per_sample_loss" (B,) (or
    "kept_samples" with the internal pruning)}; batch as for MAE, optional "sample_weight" (B,)
    from the loop's loss-based curation.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mask_ratio: float = 0.85,
        recon_ratio: float = 0.25,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        score: str = "gradient",
        score_temperature: float = 1.0,
        expansion: str = "curriculum",
        curriculum=DEFAULT_CURRICULUM,
        prune_ratio: float = 0.0,
        prune_stop: float = 0.875,
        frames: str = "independent",
    ):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0 or not 0.0 < recon_ratio <= mask_ratio:
            raise ValueError(f"need 0 < recon_ratio <= mask_ratio < 1, got {recon_ratio}, {mask_ratio}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if expansion not in EXPANSIONS:
            raise ValueError(f"expansion must be one of {EXPANSIONS}, got {expansion!r}")
        curriculum = tuple(float(c) for c in curriculum)
        if len(curriculum) != 4 or list(curriculum) != sorted(curriculum) or not 0 <= curriculum[0] \
                or curriculum[-1] > 1:
            raise ValueError(f"curriculum must be 4 increasing fractions in [0, 1], got {curriculum}")
        if score_temperature <= 0:
            raise ValueError(f"score_temperature must be > 0, got {score_temperature}")
        if frames not in FRAMES:
            raise ValueError(f"frames must be one of {FRAMES}, got {frames!r}")
        self.backbone = backbone
        self.mask_ratio, self.recon_ratio, self.norm_pix_loss = mask_ratio, recon_ratio, norm_pix_loss
        self.score, self.score_temperature = score, score_temperature
        self.expansion, self.curriculum, self.frames = expansion, curriculum, frames
        self.decoder_dim = decoder_dim
        self.pruner = LossPruner(prune_ratio, prune_stop)
        self.progress = 0.0

        self.decoder_embed = nn.Linear(backbone.embed_dim, decoder_dim)  # encoder output -> memory
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            CrossAttentionBlock(decoder_dim, decoder_heads) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = SpectralLinear(decoder_dim, backbone.patch_size ** 2, backbone.spectral_rank,
                                           backbone.wave_dim)
        for m in (self.decoder_embed, self.decoder_blocks, self.decoder_norm):
            m.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def set_progress(self, step: int, total_steps: int) -> None:
        """Training progress in [0, 1] for the curriculum and the pruning stop."""
        self.progress = min(max(step / max(total_steps, 1), 0.0), 1.0)

    # ---- internals -------------------------------------------------------------------------
    def _select(self, x: MIMInput, tokens: torch.Tensor):
        """-> ids_keep (B', K), ids_target (B', R) for the token embeddings (B', N, D)."""
        n = tokens.shape[1]
        keep, recon = token_counts(n, self.mask_ratio, self.recon_ratio)
        with torch.no_grad():
            raw = None
            if self.score == "gradient":
                image, valid = x.flat_images()
                # per frame (B*T, L) -> per sample (B', N): frame-major, like the tokens
                raw = gradient_score(image, valid, self.backbone.patch_size).reshape(tokens.shape[0], n)
            logits = score_logits(raw, (tokens.shape[0], n), self.score_temperature, tokens.device)
            mix = expansion_mix(self.progress, self.expansion, self.curriculum)
            return select_tokens(logits, tokens, keep, recon, mix)

    def _decode(self, x: MIMInput, latent: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Predict the patches at positions ids (B', R) from the encoder output (B', 1+K, D)."""
        pos = self.backbone.position_code(*x.grid, self.decoder_dim, x.gsd, x.frames)  # (B', N, Dd)
        pos = pos.expand(ids.shape[0], -1, -1).gather(1, ids[:, :, None].expand(-1, -1, self.decoder_dim))
        mem = self.decoder_embed(latent)
        q = self.mask_token.to(mem.dtype) + pos.to(mem.dtype)
        for blk in self.decoder_blocks:
            q = blk(q, mem)
        return self.decoder_pred(self.decoder_norm(q), x.wavelengths)  # (B', R, C, p*p)

    def _encode(self, x: MIMInput):
        bb = self.backbone
        tokens = bb.embed(x.image, x.wavelengths, x.gsd, x.times, x.lonlat)  # (B', N, D)
        ids_keep, ids_target = self._select(x, tokens)
        visible = tokens.gather(1, ids_keep[:, :, None].expand(-1, -1, tokens.shape[2]))
        return bb.encode(visible), ids_keep, ids_target

    # ---- public ----------------------------------------------------------------------------
    def forward(self, batch: dict) -> dict:
        x = prepare(batch, self.backbone.patch_size, self.frames)
        total = x.image.shape[0]
        weights = None
        if self.pruner.active:
            if x.keys is None:
                raise ValueError("prune_ratio > 0 needs the batch's sample keys ('key')")
            kept, weights = self.pruner.plan(x.keys, self.progress, x.image.device)
            x = _subset(x, kept)
        latent, ids_keep, ids_target = self._encode(x)
        pred = self._decode(x, latent, ids_target)
        take = lambda t: t.gather(1, ids_target.view(*ids_target.shape, *[1] * (t.ndim - 2))  # noqa: E731
                                  .expand(-1, -1, *t.shape[2:]))
        patches, vpix = take(x.patches), take(x.vpix)  # (B', R, C, P), (B', R, P)
        target, _, _ = norm_pix_targets(patches, vpix, self.norm_pix_loss)
        loss, per_sample = patch_loss(pred, target, vpix, torch.ones_like(ids_target, dtype=torch.float32))
        n = x.patches.shape[1]
        mix = expansion_mix(self.progress, self.expansion, self.curriculum)
        out = {
            "encoded_fraction": torch.tensor(ids_keep.shape[1] / n),
            "recon_fraction": torch.tensor(ids_target.shape[1] / n),
            "valid_fraction": x.valid.float().mean().detach(),
            "expand_similar": torch.tensor(mix[0]),
            "expand_dissimilar": torch.tensor(mix[1]),
            "expand_random": torch.tensor(mix[2]),
        }
        if weights is not None:
            self.pruner.update(x.keys, per_sample)
            # unbiased for the mean over the full batch: dropped easy samples are stood in for
            # by the kept easy ones at weight 1/(1 - ratio)
            loss = (per_sample * weights).sum() / total
            out["kept_samples"] = torch.tensor(x.image.shape[0] / total)
        else:
            # the loop's loss-based curation (curation.mode: loss) prunes before loading: it
            # reads per-sample losses (one per batch key) and passes sample_weight back
            sample_weight = batch.get("sample_weight")
            if sample_weight is not None:
                loss = (per_sample * _frame_weights(sample_weight, per_sample)).mean()
            keys = batch.get("key")
            out["per_sample_loss"] = per_sample.detach().reshape(len(keys), -1).mean(1) if keys is not None \
                else per_sample.detach()
        out["loss"] = loss
        return out

    @torch.no_grad()
    def reconstruct(self, batch: dict) -> dict:
        """For plotting, like MAE.reconstruct; every masked position is decoded (the decoder can
        query any subset), and `target_mask` (B', H, W) marks the patches the loss uses."""
        x = prepare(batch, self.backbone.patch_size, self.frames)
        latent, ids_keep, ids_target = self._encode(x)
        b, n = x.patches.shape[:2]
        mask = torch.ones(b, n, device=x.image.device).scatter_(1, ids_keep, 0.0)
        ids_masked = mask.nonzero()[:, 1].view(b, -1)  # same count in every row
        pred = x.patches.new_zeros(x.patches.shape)
        pred_masked = self._decode(x, latent, ids_masked).to(pred.dtype)
        pred.scatter_(1, ids_masked[:, :, None, None].expand_as(pred_masked), pred_masked)
        _, mean, std = norm_pix_targets(x.patches, x.vpix, self.norm_pix_loss)
        if mean is not None:
            pred = pred * std + mean
        target = torch.zeros(b, n, device=x.image.device).scatter_(1, ids_target, 1.0)
        out = _figure_tensors(x, pred, mask, self.backbone.patch_size)
        out["target_mask"] = _figure_tensors(x, pred, target, self.backbone.patch_size)["mask"]
        return out


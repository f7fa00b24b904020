"""Shared by the contrastive objective tests: tiny objectives, synthetic multi-date batches, view
slicing for the rank-equality test, and real SSL4EO-S12 shards (with and without land cover)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pretrain.models import build_backbone
from pretrain.objectives import build_objective

P, SIZE, C = 8, 32, 6
SMALL = dict(proj_hidden_dim=32, proj_dim=16)


def tiny_objective(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    bb = build_backbone("vit", "tiny", embed_dim=32, num_heads=2, depth=1, patch_size=P)
    return build_objective(name, bb, **{**SMALL, **kw})


def make_batch(b: int = 4, t: int = 3, k: int = 5, seed: int = 1, valid_p: float = 0.95) -> dict:
    """Smooth random multi-date scenes: each location has its own pattern, dates differ by a
    per-date gain and noise (so places are told apart by content, not by date)."""
    g = torch.Generator().manual_seed(seed)
    place = torch.randn(b, 1, C, SIZE // 4, SIZE // 4, generator=g)
    date = 1 + 0.2 * torch.randn(b, t, C, 1, 1, generator=g)
    base = place * date + 0.1 * torch.randn(b, t, C, SIZE // 4, SIZE // 4, generator=g)
    image = torch.nn.functional.interpolate(base.flatten(0, 1), size=(SIZE, SIZE), mode="bilinear")
    image = image.view(b, t, C, SIZE, SIZE)
    valid = torch.rand(b, t, SIZE, SIZE, generator=g) < valid_p
    lc = torch.rand(b, k, generator=g) ** 3
    return {
        "image": image * valid[:, :, None], "valid": valid,
        "wavelengths_nm": torch.linspace(490.0, 2190.0, C).expand(b, C),
        "gsd_m": torch.full((b,), 10.0), "times": torch.arange(t, dtype=torch.float64).expand(b, t) * 90,
        "lonlat": torch.zeros(b, 2), "landcover": lc / lc.sum(1, keepdim=True),
        "key": [f"k{i}" for i in range(b)], "sensor": "test",
    }


def slice_views(views: dict, start: int, stop: int) -> dict:
    """Rows start:stop of every per-sample tensor (keys: (V, B, ...) sliced on dim 1)."""
    out = {}
    for name, v in views.items():
        if name in ("keys", "keys_gsd"):
            out[name] = v[:, start:stop]
        elif name == "wavelengths":
            out[name] = v
        else:
            out[name] = v[start:stop]
    return out


def derived_landcover(products: list[Path], out: Path) -> Path:
    """A land-cover raster on the SSL4EO-S12 products' own grid, derived from their pixels
    (Dynamic World codes): water (NDWI > 0.1), trees (NDVI > 0.5), crops (NDVI 0.3-0.5), grass
    (NDVI 0.2-0.3), bare (NDVI < 0.2 and bright), built (the rest). The real test data has no
    land-cover map over these products (BigEarthNet's CORINE map covers another patch), so the
    SoftCon tests use these derived labels: crude, but real per-scene label vectors that differ
    between chips."""
    import rasterio

    def band(name):
        with rasterio.open(products[0] / f"{name}.tif") as src:
            return src.read(1).astype(np.float32), src.profile
    red, profile = band("B4")
    green, _ = band("B3")
    nir, _ = band("B8")
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    ndwi = (green - nir) / np.maximum(green + nir, 1)
    cls = np.full(red.shape, 6, np.uint8)                   # built
    cls[(ndvi < 0.2) & (red > np.percentile(red, 50))] = 7   # bare
    cls[(ndvi >= 0.2) & (ndvi < 0.3)] = 2                    # grass
    cls[(ndvi >= 0.3) & (ndvi < 0.5)] = 4                    # crops
    cls[ndvi >= 0.5] = 1                                     # trees
    cls[ndwi > 0.1] = 0                                      # water
    profile.update(count=1, dtype="uint8", nodata=255, driver="GTiff")
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(cls, 1)
    return out


def load_all(url: str) -> dict:
    """Every sample of a prepared dataset once, as one normalised batch (one sensor and shape)."""
    from pretrain.data.exact import make_eval_loader
    from pretrain.data.webdataset import normalize_batch

    parts = [normalize_batch(b) for b in make_eval_loader(str(url), 64, 0, 1)]
    keep = [~b["pad"] for b in parts]
    out = {k: torch.cat([b[k][m] for b, m in zip(parts, keep)]) for k in parts[0]
           if isinstance(parts[0][k], torch.Tensor) and k not in ("pad", "index")}
    out["key"] = [k for b, m in zip(parts, keep) for k, keep_it in zip(b["key"], m.tolist()) if keep_it]
    out["sensor"] = parts[0]["sensor"]
    return out


def take(batch: dict, idx) -> dict:
    """Rows `idx` (list or tensor of indices) of a batch."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    return {k: (v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in idx.tolist()] if isinstance(v, list) else v)
            for k, v in batch.items()}


def chip_column(key: str) -> int:
    """Grid column of a chip from its key (`..._x<col>_y<row>_...`)."""
    return int(next(p for p in key.split("_") if p.startswith("x") and p[1:].lstrip("-").isdigit())[1:])


def retrieval_top1(emb_a: torch.Tensor, emb_b: torch.Tensor) -> float:
    """Share of rows i whose nearest row of emb_b (cosine) is row i: date A of a place finds the
    same place at date B among all places."""
    a, b = torch.nn.functional.normalize(emb_a, dim=1), torch.nn.functional.normalize(emb_b, dim=1)
    return float(((a @ b.T).argmax(1) == torch.arange(len(a))).float().mean())


@torch.no_grad()
def date_embeddings(backbone, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled embeddings (B, D) of dates 0 and 1 of a multi-date batch (what fine-tuning
    uses), computed in eval mode; the backbone's mode is restored."""
    training = backbone.training
    backbone.eval()
    a, b = (backbone.forward_features(batch["image"][:, t], batch["wavelengths_nm"], batch["gsd_m"])["pooled"]
            for t in (0, 1))
    backbone.train(training)
    return a, b


def pair_accuracy(emb_a: torch.Tensor, emb_b: torch.Tensor) -> float:
    """Share of pairs (i, j != i) with cos(a_i, b_i) > cos(a_i, b_j): two dates of one place
    closer than two places (0.5 = no better than chance)."""
    a, b = torch.nn.functional.normalize(emb_a, dim=1), torch.nn.functional.normalize(emb_b, dim=1)
    sim = a @ b.T
    n = len(a)
    wins = (sim.diagonal()[:, None] > sim).float()
    return float(wins.sum() / (n * (n - 1)))         # the diagonal never wins against itself


def neighbour_label_similarity(emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cosine similarity of land-cover fraction vectors between each scene and its nearest
    other scene in embedding space: does the embedding group scenes by land cover?"""
    e = torch.nn.functional.normalize(emb, dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-2.0)
    y = torch.nn.functional.normalize(labels.float(), dim=1)
    return float((y * y[sim.argmax(1)]).sum(1).mean())


S2_WAVELENGTHS = (443.0, 490.0, 560.0, 665.0, 705.0, 740.0, 783.0, 842.0, 865.0, 945.0, 1610.0, 2190.0)


def seasonal_places(n: int, seed: int, dates: int = 3, size: int = 16, classes: int = 4,
                    world_seed: int = 123) -> dict:
    """A multi-date fixture whose answer is known: each place has its own layout of `classes`
    land-cover classes (smooth random blobs); each class has one 12-band spectrum per date, shared
    by every place (`world_seed`) and drawn independently per date, so raw pixels of two dates
    of one place hardly match while the layout, which a season-invariant encoder can learn,
    does. Plus a per-image gain and pixel noise. Places of another `seed` are unseen places of
    the same world. -> the batch contract, image (n, dates, 12, size, size)."""
    g = torch.Generator().manual_seed(seed)
    spectra = torch.randn(dates, classes, 12, generator=torch.Generator().manual_seed(world_seed))
    fields = torch.randn(n, classes, size // 4, size // 4, generator=g)
    cls = torch.nn.functional.interpolate(fields, size=(size, size), mode="bilinear").argmax(1)   # (n, H, W)
    image = spectra[:, cls].permute(1, 0, 4, 2, 3)                                               # (n, T, 12, H, W)
    image = image * (1 + 0.1 * torch.randn(n, dates, 1, 1, 1, generator=g)) \
        + 0.3 * torch.randn(image.shape, generator=g)
    fractions = torch.nn.functional.one_hot(cls.flatten(1), classes).float().mean(1)
    return {"image": image.contiguous(), "valid": torch.ones(n, dates, size, size, dtype=torch.bool),
            "wavelengths_nm": torch.tensor(S2_WAVELENGTHS).expand(n, 12), "gsd_m": torch.full((n,), 10.0),
            "times": torch.arange(dates, dtype=torch.float64).expand(n, dates) * 120.0,
            "lonlat": torch.zeros(n, 2), "landcover": fractions,
            "key": [f"place{seed}_{i}" for i in range(n)], "sensor": "fixture"}


if __name__ == "__main__":       # python -m tests.pretrain.contrastive_helpers OUT.tif: derived labels
    import sys

    from tests.conftest import SSL4EO_S2A
    print(derived_landcover(sorted(p for p in SSL4EO_S2A.iterdir() if p.is_dir()), Path(sys.argv[1])))


def train_losses(obj, batch: dict, steps: int = 30, lr: float = 3e-3) -> list[float]:
    """AdamW on `obj` for `steps` steps on one fixed batch (fresh views each step, seeded);
    calls the objective's `set_progress` hook when it has one. Returns the losses."""
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        loss = obj(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(obj, "set_progress"):
            obj.set_progress(step + 1, steps)
        losses.append(loss.item())
    return losses

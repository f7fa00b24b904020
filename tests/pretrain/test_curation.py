"""Curation rounds on real prepared shards: a set with a dominant near-duplicate mode (90 %
"ocean" chips) is rebalanced toward the rare land chips; ranks agree on the keep-list."""
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from data_prep.cli import main as prep
from pretrain.config import CurationSpec
from pretrain.curation.curator import Curator
from pretrain.data.exact import ExactOnce
from pretrain.models import build_backbone
from tests.conftest import MT_N9999, prep_recipe
from tests.fixtures import run_ranks

OCEAN_DN = [300, 400, 350, 250, 240, 220, 210, 200, 150, 190, 100, 80]    # B01..B12 order below
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
SIDE_M, LAND_FROM_M = 3600, 3200         # 360 px at 10 m; only the last 40 px rows are real land


def _ocean_product(dst: Path) -> Path:
    """A crop of the real Major-TOM cell where everything above LAND_FROM_M is flat, noisy water."""
    product = dst / MT_N9999.name
    product.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in sorted(MT_N9999.glob("*.tif")):
        with rasterio.open(f) as src:
            px = int(SIDE_M / src.res[0])
            data = src.read(window=Window(0, 0, px, px))
            profile = {**src.profile, "width": px, "height": px, "transform": src.window_transform(Window(0, 0, px, px))}
        if f.stem in BANDS:
            land = int(LAND_FROM_M / src.res[0])
            water = OCEAN_DN[BANDS.index(f.stem)] + rng.normal(0, 3, data[:, :land].shape)
            data[:, :land] = np.clip(water, 1, None).astype(data.dtype)
        elif f.stem == "cloud_mask":
            data[:] = 0
        with rasterio.open(product / f.name, "w", **profile) as out:
            out.write(data)
    return product


@pytest.fixture(scope="module")
def ocean(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ocean")
    product = _ocean_product(tmp / "src")
    out = tmp / "ds"
    assert prep(["run", str(prep_recipe(tmp, [product], out, size=32, min_valid_fraction=0.5,
                                        target_shard_mb=0.3)), "--quiet"]) == 0
    # which global index is ocean: flat chips (tiny spatial std in B04)
    is_ocean = {}
    for b in ExactOnce(str(out), rank=0, world=1, batch_size=16):
        std = b["image"][:, 0, 3].flatten(1).std(1)
        for i, s, p in zip(b["index"].tolist(), std.tolist(), b["pad"].tolist()):
            if not p:
                is_ocean[i] = s < 0.05
    return str(out), np.array([is_ocean[i] for i in range(len(is_ocean))])


def _spec(**kw):
    return CurationSpec(mode="kmeans", warmup_steps=0, every_steps=1, keep_fraction=0.3, levels=[12, 4],
                        resample_steps=2, kmeans_iters=10, embed_batch_size=16, **kw)


def test_kmeans_round_rebalances_toward_rare_modes(ocean, tmp_path):
    url, is_ocean = ocean
    assert 0.85 < is_ocean.mean() < 0.95 and (~is_ocean).sum() >= 8       # the fixture is what it claims
    torch.manual_seed(0)
    backbone = build_backbone("vit", "tiny", depth=2, embed_dim=64, num_heads=2, patch_size=8)
    cur = Curator(_spec(), url, total_samples=len(is_ocean), seed=0, out_dir=tmp_path)
    report = cur.run(backbone, step=5, rank=0, world=1, device=torch.device("cpu"), dtype=torch.float32)
    kept = cur.mask
    assert kept.sum() == round(0.3 * len(is_ocean)) == report["kept"]
    ocean_share = is_ocean[kept].mean()
    land_kept = (~is_ocean & kept).sum() / (~is_ocean).sum()
    # from ~90 % ocean to well under that; the rare land chips are mostly kept
    print("ocean share", is_ocean.mean(), "->", ocean_share, "land kept", land_kept)
    assert ocean_share < 0.75 and land_kept > 0.6, (ocean_share, land_kept)
    # report and figure on disk
    rec = json.loads((tmp_path / "curation.jsonl").read_text().splitlines()[0])
    assert rec["round"] == 0 and sum(rec["top_cluster_sizes"]) == len(is_ocean)
    assert sum(rec["top_cluster_kept"]) == kept.sum() and "sensor" in rec["makeup"]
    assert (tmp_path / "curation_round000.png").stat().st_size > 5000
    # state round trip: a resumed run continues with the same list
    other = Curator(_spec(), url, total_samples=len(is_ocean), seed=0, out_dir=tmp_path)
    other.load_state_dict(cur.state_dict())
    assert np.array_equal(other.mask, kept) and other.round == 1 and other.since_step == 5


def test_embedding_a_subset(ocean, tmp_path):
    url, is_ocean = ocean
    backbone = build_backbone("vit", "tiny", depth=1, embed_dim=32, num_heads=2, patch_size=8)
    cur = Curator(_spec(embed_subset=40), url, total_samples=len(is_ocean), seed=1, out_dir=tmp_path)
    report = cur.run(backbone, step=1, rank=0, world=1, device=torch.device("cpu"), dtype=torch.float32)
    assert report["embedded"] == 40 and cur.mask.sum() == 12


RANK_SCRIPT = r"""
import datetime, sys, numpy as np, torch, torch.distributed as dist
from pretrain.config import CurationSpec
from pretrain.curation.curator import Curator
from pretrain.models import build_backbone
rank, world, init, url, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=90))
torch.manual_seed(0)                                   # same weights on both ranks, as DeepSpeed ensures
backbone = build_backbone("vit", "tiny", depth=1, embed_dim=32, num_heads=2, patch_size=8)
spec = CurationSpec(mode="kmeans", warmup_steps=0, every_steps=1, keep_fraction=0.3, levels=[12, 4],
                    resample_steps=2, kmeans_iters=10, embed_batch_size=8)
cur = Curator(spec, url, n, seed=0, out_dir=out)
cur.run(backbone, step=3, rank=rank, world=world, device=torch.device("cpu"), dtype=torch.float32)
np.save(f"{out}/mask{rank}.npy", cur.mask)
dist.destroy_process_group()
"""


def test_two_ranks_agree_on_the_keep_list(ocean, tmp_path):
    url, is_ocean = ocean
    run_ranks(RANK_SCRIPT, 2, tmp_path, url, str(len(is_ocean)), str(tmp_path))
    m0, m1 = np.load(tmp_path / "mask0.npy"), np.load(tmp_path / "mask1.npy")
    assert np.array_equal(m0, m1) and m0.sum() == round(0.3 * len(is_ocean))
    # every sample was embedded once (rank 0's report counts the gathered features)
    rec = json.loads((tmp_path / "curation.jsonl").read_text().splitlines()[0])
    assert rec["embedded"] == len(is_ocean)


def test_token_grid_and_strided_features():
    from pretrain.curation.curator import pooled_features, token_grid
    assert token_grid(1, 4, 4, 2).tolist() == [0, 2, 8, 10]
    assert token_grid(2, 2, 3, 2).tolist() == [0, 2, 6, 8]
    backbone = build_backbone("vit", "tiny", depth=1, embed_dim=32, num_heads=2, patch_size=8).eval()
    x = torch.randn(2, 1, 4, 32, 32)
    wl, gsd = torch.tensor([490.0, 560, 665, 842]), torch.tensor([10.0, 10.0])
    full = pooled_features(backbone, x, wl, gsd, None, None, stride=1)
    assert torch.allclose(full, backbone(x, wl, gsd), atol=1e-5)
    assert pooled_features(backbone, x, wl, gsd, None, None, stride=2).shape == (2, 32)

"""Write small rasters in delivered layouts for reader tests (names, dtypes, nodata, tags as given)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_raster(path, data: np.ndarray, crs: str = "EPSG:32633", origin=(500000.0, 5000000.0), res: float = 10.0,
                 nodata=None, tags: dict | None = None, band_tags: list[dict] | None = None,
                 descriptions: list[str] | None = None, driver: str = "GTiff", **profile) -> Path:
    """data (H, W) or (C, H, W) -> a raster at `path` with that dtype. Returns the path."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                  dtype=data.dtype, crs=crs, transform=from_origin(origin[0], origin[1], res, res), **profile)
    if nodata is not None:
        kwargs["nodata"] = nodata
    with rasterio.open(path, "w", **kwargs) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)
        for i, t in enumerate(band_tags or [], start=1):
            dst.update_tags(i, **t)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
    return path


def run_ranks(script: str, world: int, tmp_path, *args: str, timeout: int = 180) -> list[str]:
    """Run `python -c script RANK WORLD INIT_URL *args` as `world` real processes that meet at a
    file:// rendezvous in tmp_path (gloo); assert every rank exits 0; return their outputs."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    init = f"file://{tmp_path}/rendezvous"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), str(world), init, *args], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    try:
        outs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    return outs

"""`eofm-prep run`: archives -> chips -> shards + manifest.json."""
from __future__ import annotations

import logging

import fsspec
from tqdm import tqdm

from data_prep import chips, manifest
from data_prep.config import PrepConfig
from data_prep.recipe import save_recipe, to_dict
from data_prep.sources import ProductError, find_products, open_product
from data_prep.stats import DatasetStats
from data_prep.writers import WRITERS

log = logging.getLogger("eofm.prep")


class PrepError(RuntimeError):
    """The run cannot start or produced nothing; the message says why."""


def check_output(cfg: PrepConfig, recipe: dict) -> str:
    """Refuse to mix datasets. Returns 'new', 'complete' (same recipe, done) or 'overwrite'."""
    fs, root = fsspec.core.url_to_fs(cfg.output.path)
    if not fs.exists(root):
        return "new"
    entries = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    if not entries:
        return "new"
    if manifest.NAME not in entries:
        if cfg.output.overwrite and set(entries) <= {"shards", "config.yaml"}:
            return "overwrite"
        raise PrepError(f"{cfg.output.path}: folder is not empty and holds no eofm manifest.json; "
                        "choose an empty or new output.path")
    old = manifest.read(cfg.output.path)
    if old.get("recipe_sha256") == manifest.recipe_digest(recipe):
        return "complete"
    if cfg.output.overwrite:
        return "overwrite"
    diff = _first_difference(old.get("recipe", {}), recipe)
    raise PrepError(f"{cfg.output.path}: already holds a different dataset (recipe differs at {diff}); "
                    "choose another output.path or set output.overwrite=true")


def _first_difference(a, b, prefix="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')}: {a!r} -> {b!r}"


def _clear(url: str) -> None:
    fs, root = fsspec.core.url_to_fs(url)
    for name in (manifest.NAME, "shards"):
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}", recursive=True)


def run(cfg: PrepConfig, progress: bool = True) -> dict:
    """Prepare the dataset described by `cfg`; returns the manifest."""
    recipe = to_dict(cfg)
    state = check_output(cfg, recipe)
    if state == "complete":
        log.info("%s already holds this dataset (same recipe); nothing to do", cfg.output.path)
        return manifest.read(cfg.output.path)
    if state == "overwrite":
        _clear(cfg.output.path)
    fs, root = fsspec.core.url_to_fs(cfg.output.path)
    fs.makedirs(root, exist_ok=True)
    save_recipe(cfg, cfg.output.path)

    products: list[dict] = []
    todo: list[tuple] = []
    for spec in cfg.sources:
        kinds = None if spec.kind == "auto" else [spec.kind]
        for path in spec.paths:
            try:
                found, unknown = find_products(path, kinds)
            except ProductError as err:
                products.append({"path": path, "outcome": "skipped", "reason": str(err)})
                continue
            if not found and not unknown:
                products.append({"path": path, "outcome": "skipped", "reason": f"{path}: no products found"})
            products += [{"path": u, "outcome": "skipped", "reason": f"{u}: {why}"} for u, why in unknown]
            todo += [(spec, kind, p) for kind, p in found]

    writer = WRITERS[cfg.output.format](cfg.output.path, cfg.output.shard_prefix,
                                        int(cfg.output.target_shard_mb * 2**20))
    stats = DatasetStats()
    sensors: dict[str, dict] = {}
    size, stride = cfg.chips.size, cfg.chips.stride or cfg.chips.size
    bar = tqdm(todo, desc="prep", unit="product", disable=not progress)
    try:
        for spec, kind, path in bar:
            record = {"path": path, "kind": kind}
            product_stats = DatasetStats()
            writer.begin()
            try:
                scene = open_product(kind, path, resampling=spec.resampling)
                record.update(product_id=scene.product_id, sensor=scene.sensor, time=scene.time,
                              radiometry=scene.radiometry,
                              checksum="sha256:" + manifest.sha256_files(scene.files))
                written = dropped = 0
                best = 0.0
                for sample, frac in chips.cut(scene, size, stride, cfg.chips.min_valid_fraction):
                    best = max(best, frac)
                    if sample is None:
                        dropped += 1
                        continue
                    writer.add(sample)
                    product_stats.add_sample(sample)
                    written += 1
                if not written:
                    raise ProductError(
                        f"{path}: no valid pixels (all-nodata or fully masked product)" if best == 0.0 else
                        f"{path}: none of its {dropped} chips reaches min_valid_fraction "
                        f"{cfg.chips.min_valid_fraction} (best {best:.2f})")
            except (ProductError, OSError) as err:
                writer.rollback()
                record.update(outcome="skipped", reason=str(err))
                log.warning("skipped %s: %s", path, err)
            else:
                writer.commit()
                stats.merge(product_stats)
                record.update(outcome="written", chips=written, dropped_low_valid=dropped)
                sensors.setdefault(scene.sensor, {"bands": scene.bands, "wavelengths_nm": scene.wavelengths_nm,
                                                  "gsd_m": scene.gsd_m, "units": scene.units})
            products.append(record)
            bar.set_postfix(chips=sum(p.get("chips", 0) for p in products))
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    summary = stats.summary()
    for sensor, info in sensors.items():
        info["stats"] = {b: summary.get(sensor, {}).get(b) for b in info["bands"]}
    m = manifest.build(recipe, products, shards, sensors)
    if m["samples"] == 0:
        reasons = "; ".join(p["reason"] for p in products if p.get("reason")) or "no products"
        raise PrepError(f"no chips written: {reasons}")
    manifest.write(cfg.output.path, m)
    return m

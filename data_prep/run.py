"""`eofm-prep run` / `merge`: archives -> chips -> shards + manifest.json, parallel, splittable, resumable.

1. Plan: list every product under the recipe's sources (sorted), one unit each; the plan is
   saved as `<out>/plan.json` (identical on every node that lists the same archive).
2. Resume: the ledger says which units are done; temp files and orphan shards are removed.
3. Work: this part's remaining units are dealt to local worker processes (spawned).
4. Merge: once every unit of the plan is in the ledger, manifest.json is written (by whichever
   part finishes last, or by `eofm-prep merge`).
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
from queue import Empty

import fsspec
from tqdm import tqdm

from data_prep import manifest
from data_prep.config import PrepConfig
from data_prep.ledger import Ledger
from data_prep.plan import deal, make_unit, part_of, units_from_products
from data_prep.recipe import save_recipe, to_dict
from data_prep.sources import ProductError, find_products
from data_prep.worker import run_worker

log = logging.getLogger("eofm.prep")
PLAN = "plan.json"


class PrepError(RuntimeError):
    """The run cannot start or produced nothing; the message says why."""


def check_output(cfg: PrepConfig, recipe: dict) -> str:
    """Refuse to mix datasets. Returns 'new', 'resume' (same recipe, unfinished),
    'complete' (same recipe, manifest written) or 'overwrite'."""
    fs, root = fsspec.core.url_to_fs(cfg.output.path)
    if not fs.exists(root) or not fs.ls(root, detail=False):
        return "new"
    entries = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    if manifest.NAME in entries:
        old = manifest.read(cfg.output.path)["recipe"]
    elif "config.yaml" in entries:
        import yaml
        old = yaml.safe_load(fs.cat_file(f"{root}/config.yaml"))
    else:
        raise PrepError(f"{cfg.output.path}: folder is not empty and holds no eofm dataset; "
                        "choose an empty or new output.path")
    if manifest.recipe_digest(old) == manifest.recipe_digest(recipe):
        return "complete" if manifest.NAME in entries else "resume"
    if cfg.output.overwrite:
        return "overwrite"
    raise PrepError(f"{cfg.output.path}: already holds a different dataset (recipe differs at "
                    f"{_first_difference(old, recipe)}); choose another output.path or set output.overwrite=true")


def _first_difference(a, b, prefix="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')}: {a!r} -> {b!r}"


def make_plan(cfg: PrepConfig) -> dict:
    """{'units': [...], 'unreadable': [...]} — a pure function of the listed archive."""
    units, unreadable = [], []
    for spec in cfg.sources:
        kinds = None if spec.kind == "auto" else [spec.kind]
        for path in spec.paths:
            try:
                found, unknown = find_products(path, kinds)
            except ProductError as err:
                unreadable.append({"path": path, "outcome": "skipped", "reason": str(err)})
                continue
            if not found and not unknown:
                unreadable.append({"path": path, "outcome": "skipped", "reason": f"{path}: no products found"})
            unreadable += [{"path": u, "outcome": "skipped", "reason": f"{u}: {why}"} for u, why in unknown]
            for unit in units_from_products(found):
                unit["resampling"] = spec.resampling
                units.append(unit)
    seen, unique = set(), []
    for u in units:                      # the same product listed twice is one unit
        if u["id"] not in seen:
            seen.add(u["id"])
            unique.append(u)
    if cfg.series.mode != "none":
        unique, more = series_units(unique, cfg.series)
        unreadable += more
    return {"units": unique, "unreadable": unreadable}


def series_units(units: list[dict], spec) -> tuple[list[dict], list[dict]]:
    """Group single-product units by footprint into series units, frames chosen by `spec.mode`.
    Returns (units, records of products that cannot be opened or are not selected)."""
    from data_prep.chips import chip_lonlat
    from data_prep.series import group_by_footprint, select_frames
    from data_prep.sources import Window, open_product

    items, records = [], []
    for u in units:
        try:
            s = open_product(u["kind"], u["paths"][0], resampling=u["resampling"])
        except ProductError as err:
            records.append({"path": u["paths"][0], "kind": u["kind"], "outcome": "skipped", "reason": str(err)})
            continue
        items.append({"unit": u, "sensor": s.sensor, "crs": s.crs, "transform": s.transform, "width": s.width,
                      "height": s.height, "time": s.time,
                      "lat": chip_lonlat(s, Window(0, 0, s.height, s.width))[1]})
    out = []
    for group in group_by_footprint(items):
        members = [items[i] for i in group]
        keep = select_frames([m["time"] for m in members], spec.mode, spec.max_frames, members[0]["lat"])
        chosen = [members[i] for i in keep]
        for i, m in enumerate(members):
            if i not in keep:
                records.append({"path": m["unit"]["paths"][0], "kind": m["unit"]["kind"], "outcome": "unused",
                                "reason": f"not selected by series.mode={spec.mode} (max_frames {spec.max_frames})"})
        paths = [m["unit"]["paths"][0] for m in chosen]
        unit = make_unit("series", paths)
        unit.update(kinds=[m["unit"]["kind"] for m in chosen], resampling=chosen[0]["unit"]["resampling"])
        out.append(unit)
    return out, records


def _save_plan(out: str, plan: dict) -> None:
    fs, root = fsspec.core.url_to_fs(out)
    path = f"{root}/{PLAN}"
    if fs.exists(path):
        old = json.loads(fs.cat_file(path))
        if [u["id"] for u in old["units"]] != [u["id"] for u in plan["units"]]:
            raise PrepError(f"{path}: the archive lists different products than when this dataset was started "
                            f"({len(old['units'])} then, {len(plan['units'])} now); use a new output.path")
        return
    with fs.open(path + ".part", "w") as f:
        json.dump(plan, f)
    fs.mv(path + ".part", path)


def _run_workers(jobs: list[dict], total: int, progress: bool) -> None:
    bar = tqdm(total=total, desc="prep", unit="product", disable=not progress)
    start, chips = time.time(), 0

    def tick(n_products: int, n_chips: int) -> None:
        nonlocal chips
        chips += n_chips
        bar.update(n_products)
        dt = max(time.time() - start, 1e-6)
        bar.set_postfix(chips=chips, chips_per_s=f"{chips / dt:.1f}")

    try:
        if len(jobs) == 1:               # in-process: simplest to debug, nothing to spawn
            class _Q:
                def put(self, item):
                    tick(*item)
            run_worker({**jobs[0], "queue": _Q()})
            return
        ctx = mp.get_context("spawn")
        with mp.Manager() as manager:
            queue = manager.Queue()
            with ctx.Pool(len(jobs)) as pool:
                result = pool.map_async(run_worker, [{**j, "queue": queue} for j in jobs])
                while not result.ready() or not queue.empty():
                    try:
                        tick(*queue.get(timeout=0.2))
                    except Empty:               # nothing reported in this interval
                        continue
                result.get()                    # re-raise a worker's error here
    finally:
        bar.close()


def _run_dask(jobs: list[dict], total: int, progress: bool, address: str | None) -> None:
    """The same jobs on a Dask cluster (its workers must reach the output URL). Progress per job."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise PrepError("the dask backend needs `pip install eofm[dask]` (dask.distributed)") from None
    bar = tqdm(total=total, desc="prep (dask)", unit="product", disable=not progress)
    start, chips = time.time(), 0
    with Client(address) as client:
        futures = {client.submit(run_worker, job, pure=False): len(job["units"]) for job in jobs}
        for fut in as_completed(futures):
            chips += fut.result()["chips"]           # re-raises a worker's error here
            bar.update(futures[fut])
            bar.set_postfix(chips=chips, chips_per_s=f"{chips / max(time.time() - start, 1e-6):.1f}")
    bar.close()


def dask_workers(address: str | None) -> int:
    from distributed import Client

    with Client(address) as client:
        return max(1, sum(client.nthreads().values()))


def run(cfg: PrepConfig, progress: bool = True, workers: int = 0, part: int = 0, parts: int = 1,
        scheduler: str | None = None) -> dict | None:
    """Prepare (or resume) part `part` of `parts` with `workers` local processes (0 = all cores),
    or on the Dask cluster at `scheduler` (its worker threads then set the job count).
    Returns the manifest when the dataset is complete, else None (other parts still to run)."""
    recipe = to_dict(cfg)
    state = check_output(cfg, recipe)
    if state == "complete":
        log.info("%s already holds this dataset (same recipe); nothing to do", cfg.output.path)
        return manifest.read(cfg.output.path)
    fs, root = fsspec.core.url_to_fs(cfg.output.path)
    if state == "overwrite":
        fs.rm(root, recursive=True)
    fs.makedirs(root, exist_ok=True)
    save_recipe(cfg, cfg.output.path)
    plan = make_plan(cfg)
    _save_plan(cfg.output.path, plan)

    ledger = Ledger(cfg.output.path)
    removed = ledger.cleanup()
    if removed:
        log.info("resuming: removed %d unfinished file(s) from an interrupted run", len(removed))
    done = ledger.done_units()
    todo = [u for u in part_of(plan["units"], part, parts) if u["id"] not in done]
    if done and todo:
        log.info("resuming: %d unit(s) already done, %d to go in part %d/%d", len(done), len(todo), part, parts)
    available = workers or (dask_workers(scheduler) if scheduler else os.cpu_count()) or 1
    n_workers = max(1, min(available, len(todo) or 1))
    jobs = [{"recipe": recipe, "out": cfg.output.path, "part": part, "worker": w, "units": units}
            for w, units in enumerate(deal(todo, n_workers))]
    if jobs and scheduler:
        _run_dask(jobs, len(todo), progress, scheduler)
    elif jobs:
        _run_workers(jobs, len(todo), progress)
    return merge(cfg.output.path, require_complete=parts == 1)


def merge(url: str, require_complete: bool = True) -> dict | None:
    """Write manifest.json from plan.json + the ledger when every unit is done."""
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(f"{root}/{PLAN}"):
        raise PrepError(f"{url}: no {PLAN} (not an eofm dataset being prepared)")
    plan = json.loads(fs.cat_file(f"{root}/{PLAN}"))
    import yaml
    recipe = yaml.safe_load(fs.cat_file(f"{root}/config.yaml"))
    ledger = Ledger(url)
    done = ledger.done_units()
    missing = [u for u in plan["units"] if u["id"] not in done]
    if missing:
        if require_complete:
            raise PrepError(f"{url}: {len(missing)} of {len(plan['units'])} products are not done yet "
                            f"(e.g. {missing[0]['paths'][0]}); run the missing parts, then `eofm-prep merge`")
        log.info("%d of %d products still to do in other parts; the last part to finish writes the manifest",
                 len(missing), len(plan["units"]))
        return None
    units = [done[u["id"]] for u in plan["units"]]
    shards = sorted((e["shard"] for e in ledger.entries()[0]), key=lambda r: r["path"])
    summary = ledger.stats().summary()
    sensors = {}
    for u in units:
        if u.get("outcome") == "written" and u["sensor_info"] is not None:
            sensor = (u.get("products") or [u])[0]["sensor"]
            sensors.setdefault(sensor, dict(u["sensor_info"]))
    for sensor, info in sensors.items():
        info["stats"] = {b: summary.get(sensor, {}).get(b) for b in info["bands"]}
    products = []
    for u in units:                      # a series unit lists each of its products
        base = {k: v for k, v in u.items() if k not in ("sensor_info", "products", "paths")}
        products += [{**base, **p, "series": u["id"]} for p in u["products"]] if "products" in u else [base]
    products += plan["unreadable"]
    m = manifest.build(recipe, products, shards, sensors)
    if recipe.get("landcover", {}).get("path"):
        from data_prep.landcover import LandcoverSpec
        spec = LandcoverSpec(**recipe["landcover"])
        codes, names = spec.table()
        m["landcover"] = {"source": spec.path, "codes": codes, "names": names, "resampling": "nearest",
                          "min_coverage": spec.min_coverage, "sample_key": "landcover.fractions (one per code)"}
    if m["samples"] == 0:
        reasons = "; ".join(p["reason"] for p in products if p.get("reason")) or "no products"
        raise PrepError(f"no chips written: {reasons}")
    manifest.write(url, m)
    return m

"""One prep worker: products in, sealed shards + ledger entries out.

Samples are routed to one writer per (sensor, frame/band/pixel shape), so every shard holds one
band set and shape (what per-sensor training batches and Zarr arrays need). A product is a
transaction: all its chips land in one open shard or none do. When a writer seals a shard, the
ledger records it with the products it completes and its statistics; the shard's statistics are
exact because they are computed from exactly the samples in it.
"""
from __future__ import annotations

import hashlib
import logging
import re

from data_prep import chips, manifest
from data_prep.config import PrepConfig
from data_prep.ledger import Ledger
from data_prep.recipe import build
from data_prep.landcover import LandcoverMap
from data_prep.regrid import coarsen
from data_prep.series import cut_series
from data_prep.sources import ProductError, open_product
from data_prep.stats import DatasetStats
from data_prep.writers import WRITERS

log = logging.getLogger("eofm.prep")


class Stream:
    """A writer plus what its open shard holds (product records and statistics)."""

    def __init__(self, writer):
        self.writer = writer
        self.units: list[dict] = []
        self.stats = DatasetStats()

    def sealed(self, records: list[dict], ledger: Ledger) -> None:
        for rec in records:
            ledger.record_shard(rec, self.units, self.stats)
            self.units, self.stats = [], DatasetStats()


def stream_prefix(sensor: str, shape: tuple, part: int, worker: int) -> str:
    tag = hashlib.sha1(repr(shape).encode()).hexdigest()[:6]
    return f"{re.sub(r'[^a-z0-9]+', '', sensor.lower())}-{tag}-p{part:03d}-w{worker:02d}"


def _product_record(kind: str, path: str, scene) -> dict:
    return {"path": path, "kind": kind, "product_id": scene.product_id, "sensor": scene.sensor, "time": scene.time,
            "radiometry": scene.radiometry, "checksum": "sha256:" + manifest.sha256_files(scene.files)}


def _attach_products(record: dict, unit: dict, products: list[dict]) -> None:
    """A series unit lists its products; a single-product unit's record is its product's."""
    if unit["kind"] == "series":
        record["products"] = products
    elif products:
        record.update(products[0])


def _samples(unit: dict, scenes: list, cfg: PrepConfig, spec):
    if unit["kind"] == "series":
        return cut_series(scenes, spec.size, spec.stride or spec.size, spec.min_valid_fraction,
                          cfg.series.min_frames, cfg.series.out_of_range)
    return chips.cut(scenes[0], spec.size, spec.stride or spec.size, spec.min_valid_fraction)


def process_unit(unit: dict, cfg: PrepConfig, streams: dict, ledger: Ledger, out: str, part: int, worker: int,
                 landcover=None) -> dict:
    """Chip one unit (a product, or a series of products of one footprint) into its stream; returns
    its record (ledgered at once when it has no samples, else with the shard that holds them)."""
    kinds = unit.get("kinds") or [unit["kind"]] * len(unit["paths"])
    record = {"id": unit["id"], "path": unit["paths"][0], "kind": unit["kind"]}
    if unit["kind"] == "series":
        record["paths"] = unit["paths"]
    products: list[dict] = []
    stream = None
    stats = DatasetStats()
    try:
        scenes = []
        for kind, path in zip(kinds, unit["paths"]):
            scene = open_product(kind, path, resampling=unit.get("resampling", "bilinear"))
            products.append(_product_record(kind, path, scene))
            scenes.append(scene)
        spec = cfg.chips.for_sensor(scenes[0].sensor)
        scenes = [coarsen(sc, spec.gsd_m) for sc in scenes]
        scene = scenes[0]
        record["sensor_info"] = {"bands": scene.bands, "wavelengths_nm": scene.wavelengths_nm,
                                 "gsd_m": scene.gsd_m, "units": scene.units}
        written = dropped = no_landcover = 0
        best = 0.0
        for sample, frac in _samples(unit, scenes, cfg, spec):
            best = max(best, frac)
            if sample is None:
                dropped += 1
                continue
            if landcover is not None:
                t, _, h, w = sample["image"].shape
                entry = landcover.entry(sample["crs"], sample["transform"], h, w)
                if entry is None and not cfg.landcover.keep_uncovered:
                    no_landcover += 1
                    continue
                if entry is not None:
                    sample["landcover"] = entry
            if stream is None:
                key = (scene.sensor, sample["image"].shape)
                if key not in streams:
                    prefix = stream_prefix(scene.sensor, sample["image"].shape, part, worker)
                    options = {"compression": cfg.output.zarr_compression} if cfg.output.format == "zarr" else {}
                    writer = WRITERS[cfg.output.format](out, prefix, int(cfg.output.target_shard_mb * 2**20),
                                                        ledger.next_index(prefix), **options)
                    streams[key] = Stream(writer)
                stream = streams[key]
                stream.writer.begin()
            stream.writer.add(sample)
            stats.add_sample(sample)
            written += 1
        if not written:
            raise ProductError(
                f"{record['path']}: no valid pixels (all-nodata or fully masked product)" if best == 0.0 else
                f"{record['path']}: no chip left: {dropped} below min_valid_fraction {spec.min_valid_fraction} "
                f"(best {best:.2f})" + (f", {no_landcover} without land-cover coverage" if no_landcover else ""))
    except (ProductError, OSError) as err:
        if stream is not None:
            stream.writer.rollback()
        record.update(outcome="skipped", reason=str(err))
        log.warning("skipped %s: %s", record["path"], err)
        _attach_products(record, unit, products)
        ledger.record_unit(record)
        return record
    record.update(outcome="written", chips=written, dropped_low_valid=dropped)
    if landcover is not None:
        record["dropped_no_landcover"] = no_landcover
    _attach_products(record, unit, products)
    stream.units.append(record)
    stream.stats.merge(stats)
    stream.sealed(stream.writer.commit(), ledger)
    return record


def run_worker(job: dict) -> dict:
    """Process job['units'] (spawn-safe entry point: plain data in, plain data out)."""
    cfg = build(PrepConfig, job["recipe"])
    ledger = Ledger(job["out"])
    streams: dict = {}
    landcover = LandcoverMap(cfg.landcover) if cfg.landcover.path else None
    queue = job.get("queue")
    written = 0
    try:
        for unit in job["units"]:
            rec = process_unit(unit, cfg, streams, ledger, job["out"], job["part"], job["worker"], landcover)
            written += rec.get("chips", 0)
            if queue is not None:
                queue.put((1, rec.get("chips", 0)))
        for stream in streams.values():
            stream.sealed(stream.writer.close(), ledger)
    except BaseException:
        for stream in streams.values():
            stream.writer.abort()
        raise
    return {"worker": job["worker"], "units": len(job["units"]), "chips": written}

"""The ledger: what a (possibly interrupted, possibly multi-node) prep run has finished.

`<out>/ledger/` holds one entry per sealed shard (`shard-<name>.json` + its statistics
`.npz`) naming the units whose samples it holds, and one entry per unit that produced no
samples (`unit-<id>.json`: skipped with a reason). The JSON is written last and atomically:
an entry exists only when everything it describes is on disk under its final name. A unit is
done when an entry names it; a shard without an entry (a crash between the two writes) is an
orphan and is removed before new work starts, together with temporary files.
"""
from __future__ import annotations

import json
import re

import fsspec

from data_prep.stats import DatasetStats, stats_from_bytes, stats_to_bytes

DIR = "ledger"


def _name(rel_path: str) -> str:
    return rel_path.replace("/", "__")


class Ledger:
    def __init__(self, url: str):
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.dir = f"{self.root}/{DIR}"
        # Entries are read once per Ledger and kept current with what this process records:
        # merge and every new writer stream would otherwise re-read thousands of JSON files.
        # Other processes' new entries are not seen; callers that need them make a new Ledger.
        self._cache: tuple[list[dict], list[dict]] | None = None

    def _put(self, name: str, data: bytes) -> None:
        self.fs.makedirs(self.dir, exist_ok=True)
        path = f"{self.dir}/{name}"
        with self.fs.open(path + ".part", "wb") as f:
            f.write(data)
        self.fs.mv(path + ".part", path)

    def record_shard(self, record: dict, units: list[dict], stats: DatasetStats) -> None:
        name = _name(record["path"])
        self._put(f"shard-{name}.npz", stats_to_bytes(stats))
        entry = {"shard": record, "units": units}
        self._put(f"shard-{name}.json", json.dumps(entry).encode())
        if self._cache is not None:
            self._cache[0].append(json.loads(json.dumps(entry)))

    def record_unit(self, unit: dict) -> None:
        self._put(f"unit-{unit['id']}.json", json.dumps(unit).encode())
        if self._cache is not None:
            self._cache[1].append(json.loads(json.dumps(unit)))

    def entries(self) -> tuple[list[dict], list[dict]]:
        """(shard entries, unit entries), read from storage on first use."""
        if self._cache is None:
            self._cache = self._read_entries()
        return self._cache

    def _read_entries(self) -> tuple[list[dict], list[dict]]:
        if not self.fs.exists(self.dir):
            return [], []
        shards, units = [], []
        for p in sorted(self.fs.ls(self.dir, detail=False)):
            base = p.rsplit("/", 1)[-1]
            if base.endswith(".json") and base.startswith(("shard-", "unit-")):
                doc = json.loads(self.fs.cat_file(p))
                (shards if base.startswith("shard-") else units).append(doc)
        return shards, units

    def done_units(self) -> dict[str, dict]:
        shards, units = self.entries()
        done = {u["id"]: u for u in units}
        for entry in shards:
            done.update({u["id"]: u for u in entry["units"]})
        return done

    def stats(self) -> DatasetStats:
        total = DatasetStats()
        for entry in self.entries()[0]:
            total.merge(stats_from_bytes(self.fs.cat_file(f"{self.dir}/shard-{_name(entry['shard']['path'])}.npz")))
        return total

    def next_index(self, prefix: str) -> int:
        """First shard index not used by a ledgered shard of this writer prefix."""
        pat = re.compile(re.escape(prefix) + r"-(\d{6})(\.tar)?$")
        used = [int(m.group(1)) for e in self.entries()[0]
                for m in [pat.search(e["shard"]["path"].rsplit("/", 1)[-1])] if m]
        return max(used, default=-1) + 1

    def cleanup(self) -> list[str]:
        """Remove temporary files and orphan shards (sealed but never ledgered). Returns what went."""
        known = {e["shard"]["path"] for e in self.entries()[0]}
        gone = []
        for rel in (".tmp",):
            if self.fs.exists(f"{self.root}/{rel}"):
                self.fs.rm(f"{self.root}/{rel}", recursive=True)
                gone.append(rel)
        for folder in ("shards", "store.zarr"):
            base = f"{self.root}/{folder}"
            if not self.fs.exists(base):
                continue
            for p in self.fs.ls(base, detail=False):
                name = p.rstrip("/").rsplit("/", 1)[-1]
                rel = f"{folder}/{name}"
                if name == "zarr.json" or rel in known:
                    continue
                self.fs.rm(p, recursive=True)
                gone.append(rel)
        if self.fs.exists(self.dir):
            for p in self.fs.ls(self.dir, detail=False):
                if p.endswith(".part"):
                    self.fs.rm(p)
                    gone.append(p.rsplit("/", 1)[-1])
        return gone

"""Random access to a prepared Zarr dataset: a map-style torch Dataset by global sample index.

Global index i counts samples in the order of manifest["shards"] (one Zarr group per record),
then by position inside each group: sample i lives in record s at position i - offset[s], with
offset[s] the number of samples in the records before s. The index is stable for a given
manifest, so keep-lists (pruning) and evaluation results can refer to samples by index; `key(i)`
and `index_of(key)` translate without reading pixels (from the records' `keys`).

Items are what the streaming loader yields per sample (`webdataset.to_tensors`): normalised with
the manifest statistics, invalid pixels 0 and flagged in `valid`.

Spawn-safe: the object holds only the manifest-derived lists and dicts until first use; Zarr
groups are opened lazily, cached per process (a DataLoader worker opens each group it needs
once), and dropped when the object is pickled or used from a forked child.

Only Zarr datasets have random access; a dataset of WebDataset tars is refused with a
ValueError (prepare it with `output.format=zarr`).
"""
from __future__ import annotations

import bisect
import os

from torch.utils.data import Dataset

from data_prep import manifest as manifest_mod
from data_prep.zarr_io import ShardReader, read_zarr_sample
from pretrain.data.index import sample_starts
from pretrain.data.normalize import normalization_table
from pretrain.data.webdataset import to_tensors


def dataset_root(dataset_url: str) -> str:
    """The dataset folder/URL (a manifest.json URL is accepted too)."""
    base = str(dataset_url).rstrip("/")
    return base.rsplit("/", 1)[0] if base.endswith(".json") else base


class ZarrSamples(Dataset):
    """Map-style dataset over a prepared Zarr dataset (see the module docstring).

    len(ds) = the manifest's sample count; ds[i] -> to_tensors(sample i); ds.key(i) -> its key;
    ds.index_of(key) -> i; ds.locate(i) -> (record index, position in the group).
    """

    def __init__(self, dataset_url: str):
        self.url = dataset_root(dataset_url)
        manifest = manifest_mod.read(str(dataset_url))
        records = manifest["shards"]
        tars = [r["path"] for r in records if r.get("format") != "zarr"]
        if tars:
            raise ValueError(
                f"{self.url}: holds {len(tars)} WebDataset tar shard(s) (e.g. {tars[0]}); random access "
                f"(ZarrSamples) needs a Zarr dataset: prepare it with output.format=zarr")
        self.paths = [r["path"] for r in records]
        self.counts = [int(r["samples"]) for r in records]
        self.starts = sample_starts(records)    # global index of each record's first sample
        self.total = total = sum(self.counts)
        if int(manifest.get("samples", total)) != total:
            raise ValueError(f"{self.url}: manifest says {manifest['samples']} samples, its shard records hold {total}")
        # keys per record, from the manifest; a record without them is read from its group's key array
        self._keys = [list(r["keys"]) if r.get("keys") is not None else None for r in records]
        for path, n, keys in zip(self.paths, self.counts, self._keys):
            if keys is not None and len(keys) != n:
                raise ValueError(f"{self.url}: shard record {path} lists {len(keys)} keys for {n} samples")
        self.norm = normalization_table(manifest)
        self._groups: dict[int, ShardReader] | None = None   # opened lazily, per process
        self._pid: int | None = None
        self._index: dict[str, int] | None = None

    # -- pickling: never carry open groups into another process --------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_groups"], state["_pid"], state["_index"] = None, None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def _group(self, s: int) -> ShardReader:
        if self._groups is None or self._pid != os.getpid():     # first use, or a forked child
            self._groups, self._pid = {}, os.getpid()
        g = self._groups.get(s)
        if g is None:
            g = self._groups[s] = ShardReader(self.url, self.paths[s])
        return g

    # -- indexing -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.total

    def _check(self, i: int) -> int:
        i = int(i)
        if not -self.total <= i < self.total:
            raise IndexError(f"{self.url}: sample index {i} out of range for {self.total} samples")
        return i % self.total

    def locate(self, i: int) -> tuple[int, int]:
        """Global index -> (record index in manifest['shards'], position inside its group)."""
        i = self._check(i)
        s = bisect.bisect_right(self.starts, i) - 1
        while self.counts[s] == 0:               # starts of empty records repeat; bisect lands on the last
            s -= 1
        return s, i - self.starts[s]

    def global_index(self, shard: int, position: int) -> int:
        """(record index, position) -> global index."""
        if not (0 <= shard < len(self.paths) and 0 <= position < self.counts[shard]):
            raise IndexError(f"{self.url}: no sample at position {position} of shard record {shard}")
        return self.starts[shard] + position

    def _record_keys(self, s: int) -> list[str]:
        keys = self._keys[s]
        if keys is None:                         # old manifests: read the key array (no pixels)
            keys = self._keys[s] = [str(k) for k in self._group(s).group["key"][:]]
        return keys

    def key(self, i: int) -> str:
        """Key of sample i, without reading pixels."""
        s, p = self.locate(i)
        return self._record_keys(s)[p]

    def keys(self) -> list[str]:
        """Every key, in global index order."""
        return [k for s in range(len(self.paths)) for k in self._record_keys(s)]

    def index_of(self, key: str) -> int:
        """Global index of the sample with this key (KeyError naming the dataset if absent)."""
        if self._index is None:
            index: dict[str, int] = {}
            for i, k in enumerate(self.keys()):
                if k in index:
                    raise ValueError(f"{self.url}: key {k} occurs twice (indices {index[k]} and {i})")
                index[k] = i
            self._index = index
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"{self.url}: no sample with key {key!r}") from None

    def raw(self, i: int) -> dict:
        """Sample i as data_prep.sample.decode gives it (stored integers, not normalised)."""
        s, p = self.locate(i)
        return read_zarr_sample(self.url, self.paths[s], p, reader=self._group(s))

    def __getitem__(self, i: int) -> dict:
        return to_tensors(self.raw(i), self.norm)

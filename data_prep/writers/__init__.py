"""Dataset writers. Each takes samples (see data_prep.sample) and returns shard records."""
from data_prep.writers.webdataset import ShardWriter
from data_prep.writers.zarr_store import ZarrShardWriter

WRITERS = {"webdataset": ShardWriter, "zarr": ZarrShardWriter}

__all__ = ["WRITERS", "ShardWriter", "ZarrShardWriter"]

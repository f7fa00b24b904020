"""Dataset writers. Each takes samples (see data_prep.sample) and returns shard records."""
from data_prep.writers.webdataset import ShardWriter

WRITERS = {"webdataset": ShardWriter}

__all__ = ["WRITERS", "ShardWriter"]

"""Shard preparation: real EO archives -> chips -> WebDataset shards + manifest.json."""

__version__ = "0.1.0"

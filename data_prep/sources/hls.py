"""HLS v2.0 S30/L30 granules. (Reader being written in this change.)"""
from __future__ import annotations

from data_prep.sources.scene import ProductError, Scene

KIND = "hls"


def match(path: str, names: set[str], is_dir: bool) -> bool:
    return False


def open_product(path: str, resampling: str = "bilinear") -> Scene:
    raise ProductError(f"{path}: the {KIND} reader is not available in this version")

"""The sample contract shared by writers and training loaders.

On disk (one WebDataset sample = files sharing a key):
  <key>.image.npy  stored integers (T, C, H, W); physical = stored * scale[c] + offset[c]
  <key>.valid.npy  bool (T, H, W); False = nodata / cloud / shadow / saturated
  <key>.json       metadata: sensor, bands, wavelengths_nm, gsd_m, times, lonlat, crs,
                   transform, product_ids, scale, offset, units, dtype (+ optional landcover)
Decoded, a sample is a dict with `key`, `image`, `valid` (numpy) and the metadata keys.
"""
from __future__ import annotations

import io
import json

import numpy as np

REQUIRED_META = ("sensor", "bands", "wavelengths_nm", "gsd_m", "times", "lonlat", "crs",
                 "transform", "product_ids", "scale", "offset", "units")


class SampleError(ValueError):
    """A sample does not follow the contract; the message names its key."""


def _npy_parts(a: np.ndarray) -> list:
    """The bytes np.save writes, as [header, zero-copy view of the array data]."""
    a = np.ascontiguousarray(a)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
    return [head.getvalue(), memoryview(a.reshape(-1)).cast("B")]


def encode_parts(sample: dict) -> dict[str, list]:
    """Like `encode`, each member as a list of byte buffers (writers stream them without copying)."""
    check(sample)
    return {
        "image.npy": _npy_parts(sample["image"]),
        "valid.npy": _npy_parts(sample["valid"].astype(bool, copy=False)),
        "json": [meta_json(sample)],
    }


def encode(sample: dict) -> dict[str, bytes]:
    """Sample dict -> {'image.npy': ..., 'valid.npy': ..., 'json': ...} (key handled by the writer)."""
    return {ext: b"".join(parts) for ext, parts in encode_parts(sample).items()}


def meta_json(sample: dict) -> bytes:
    """The sample's metadata (everything but key, image, valid) as the `.json` member's bytes."""
    meta = {k: v for k, v in sample.items() if k not in ("key", "image", "valid")}
    return json.dumps(meta, sort_keys=True).encode()


_NPY_HEADERS: dict[bytes, tuple] = {}   # header bytes -> (dtype, shape, fortran, data offset, element count)


def _npy(buf, key: str, name: str) -> np.ndarray:
    """A `.npy` payload -> array. A view of `buf` (no copy; writable when `buf` is a bytearray);
    headers are parsed once per distinct header (a shard repeats a handful of them)."""
    view = memoryview(buf)
    if bytes(view[:6]) != b"\x93NUMPY":
        raise SampleError(f"sample {key}: {name} is not a .npy payload")
    major = view[6]
    start = 10 if major == 1 else 12
    length = int.from_bytes(view[8:start], "little")
    header = bytes(view[:start + length])
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        shape, fortran, dtype = _parse_header(header, major)
        if dtype.hasobject:
            raise SampleError(f"sample {key}: {name} holds Python objects (refused)")
        parsed = (dtype, shape, fortran, len(header), int(np.prod(shape, dtype=np.int64)))
        if len(_NPY_HEADERS) < 4096:
            _NPY_HEADERS[header] = parsed
    dtype, shape, fortran, offset, count = parsed
    if len(view) - offset < count * dtype.itemsize:
        raise SampleError(f"sample {key}: {name} is truncated ({len(view) - offset} bytes for shape {shape})")
    a = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)


def _parse_header(header: bytes, major: int) -> tuple:
    stream = io.BytesIO(header)
    np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read(stream)


def decode(files: dict, key: str) -> dict:
    """Inverse of encode. `files` maps extension -> bytes (or bytearray: then the arrays are
    writable views of it, without a copy)."""
    try:
        image = _npy(files["image.npy"], key, "image.npy")
        valid = _npy(files["valid.npy"], key, "valid.npy")
        meta = json.loads(files["json"])
    except KeyError as err:
        raise SampleError(f"sample {key}: missing entry {err.args[0]}") from None
    except ValueError as err:
        if isinstance(err, SampleError):
            raise
        raise SampleError(f"sample {key}: cannot decode: {err}") from None
    sample = {"key": key, "image": image, "valid": valid, **meta}
    check(sample)
    return sample


def check(sample: dict) -> None:
    """Raise SampleError unless `sample` follows the contract."""
    key = sample.get("key", "?")
    missing = [k for k in ("key", "image", "valid", *REQUIRED_META) if k not in sample]
    if missing:
        raise SampleError(f"sample {key}: missing {', '.join(missing)}")
    img, valid = sample["image"], sample["valid"]
    if img.ndim != 4:
        raise SampleError(f"sample {key}: image must be (T, C, H, W), got shape {img.shape}")
    if img.dtype.kind not in "iu":
        raise SampleError(f"sample {key}: image must be stored as integers, got {img.dtype}")
    t, c, h, w = img.shape
    if valid.shape != (t, h, w):
        raise SampleError(f"sample {key}: valid must be {(t, h, w)}, got {valid.shape}")
    for name in ("bands", "wavelengths_nm", "scale", "offset"):
        if len(sample[name]) != c:
            raise SampleError(f"sample {key}: {name} has {len(sample[name])} entries for {c} bands")
    if len(sample["times"]) != t:
        raise SampleError(f"sample {key}: times has {len(sample['times'])} entries for {t} frames")


def physical(sample: dict) -> np.ndarray:
    """Stored integers -> float32 physical values (T, C, H, W)."""
    scale = np.asarray(sample["scale"], np.float32)[None, :, None, None]
    offset = np.asarray(sample["offset"], np.float32)[None, :, None, None]
    return sample["image"].astype(np.float32) * scale + offset

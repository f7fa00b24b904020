"""Augmentations suited to Earth observation, applied to one sample in the loader workers.

`augment(sample, spec, gen)` takes one sample as `to_tensors` (webdataset.py) produces it and
returns a new sample dict. Every random draw comes from the `torch.Generator` passed in, and
`sample_generator(seed, key, epoch)` seeds that generator from (seed, epoch, key) with sha1, so
the augmentation of a sample is a pure function of (seed, epoch, key): it does not depend on
the number of workers, the order samples arrive in, or the process (exact resume).

Sample tensors (no batch dim):
  image           (T, C, H, W) float32, normalised, invalid pixels 0
  valid           (T, H, W) bool
  wavelengths_nm  (C,)   times (T,)   lonlat (2,) [lon, lat] degrees   gsd_m ()   landcover (K,)

What is done, in this order (all frames T and all bands C always get the same geometry):
1. Random resized crop (`crop_scale`, `crop_ratio`, `out_size`): a window of area fraction
   s ~ U(crop_scale) of H*W and aspect w/h log-uniform in `crop_ratio` is placed uniformly
   (10 tries, then the whole chip with its aspect clamped into `crop_ratio`), and resized to
   out_size x out_size (out_size 0: back to the input's H x W). `crop_scale=[1, 1]` means no
   crop (the whole chip; it is still resized when out_size differs from the chip size).
   - Resampling is bilinear (antialiased when shrinking), normalised over VALID pixels only:
     image*valid and valid (as float) are resampled with the same weights and divided, so the
     zeros (or anything else) under invalid pixels never leak into valid ones. An output pixel
     is valid only where >= 99.99 % of its resampling weight comes from valid input pixels
     (in practice: all input pixels it draws on are valid); no pixel is ever made valid from
     invalid input, the valid area rather erodes by about one pixel at invalid borders.
     Invalid output pixels are 0, as the Batch contract wants. A crop that needs no resize is
     an exact slice.
   - GSD bookkeeping: gsd_m_new = gsd_m * crop_px / out_px (a 128 px crop resized to 64 px
     doubles the GSD, a 64 px crop resized to 128 px halves it). With a non-square crop the
     two axes scale differently (pixels are stretched, as in any random resized crop); the
     scalar gsd_m is then the geometric mean sqrt(gsd_x * gsd_y), i.e. it keeps the ground
     area per pixel right.
   - lonlat moves to the crop centre: the window centre's offset from the chip centre, in
     pixels times the input GSD, is converted to degrees on a sphere (R = 6371008.8 m) with a
     small-angle approximation, assuming the chip grid is north-up (UTM grid north is within
     a few degrees of true north; the error is a few metres for ordinary chips).
   - `landcover` fractions are NOT recomputed: they still describe the whole, uncropped chip.
2. Flips (`flips`): horizontal and vertical, each with probability 1/2.
3. Rotation (`rot90`): k * 90 degrees counter-clockwise, k uniform in 0..3 on square images.
   On non-square images k is drawn from {0, 2} so the sample keeps its shape (batches are
   grouped by shape; a 90-degree turn would split one sensor's stream into two groups).
   Flips and rotations keep gsd_m and lonlat (the chip centre does not move).
4. Noise (`noise_std`): additive Gaussian noise of that std in NORMALISED units (so per band
   it is noise_std band standard deviations), on valid pixels only; invalid pixels stay 0.
   Off by default: it changes the measured signal, and the model is meant to learn physical
   reflectances/backscatter. A brightness (multiplicative) jitter is deliberately not offered:
   on normalised data it needs the per-band means, and it breaks the physical meaning of
   the values (reflectance is not an arbitrary scale) that the band-agnostic embedding relies on.

`times`, `wavelengths_nm`, `landcover`, `key`, `sensor` and any other entry are passed through
unchanged (the same objects). With everything off (`spec.is_identity`) the returned dict holds
the very same tensors as the input.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

EARTH_RADIUS_M = 6371008.8          # mean Earth radius (IUGG), for the lonlat update
VALID_WEIGHT = 1.0 - 1e-4           # resampled valid weight needed for an output pixel to be valid
CROP_TRIES = 10                     # window draws before falling back to the whole chip


@dataclass
class AugmentSpec:
    flips: bool = True                # random horizontal and vertical flips (each p = 0.5)
    rot90: bool = True                # random multiple of 90 degrees (0/180 only on non-square chips)
    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])   # random resized crop: area fraction range; [1, 1] = off
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])   # crop aspect (width/height) range, log-uniform
    out_size: int = 0                 # output side in pixels after the crop (square); 0 = the input's H x W
    noise_std: float = 0.0            # additive Gaussian noise in normalised units on valid pixels; 0 = off (changes the signal)

    def __post_init__(self):
        for name in ("crop_scale", "crop_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"{name} must be a list of two numbers [min, max], got {value!r}")
            lo, hi = (float(v) for v in value)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi):
                raise ValueError(f"{name} must satisfy 0 < min <= max, got {value!r}")
            setattr(self, name, [lo, hi])
        if self.crop_scale[1] > 1.0:
            raise ValueError(f"crop_scale is an area fraction: max must be <= 1, got {self.crop_scale!r}")
        if isinstance(self.out_size, bool) or not isinstance(self.out_size, int) or self.out_size < 0:
            raise ValueError(f"out_size must be an int >= 0 (0 = the input size), got {self.out_size!r}")
        if not (math.isfinite(float(self.noise_std)) and self.noise_std >= 0.0):
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")
        self.noise_std = float(self.noise_std)

    @property
    def crop(self) -> bool:
        """True when windows smaller than the chip are drawn."""
        return self.crop_scale != [1.0, 1.0]

    @property
    def is_identity(self) -> bool:
        """True when augment() returns every sample unchanged, whatever its shape."""
        return not (self.flips or self.rot90 or self.crop or self.out_size or self.noise_std)


def sample_generator(seed: int, key: str, epoch: int = 0) -> torch.Generator:
    """A CPU generator seeded from sha1(seed, epoch, key): stable across processes, platforms and
    Python hash seeds, independent of worker count and sample order. Callers that fold the
    epoch into `seed` themselves can leave `epoch` at 0."""
    digest = hashlib.sha1(f"eofm-augment\x00{int(seed)}\x00{int(epoch)}\x00{key}".encode()).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def _uniform(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))


def _randint(gen: torch.Generator, n: int) -> int:
    """Uniform integer in [0, n)."""
    return int(torch.randint(n, (), generator=gen))


def _draw_window(spec: AugmentSpec, height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the crop window in an H x W chip."""
    if not spec.crop:
        return 0, 0, height, width
    area = height * width
    log_lo, log_hi = math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1])
    for _ in range(CROP_TRIES):
        target = area * _uniform(gen, *spec.crop_scale)
        ratio = math.exp(_uniform(gen, log_lo, log_hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(gen, height - h + 1), _randint(gen, width - w + 1), h, w
    # fallback: the largest centred window whose aspect lies in crop_ratio
    ratio = width / height
    if ratio < spec.crop_ratio[0]:
        w, h = width, max(1, min(height, int(round(width / spec.crop_ratio[0]))))
    elif ratio > spec.crop_ratio[1]:
        w, h = max(1, min(width, int(round(height * spec.crop_ratio[1])))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _resample(image: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid-normalised bilinear resize. image (T,C,h,w), valid (T,h,w) -> (T,C,oh,ow), (T,oh,ow)."""
    h, w = image.shape[-2:]
    antialias = size[0] < h or size[1] < w
    v = valid.to(image.dtype)[:, None]                                            # (T, 1, h, w)
    num = F.interpolate(image * v, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    den = F.interpolate(v, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    ok = den >= VALID_WEIGHT                                                      # (T, 1, oh, ow)
    out = torch.where(ok, num / den.clamp_min(VALID_WEIGHT), torch.zeros((), dtype=image.dtype))
    return out.contiguous(), ok[:, 0].contiguous()


def _crop_centre_lonlat(lonlat: torch.Tensor, d_col: float, d_row: float, gsd_m: float) -> torch.Tensor:
    """Move [lon, lat] by d_col pixels east and d_row pixels south (north-up grid, small angles)."""
    lon, lat = (float(v) for v in lonlat.tolist())
    east, north = d_col * gsd_m, -d_row * gsd_m
    new_lat = lat + math.degrees(north / EARTH_RADIUS_M)
    new_lon = lon + math.degrees(east / (EARTH_RADIUS_M * max(math.cos(math.radians(lat)), 1e-6)))
    new_lon = (new_lon + 180.0) % 360.0 - 180.0
    return torch.tensor([new_lon, max(-90.0, min(90.0, new_lat))], dtype=lonlat.dtype)


def draw_flips_rot90(spec: AugmentSpec, gen: torch.Generator, square: bool) -> tuple[list[int], int]:
    """The flip and rotation draws, in this order: horizontal flip, vertical flip, k.
    Returns (dims to flip among [-1, -2], k quarter turns counter-clockwise in the (-2, -1) plane)."""
    dims: list[int] = []
    if spec.flips:
        if _uniform(gen) < 0.5:
            dims.append(-1)
        if _uniform(gen) < 0.5:
            dims.append(-2)
    k = 0
    if spec.rot90:
        k = _randint(gen, 4) if square else 2 * _randint(gen, 2)
    return dims, k


def augment(sample: dict, spec: AugmentSpec, gen: torch.Generator) -> dict:
    """One sample -> a new, augmented sample dict (input tensors are never modified).

    sample: image (T,C,H,W) float, valid (T,H,W) bool, gsd_m () and lonlat (2,) tensors, plus
    any pass-through entries (wavelengths_nm (C,), times (T,), landcover (K,), key, sensor).
    Returns image (T,C,H',W') and valid (T,H',W') with (H',W') = (out_size, out_size), or
    (H, W) when out_size is 0; gsd_m and lonlat updated for a crop/resize (see module doc).
    """
    out = dict(sample)
    if spec.is_identity:
        return out
    image, valid = sample["image"], sample["valid"]
    if image.ndim != 4 or valid.shape != (image.shape[0], *image.shape[2:]):
        raise ValueError(f"sample {sample.get('key')}: expected image (T,C,H,W) and valid (T,H,W), "
                         f"got {tuple(image.shape)} and {tuple(valid.shape)}")
    height, width = image.shape[-2:]

    # 1. random resized crop (draws: window) with GSD and centre bookkeeping
    top, left, h, w = _draw_window(spec, height, width, gen)
    oh, ow = (spec.out_size, spec.out_size) if spec.out_size else (height, width)
    if (top, left, h, w) != (0, 0, height, width) or (oh, ow) != (height, width):
        image = image[..., top:top + h, left:left + w]
        valid = valid[..., top:top + h, left:left + w]
        if (oh, ow) == (h, w):
            image, valid = image.contiguous(), valid.contiguous()
        else:
            image, valid = _resample(image, valid, (oh, ow))
        gsd = sample["gsd_m"]
        fy, fx = h / oh, w / ow
        factor = fx if fx == fy else math.sqrt(fx * fy)
        if factor != 1.0:
            out["gsd_m"] = torch.as_tensor(float(gsd) * factor, dtype=gsd.dtype)
        d_col, d_row = left + w / 2 - width / 2, top + h / 2 - height / 2
        if "lonlat" in sample and (d_col or d_row):
            out["lonlat"] = _crop_centre_lonlat(sample["lonlat"], d_col, d_row, float(gsd))

    # 2. flips (draws: h, v), 3. rotation (draw: k)
    dims, k = draw_flips_rot90(spec, gen, square=image.shape[-1] == image.shape[-2])
    if dims:
        image, valid = torch.flip(image, dims), torch.flip(valid, dims)
    if k:
        image, valid = torch.rot90(image, k, (-2, -1)), torch.rot90(valid, k, (-2, -1))

    # 4. noise on valid pixels (normalised units)
    if spec.noise_std > 0:
        noise = torch.randn(image.shape, generator=gen, dtype=image.dtype) * spec.noise_std
        image = image + noise * valid[:, None].to(image.dtype)

    out["image"], out["valid"] = image.contiguous(), valid.contiguous()
    return out

"""Task heads and models, and layer-wise lr decay groups.

Image-level heads (classification, multi-label) sit on the encoder's `pooled` features:
  linear  Linear(D, K)
  mlp     LayerNorm -> Linear(D, D) -> GELU -> Linear(D, K)
Dense heads (segmentation: K class maps; regression: one map) read patch-grid feature maps
(finetune.backbone.feature_maps) and return (B, K, H, W) at input resolution:
  linear   1x1 conv on the last block's map, bilinear upsampling (the linear-probe decoder)
  light    the last block's map through conv + x2 upsampling stages down to stride 1
  upernet  UPerNet over 4 intermediate blocks: the ViT maps are rescaled to strides p/4, p/2,
           p, 2p (transposed convs / max-pool, as ViT-UPerNet does), then a pyramid-pooling
           module on the coarsest, a top-down FPN, and a fusion of all levels
Full-resolution pixel path (DenseModel(pixel_path=True), the default): token maps have stride p,
so a decoder that only reads them cannot draw a boundary inside a patch, and on spectrally
defined classes loses to a per-pixel linear model of the bands. Each dense head therefore also
gets the normalised input bands at full resolution (FullResFusion):
  pix     PixelPath: a per-pixel 1x1 projection of the bands (B, P, H, W): a free conv when the
          band set is known (fine-tuning: in_bands=C, any C, 224-band hyperspectral included),
          else with weights generated from the wavelengths (any band set, one set of weights)
  ctx     the decoder's last features (stride p for linear, 1 for light, p/4 for upernet),
          1x1 conv, bilinear to (H, W)
  logits  1x1 conv(cat[3x3 conv(cat[ctx, pix]) -> GN -> GELU, ctx, pix]) + skip(bands)
          (linear head: 1x1(ctx) + 1x1(pix) + skip(bands), still linear)
where skip is a per-pixel linear model of all C bands (known band set). The head thus contains
both a per-pixel linear model of the bands and the token-only decoder. DenseModel.warm_start
fits that per-pixel model (logistic / ridge regression on training pixels) and sets the head to
compute exactly it, the decoder's share at zero, so fine-tuning starts where the per-pixel
baseline ends (linear-probe-then-fine-tune); a fresh head trained by a few epochs of AdamW at
fine-tuning learning rates would not even reach the per-pixel model.
Dense heads use GroupNorm (not BatchNorm): small downstream batches, batch-size independent.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune.backbone import default_layers, feature_maps
from pretrain.models.patch_embed import SpectralPatchEmbed

IMAGE_HEADS = ("linear", "mlp")
DENSE_HEADS = ("linear", "light", "upernet")


def linear_head(dim: int, num_classes: int) -> nn.Module:
    """(B, dim) -> (B, num_classes)."""
    head = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.01)  # small logits at start: near-uniform softmax
    nn.init.zeros_(head.bias)
    return head


def mlp_head(dim: int, num_classes: int) -> nn.Module:
    """(B, dim) -> LayerNorm -> Linear(dim) -> GELU -> Linear -> (B, num_classes)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), linear_head(dim, num_classes))


HEADS = {"linear": linear_head, "mlp": mlp_head}


class Classifier(nn.Module):
    """encoder + image head: image (B, C, H, W), wavelengths_nm (C,), gsd_m (B,) -> logits (B, K).
    Single-label (softmax) and multi-label (sigmoid per class) differ only in the loss."""

    def __init__(self, encoder: nn.Module, num_classes: int, head: str = "linear"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"image head {head!r} unknown (known: {', '.join(HEADS)})")
        self.encoder = encoder
        self.head = HEADS[head](encoder.embed_dim, num_classes)

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(image, wavelengths_nm, gsd_m)["pooled"])


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """conv k x k -> GroupNorm -> GELU, same size."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.GroupNorm(math.gcd(8, cout), cout), nn.GELU())


class LinearDecoder(nn.Module):
    """[(B, D, h, w)] -> 1x1 conv on the last map -> (B, K, h, w) (upsampled by DenseModel).
    `features` (the last map itself, `channels` = D) is what the pixel path's fusion reads."""

    levels = 1

    def __init__(self, dim: int, num_out: int, patch_size: int):
        super().__init__()
        self.channels = dim
        self.proj = nn.Conv2d(dim, num_out, 1)

    def features(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return maps[-1]

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.proj(maps[-1])


class LightDecoder(nn.Module):
    """[(B, D, h, w)] -> 3x3 conv to `width`, then ceil(log2 p) stages of x2 upsampling +
    3x3 conv (halving channels, at least 32) -> 1x1 conv -> (B, K, ~h*p, ~w*p)."""

    levels = 1

    def __init__(self, dim: int, num_out: int, patch_size: int, width: int = 128):
        super().__init__()
        stages, c = [_conv(dim, width)], width
        for _ in range(max(0, math.ceil(math.log2(patch_size)))):
            stages += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(c, max(32, c // 2))]
            c = max(32, c // 2)
        self.stages = nn.Sequential(*stages)
        self.channels = c
        self.out = nn.Conv2d(c, num_out, 1)

    def features(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, channels, ~h*p, ~w*p): the last stage, before the 1x1 class layer."""
        return self.stages(maps[-1])

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.out(self.features(maps))


class UPerNetDecoder(nn.Module):
    """4 ViT maps (B, D, h, w) -> (B, K, 4h, 4w) (stride p/4 of the input).

    Rescale: level 0 x4 (two 2x2 transposed convs), level 1 x2, level 2 as is, level 3 /2
    (max-pool), giving a feature pyramid from one-resolution ViT features. Pyramid pooling
    (adaptive average pools 1, 2, 3, 6) on the coarsest level, lateral 1x1 convs, top-down
    additions, a 3x3 conv per level, all levels upsampled to the finest, concatenated, fused
    by a 3x3 conv, classified by a 1x1 conv.
    """

    levels = 4
    POOL_SCALES = (1, 2, 3, 6)

    def __init__(self, dim: int, num_out: int, patch_size: int, width: int = 128):
        super().__init__()
        up = lambda: nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.GroupNorm(math.gcd(8, dim), dim),  # noqa: E731
                                   nn.GELU())
        self.rescale = nn.ModuleList([
            nn.Sequential(up(), nn.ConvTranspose2d(dim, dim, 2, stride=2)),
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(2, ceil_mode=True),
        ])
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv(dim, width, 1)) for s in self.POOL_SCALES)
        self.ppm_out = _conv(dim + len(self.POOL_SCALES) * width, width)
        self.lateral = nn.ModuleList(_conv(dim, width, 1) for _ in range(3))
        self.fpn = nn.ModuleList(_conv(width, width) for _ in range(3))
        self.fuse = _conv(4 * width, width)
        self.channels = width
        self.out = nn.Conv2d(width, num_out, 1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.out(self.features(maps))

    def features(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, width, 4h, 4w): the fused pyramid (stride p/4), before the 1x1 class layer."""
        if len(maps) != 4:
            raise ValueError(f"UPerNet takes 4 feature maps, got {len(maps)}")
        x = [f(m) for f, m in zip(self.rescale, maps)]          # strides p/4, p/2, p, 2p
        top = x[3]
        pooled = [F.interpolate(p(top), size=top.shape[2:], mode="bilinear", align_corners=False) for p in self.ppm]
        lat = [lateral(m) for lateral, m in zip(self.lateral, x[:3])] + [self.ppm_out(torch.cat([top, *pooled], 1))]
        for i in (2, 1, 0):                                     # top-down pathway
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[2:], mode="bilinear", align_corners=False)
        outs = [conv(m) for conv, m in zip(self.fpn, lat[:3])] + [lat[3]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.fuse(torch.cat(outs, 1))


DECODERS = {"linear": LinearDecoder, "light": LightDecoder, "upernet": UPerNetDecoder}


class PixelPath(nn.Module):
    """The input bands at full resolution: image (B, C, H, W), wavelengths_nm (C,) ->
    (B, dim, H, W), a per-pixel linear projection (1x1, no norm, no activation: it stays linear
    in the bands). `image` is the normalised input the encoder gets.

    in_bands=C (what fine-tuning uses: the task's band set is known): a plain 1x1 conv, one free
    weight per band and channel, so any per-pixel linear model of the C bands with at most `dim`
    outputs is one setting of it, for 4 or 224 bands alike. in_bands=None: the (dim, C) weights
    are generated from the wavelengths (a 1x1 SpectralPatchEmbed, the generator of the encoder's
    patch embedding), so one head takes any band set."""

    def __init__(self, dim: int = 32, in_bands: int | None = None, rank: int = 4):
        super().__init__()
        self.dim, self.in_bands = dim, in_bands
        if in_bands:
            self.proj = nn.Conv2d(in_bands, dim, 1, bias=False)
        else:
            self.embed = SpectralPatchEmbed(dim, patch_size=1, rank=rank)

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor) -> torch.Tensor:
        b, c, h, w = image.shape
        if self.in_bands:
            if c != self.in_bands:
                raise ValueError(f"pixel path built for {self.in_bands} bands, got an image with {c}")
            return self.proj(image)
        return self.embed(image, wavelengths_nm).transpose(1, 2).reshape(b, self.dim, h, w)


class FullResFusion(nn.Module):
    """Decoder features at any stride + the pixel path -> (B, num_out, H, W) at input size.

    features (B, channels, h', w') at any stride, image (B, C, H, W) normalised bands:
    ctx = bilinear(1x1 conv(features) -> `width`) to (H, W); pix = PixelPath(image) (B, P, H, W);
    mixed = 3x3 conv(cat[ctx, pix]) -> GroupNorm -> GELU (B, width, H, W), where context and
    pixel spectra meet (boundaries inside a patch); logits = 1x1 conv(cat[mixed, ctx, pix])
    + skip(image), skip a 1x1 conv of all C bands (only with in_bands; zero at init). The last
    layer reads pix and ctx directly, so a per-pixel linear model of the normalised bands (and
    the upsampled decoder output) is one setting of it, whatever the decoder learns.
    `linear=True` (the linear head) keeps the head linear: logits = bilinear(1x1(features)) +
    1x1(pix) + skip(image), a linear model of the token features and the bands.
    """

    def __init__(self, channels: int, num_out: int, pixel_dim: int = 32, width: int = 64, linear: bool = False,
                 in_bands: int | None = None):
        super().__init__()
        self.pixel = PixelPath(pixel_dim, in_bands)
        self.linear = linear
        # With a known band set, a per-pixel linear model of all C bands added to the logits (any
        # C, any number of outputs): what warm_start sets, leaving the pixel features O(1).
        self.skip = nn.Conv2d(in_bands, num_out, 1) if in_bands else None
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)
        if linear:
            self.ctx = nn.Conv2d(channels, num_out, 1)
            self.out = nn.Conv2d(pixel_dim, num_out, 1, bias=False)
            return
        self.ctx = nn.Conv2d(channels, width, 1)
        self.mix = _conv(width + pixel_dim, width)
        self.out = nn.Conv2d(2 * width + pixel_dim, num_out, 1)

    def forward(self, features: torch.Tensor, image: torch.Tensor, wavelengths_nm: torch.Tensor) -> torch.Tensor:
        size = image.shape[2:]
        pix = self.pixel(image, wavelengths_nm)
        ctx = F.interpolate(self.ctx(features), size=size, mode="bilinear", align_corners=False)
        if self.linear:
            out = ctx + self.out(pix)
        else:
            out = self.out(torch.cat([self.mix(torch.cat([ctx, pix], 1)), ctx, pix], 1))
        return out if self.skip is None else out + self.skip(image)

    @torch.no_grad()
    def set_pixel_linear(self, weight: torch.Tensor, bias: torch.Tensor, on_features: bool = False) -> None:
        """Make the logits exactly `weight @ x + bias` per pixel, every other input of the class
        layer at zero weight (the decoder's share then grows from 0 in training). x: the bands
        (weight (K, C), into `skip`; needs in_bands) or, with on_features=True, the pixel path's
        features (weight (K, P), into the class layer)."""
        for conv in ((self.ctx, self.out) if self.linear else (self.out,)):
            conv.weight.zero_()
            if conv.bias is not None:
                conv.bias.zero_()
        if on_features:
            self.out.weight[:, self.out.weight.shape[1] - self.pixel.dim:, 0, 0] = weight.to(self.out.weight)
            (self.ctx if self.linear else self.out).bias.copy_(bias)
            return
        if self.skip is None:
            raise ValueError("set_pixel_linear on the bands needs a fusion built with in_bands")
        self.skip.weight[:, :, 0, 0] = weight.to(self.skip.weight)
        self.skip.bias.copy_(bias)


def _sample_pixels(images: np.ndarray, targets: np.ndarray, idx: np.ndarray, kind: str, seed: int,
                   max_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to max_pixels labelled pixels of samples `idx`: bands (M, C) float32, targets (M,)
    (int64 class ids or float32 values). All of them when few, else seeded random draws (no
    copy of the training images is made)."""
    n, (h, w) = len(idx), images.shape[2:]
    rng = np.random.default_rng(seed)
    if n * h * w <= 2 * max_pixels:
        flat = np.arange(n * h * w)
    else:
        flat = rng.choice(n * h * w, size=min(n * h * w, 4 * max_pixels), replace=False)
    i, r, c = np.unravel_index(flat, (n, h, w))
    y = targets[idx[i], r, c]
    ok = np.isfinite(y) if kind == "regression" else y >= 0
    i, r, c, y = i[ok], r[ok], c[ok], y[ok]
    if len(y) > max_pixels:
        keep = np.sort(rng.choice(len(y), size=max_pixels, replace=False))
        i, r, c, y = i[keep], r[keep], c[keep], y[keep]
    x = images[idx[i], :, r, c]                                   # (M, C)
    return (torch.from_numpy(np.ascontiguousarray(x, np.float32)),
            torch.from_numpy(y.astype(np.float32 if kind == "regression" else np.int64)))


def pixel_linear_start(images: np.ndarray, targets: np.ndarray, num_out: int, kind: str, scale=(0.0, 1.0),
                       seed: int = 0, max_pixels: int = 50_000) -> tuple[torch.Tensor, torch.Tensor]:
    """fit_pixel_linear on up to `max_pixels` labelled pixels of images (N, C, H, W) / targets
    (N, H, W) (regression values standardised with `scale`): weight (num_out, C), bias (num_out,)."""
    x, y = _sample_pixels(images, targets, np.arange(len(images)), kind, seed, max_pixels)
    if kind == "regression":
        y = (y - scale[0]) / scale[1]
    if not len(y):
        return torch.zeros(num_out, images.shape[1]), torch.zeros(num_out)
    return fit_pixel_linear(x, y, num_out, kind)


def fit_pixel_linear(x: torch.Tensor, y: torch.Tensor, num_out: int, kind: str, l2: float = 1e-4,
                     max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-pixel linear model: x (N, C) pixels (normalised bands or features), y (N,) class ids
    (segmentation: L2 logistic regression, finetune.probe's preconditioned L-BFGS) or
    standardised values (regression: ridge, closed form). Returns weight (num_out, C) and bias
    (num_out,), float32. l2: mean loss + l2/2 * ||weight||^2."""
    x = x.double()
    if kind == "regression":
        xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        reg = l2 * len(x) * torch.eye(xa.shape[1], dtype=x.dtype)
        reg[-1, -1] = 0.0                                        # intercept not penalised
        sol = torch.linalg.solve(xa.T @ xa + reg, xa.T @ y.double()[:, None])
        return sol[:-1].T.float(), sol[-1].float()
    from finetune.probe import fit_logistic

    w, b, _ = fit_logistic(x, y.long(), num_out, [np.arange(len(x))], [l2], max_iter)
    return w[0].T.float(), b[0].float()


class DenseModel(nn.Module):
    """encoder + dense decoder: image (B, C, H, W), wavelengths_nm (C,), gsd_m (B,) ->
    (B, num_out, H, W). The decoder reads feature_maps of `layers` (default: the last block for
    linear/light, 4 evenly spaced blocks for upernet).

    pixel_path=True (default): the decoder's features (stride p, 1 or p/4 by head) are fused
    with a full-resolution projection of the input bands (FullResFusion, `pixel_dim` channels),
    so the output resolves detail inside a patch and contains a per-pixel linear model of the
    bands. pixel_path=False: the token-only decoder, its logits resized bilinearly to (H, W).
    """

    def __init__(self, encoder: nn.Module, num_out: int, head: str = "upernet", layers: tuple[int, ...] = (),
                 pixel_path: bool = True, pixel_dim: int = 32, in_bands: int | None = None):
        super().__init__()
        if head not in DECODERS:
            raise ValueError(f"dense head {head!r} unknown (known: {', '.join(DECODERS)})")
        self.encoder = encoder
        cls = DECODERS[head]
        self.layers = tuple(layers) or (default_layers(encoder.depth) if cls.levels == 4 else (encoder.depth - 1,))
        if len(self.layers) != cls.levels and cls.levels == 4:
            raise ValueError(f"{head} needs 4 layers, got {self.layers}")
        self.head = cls(encoder.embed_dim, num_out, encoder.patch_size)
        self.pixel_path = pixel_path
        if pixel_path:   # the fusion (under head., so it trains as the head) replaces the decoder's class layer
            for name in ("out", "proj"):
                if isinstance(getattr(self.head, name, None), nn.Module):
                    setattr(self.head, name, None)
            self.head.fusion = FullResFusion(self.head.channels, num_out, pixel_dim,
                                             linear=cls is LinearDecoder, in_bands=in_bands)

    def forward(self, image: torch.Tensor, wavelengths_nm: torch.Tensor, gsd_m: torch.Tensor) -> torch.Tensor:
        maps = feature_maps(self.encoder, image, wavelengths_nm, gsd_m, self.layers)
        if self.pixel_path:
            return self.head.fusion(self.head.features(maps), image, wavelengths_nm)
        return self.decode(maps, image.shape[2:])

    def warm_start(self, images: np.ndarray, targets: np.ndarray, idx: np.ndarray, kind: str, scale=(0.0, 1.0),
                   wavelengths_nm=None, seed: int = 0, max_pixels: int = 50_000) -> dict:
        """Start fine-tuning from the per-pixel linear model (linear-probe-then-fine-tune): fit it
        on up to `max_pixels` labelled pixels (a seeded sample) of the training samples `idx` of
        images (N, C, H, W) (normalised, as the model gets them) and targets (N, H, W) (class
        ids, IGNORE = -1; or values, NaN = none, standardised here with `scale` = (mean, std)),
        then set the fusion so the head computes exactly that model, the decoder's share zero.
        Fine-tuning then starts where a per-pixel linear model ends instead of from scratch,
        which keeps short runs from doing worse than one. Needs pixel_path. Returns
        {pixels, seconds}."""
        import time

        if not self.pixel_path:
            raise ValueError("warm_start needs the pixel path (pixel_path=True)")
        t = time.time()
        fusion = self.head.fusion
        x, y = _sample_pixels(images, targets, np.asarray(idx), kind, seed, max_pixels)
        if not len(y):
            return {"pixels": 0, "seconds": 0.0}
        if kind == "regression":
            y = (y - scale[0]) / scale[1]
        num_out = fusion.out.weight.shape[0]
        on_features = not fusion.pixel.in_bands
        if on_features:    # generated projection: fit on its (fixed) features instead of the bands
            dev = next(fusion.parameters()).device
            wl = torch.as_tensor(wavelengths_nm, dtype=torch.float32, device=dev)
            with torch.no_grad():
                x = fusion.pixel(x.T[None, :, :, None].to(dev), wl)[0, :, :, 0].T.cpu()
        w, b = fit_pixel_linear(x, y, num_out, kind)
        dev = fusion.out.weight.device
        fusion.set_pixel_linear(w.to(dev), b.to(dev), on_features)
        return {"pixels": int(len(y)), "seconds": round(time.time() - t, 2)}

    def decode(self, maps: list[torch.Tensor], size) -> torch.Tensor:
        """Token-only path: feature maps -> (B, num_out, *size) (bilinear resize of the decoder's
        output); used when pixel_path is off."""
        out = self.head(maps)
        return out if out.shape[2:] == tuple(size) else F.interpolate(out, size=tuple(size), mode="bilinear",
                                                                      align_corners=False)


def layer_id(name: str, depth: int) -> int:
    """Depth of a model parameter: 0 patch embed + cls token, i+1 block i, depth+1 the rest
    (final norm and head)."""
    if name.startswith(("encoder.patch_embed.", "encoder.cls_token")):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups with lr * layer_decay ** (depth + 1 - layer_id): block i gets
    lr * layer_decay ** (depth - i), the patch embedding the least, the head the full lr.
    `model` has `.encoder` (Classifier or DenseModel).

    Why: pretrained low layers hold generic features that large updates would destroy, while
    the head starts from scratch. Biases, norms and the cls token get no weight decay.
    Groups are returned ordered from the input (lowest lr) to the head; each carries
    `lr_scale` so schedulers can rescale it and `layer_id` for inspection. Frozen parameters
    (requires_grad False) are left out.
    """
    depth = model.encoder.depth
    no_decay = {f"encoder.{n}" for n in model.encoder.no_weight_decay()}
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        decays = name not in no_decay and p.ndim > 1
        scale = layer_decay ** (depth + 1 - lid)
        g = groups.setdefault((lid, decays), {"params": [], "names": [], "layer_id": lid, "lr_scale": scale,
                                              "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]

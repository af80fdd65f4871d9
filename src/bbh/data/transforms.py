"""Batched image preprocessing (docs/protocol.md §5.2, 5.3): uint8 ``[N, C, H, W]`` in, float32 out.

Every function works on a whole batch at once on the input's device (no Python loop over images).
Random functions take an optional ``torch.Generator``; the random numbers are drawn on the generator's
device (the input's device when there is none, from the global RNG) and moved to the input's device, so
a seeded generator makes them reproducible on CPU and GPU alike.

Pipelines:

* MNIST: pixels / 255 in [0, 1], no augmentation (TF ``read_data_sets``).
* CIFAR ``paper`` (the authors' TF graph, the classic TF CIFAR-10 tutorial): train = zero-pad 32 -> 36,
  random 24x24 crop, random horizontal flip, random brightness (delta ~ U(-63, 63) on the 0..255 scale),
  random contrast (factor ~ U(0.2, 1.8), TF ``adjust_contrast``), per-image standardisation; eval = central
  24x24 crop, per-image standardisation. TF does not clip float images after brightness/contrast; neither
  do we.
* CIFAR ``standard``: train = zero-pad 4, random 32x32 crop, random flip, per-channel normalisation with
  the CIFAR-10 training mean/std on [0, 1]; eval = normalisation only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PAPER_CROP = 24
PAPER_PAD = 2
PAPER_MAX_BRIGHTNESS = 63.0
PAPER_CONTRAST = (0.2, 1.8)
STANDARD_PAD = 4

TrainTransform = Callable[..., Tensor]
EvalTransform = Callable[[Tensor], Tensor]


def _check_images(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")


def _uniform(n: int, low: float, high: float, x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float32)
    return (low + (high - low) * u).to(x.device)


def _randint(n: int, high: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randint(0, high, (n,), generator=generator, device=device).to(x.device)


def to_unit(x: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return x.to(torch.float32) / 255.0


def crop(x: Tensor, top: Tensor, left: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Per-image ``size`` x ``size`` crops at offsets ``top[i], left[i]``, mirrored left-right where ``flip[i]``.

    One advanced-indexing gather for the whole batch: ``out[i, c, r, s] = x[i, c, top[i] + r, left[i] + s']``
    with ``s' = size - 1 - s`` for flipped images.
    """
    _check_images(x)
    n, c, h, w = x.shape
    if size > h or size > w:
        raise ValueError(f"crop size {size} larger than the images ({h}x{w})")
    ar = torch.arange(size, device=x.device)
    rows = top.to(x.device)[:, None] + ar  # [N, size]
    cols_ar = ar.expand(n, size)
    if flip is not None:
        cols_ar = torch.where(flip.to(x.device)[:, None], size - 1 - ar, ar)
    cols = left.to(x.device)[:, None] + cols_ar  # [N, size]; offsets must keep the crop inside (not checked:
    # a check would synchronise with the GPU)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return x[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def center_crop(x: Tensor, size: int) -> Tensor:
    """The central ``size`` x ``size`` crop (offset ``(H - size) // 2``, as TF ``resize_image_with_crop_or_pad``)."""
    _check_images(x)
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise ValueError(f"crop size {size} larger than the images ({h}x{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def random_crop_flip(x: Tensor, size: int, pad: int = 0, flip: bool = True,
                     generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad ``pad`` pixels on each side, take a random ``size`` crop per image, flip half of them.

    Offsets are uniform on ``0..H + 2 pad - size`` (TF ``random_crop``); each image is mirrored with
    probability 1/2 (TF ``random_flip_left_right``). Draw order: row offsets, column offsets, flips.
    """
    _check_images(x)
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    n, _, h, w = x.shape
    if size > h or size > w:
        raise ValueError(f"crop size {size} larger than the padded images ({h}x{w})")
    top = _randint(n, h - size + 1, x, generator)
    left = _randint(n, w - size + 1, x, generator)
    flips = _uniform(n, 0.0, 1.0, x, generator) < 0.5 if flip else None
    return crop(x, top, left, size, flips)


def random_brightness(x: Tensor, max_delta: float, generator: torch.Generator | None = None) -> Tensor:
    """Add one delta ~ U(-max_delta, max_delta) per image (TF ``random_brightness``; no clipping)."""
    _check_images(x)
    delta = _uniform(x.shape[0], -max_delta, max_delta, x, generator)
    return x + delta.to(x.dtype)[:, None, None, None]


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """TF ``adjust_contrast``: ``(x - m) * factor + m`` with ``m`` the mean of each channel of each image."""
    _check_images(x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor.to(x.dtype)[:, None, None, None] + mean


def random_contrast(x: Tensor, lower: float, upper: float, generator: torch.Generator | None = None) -> Tensor:
    """:func:`adjust_contrast` with one factor ~ U(lower, upper) per image (TF ``random_contrast``)."""
    return adjust_contrast(x, _uniform(x.shape[0], lower, upper, x, generator))


def per_image_standardize(x: Tensor) -> Tensor:
    """TF ``per_image_standardization``: ``(x - mean) / max(std, 1 / sqrt(C H W))`` per image (population std)."""
    _check_images(x)
    x = x.to(torch.float32) if not x.is_floating_point() else x
    numel = x[0].numel() if x.shape[0] else 1
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, correction=0)
    return (x - mean) / std.clamp_min(1.0 / math.sqrt(numel))


def normalize(x: Tensor, mean: tuple[float, ...] = CIFAR_MEAN, std: tuple[float, ...] = CIFAR_STD) -> Tensor:
    """Per-channel ``(x - mean) / std`` of float images."""
    _check_images(x)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


# ---- the pipelines -------------------------------------------------------------------------------------


def mnist_train(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """MNIST training images: [0, 1] floats, no augmentation (``generator`` is ignored)."""
    return to_unit(x)


def mnist_eval(x: Tensor) -> Tensor:
    """MNIST evaluation images: [0, 1] floats."""
    return to_unit(x)


def cifar_paper_train(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The authors' CIFAR training distortions (docs/protocol.md §5.3): uint8 [N, 3, 32, 32] -> float [N, 3, 24, 24].

    Zero-pad to 36, random 24x24 crop, random flip, brightness delta U(-63, 63), contrast U(0.2, 1.8), then
    per-image standardisation. Draw order: crop rows, crop columns, flips, brightness, contrast.
    """
    x = random_crop_flip(x.to(torch.float32), PAPER_CROP, pad=PAPER_PAD, generator=generator)
    x = random_brightness(x, PAPER_MAX_BRIGHTNESS, generator)
    x = random_contrast(x, *PAPER_CONTRAST, generator=generator)
    return per_image_standardize(x)


def cifar_paper_eval(x: Tensor) -> Tensor:
    """The authors' CIFAR evaluation input: central 24x24 crop, per-image standardisation."""
    return per_image_standardize(center_crop(x, PAPER_CROP).to(torch.float32))


def cifar_standard_train(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The usual CIFAR augmentation: 4-pixel zero pad, random 32x32 crop, flip, per-channel normalisation."""
    x = random_crop_flip(x, x.shape[-1], pad=STANDARD_PAD, generator=generator)
    return normalize(to_unit(x))


def cifar_standard_eval(x: Tensor) -> Tensor:
    """Per-channel normalisation with the CIFAR-10 training mean/std, no crop."""
    return normalize(to_unit(x))


PIPELINES: dict[str, tuple[TrainTransform, EvalTransform]] = {
    "mnist": (mnist_train, mnist_eval),
    "cifar-paper": (cifar_paper_train, cifar_paper_eval),
    "cifar-standard": (cifar_standard_train, cifar_standard_eval),
}


__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "PIPELINES",
    "adjust_contrast",
    "center_crop",
    "cifar_paper_eval",
    "cifar_paper_train",
    "cifar_standard_eval",
    "cifar_standard_train",
    "crop",
    "mnist_eval",
    "mnist_train",
    "normalize",
    "per_image_standardize",
    "random_brightness",
    "random_contrast",
    "random_crop_flip",
    "to_unit",
]

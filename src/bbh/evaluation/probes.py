"""MNIST probes of the authors' code (docs/protocol.md §6.6; not in the paper): rotated digits and mixup.

The authors rotated single test images with ``scipy.ndimage.rotate(img, angle, reshape=False)`` and recorded
every one of 100 per-sample softmax vectors per image, to plot softmax vs angle:

* index 270 (a "three") and 202 (a "one"): 0, 10, ..., 90 degrees (``rot_*``) and 0, -10, ..., -90 (``rot_pos_*``
  — the authors' "pos" naming is inverted);
* index 217 (a "six"): 0 ... 180 and 0 ... -180 in 10-degree steps (19 images each);
* mixup λ · img[391] + (1 - λ) · img[270], λ = 0, 0.1, ..., 1 (eight <-> three).

:func:`rotate_images` is a pure-torch replacement of ``scipy.ndimage.rotate(..., reshape=False)``: rotation
about the image centre, same output size, zero padding outside the input, with the **same sign convention as
scipy**: a positive angle turns the image counter-clockwise as displayed (row 0 at the top, e.g. by
``imshow``), so that a rotation by 90 degrees equals ``torch.rot90(x, 1, dims=(-2, -1))`` (= ``np.rot90``).
The interpolation differs: bilinear here, scipy's default is a cubic spline (``order=3``), so values at
non-multiples of 90 degrees differ slightly (and scipy's spline can overshoot [0, 1], bilinear cannot).
Rotate in pixel space (MNIST: [0, 1], background 0), before any normalisation that shifts the background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.metrics import entropy
from ..posteriors.protocol import Method

ANGLES_90: tuple[int, ...] = tuple(range(0, 91, 10))
"""0, 10, ..., 90 (the authors' ``rot_*`` sets of images 270 and 202)."""
ANGLES_NEG_90: tuple[int, ...] = tuple(range(0, -91, -10))
"""0, -10, ..., -90 (the authors' ``rot_pos_*`` sets)."""
ANGLES_180: tuple[int, ...] = tuple(range(0, 181, 10))
"""0, 10, ..., 180 (image 217)."""
ANGLES_NEG_180: tuple[int, ...] = tuple(range(0, -181, -10))
"""0, -10, ..., -180 (image 217)."""
MIXUP_LAMBDAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
"""λ = 0, 0.1, ..., 1."""

ROTATION_PROBES: dict[str, tuple[int, tuple[int, ...]]] = {
    "rot_three": (270, ANGLES_90),
    "rot_pos_three": (270, ANGLES_NEG_90),
    "rot_one": (202, ANGLES_90),
    "rot_pos_one": (202, ANGLES_NEG_90),
    "rot_six": (217, ANGLES_180),
    "rot_pos_six": (217, ANGLES_NEG_180),
}
"""The authors' rotation probes: name -> (MNIST test index, angles in degrees)."""
MIXUP_PROBES: dict[str, tuple[int, int]] = {"mixup_three_eight": (391, 270)}
"""The authors' mixup probe: name -> (index of a, index of b) for λ·a + (1 - λ)·b (eight <-> three)."""


def _rotation_thetas(angles: Tensor, height: int, width: int) -> Tensor:
    """``affine_grid`` matrices [A, 2, 3] mapping output to input coordinates for counter-clockwise angles.

    In pixel units about the centre (x to the right, y down), a counter-clockwise rotation (as displayed) by a
    sends an output point to the input point ``x_in = cos a · x - sin a · y``, ``y_in = sin a · x + cos a · y``.
    ``affine_grid`` works in coordinates normalised by the half-sizes (W/2, H/2 with ``align_corners=False``),
    hence theta = diag(2/W, 2/H) · R · diag(W/2, H/2), which keeps non-square images undistorted.
    """
    rad = angles * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.zeros(angles.shape[0], 2, 3, dtype=angles.dtype, device=angles.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (height / width)
    theta[:, 1, 0] = sin * (width / height)
    theta[:, 1, 1] = cos
    return theta


def rotate_images(x: Tensor, angles_deg: Sequence[float] | Tensor | float) -> Tensor:
    """Rotate images about their centre, same size, zero padding, bilinear: ``[A, N, C, H, W]``.

    Args:
        x: images ``[N, C, H, W]`` (or ``[C, H, W]``, ``[H, W]``: treated as N = 1 / C = 1; the output then has
            N = 1 and C = 1 dimensions), floating point.
        angles_deg: A angles in degrees, counter-clockwise positive as displayed (scipy's convention:
            ``rotate_images(x, [a])[0]`` ≈ ``scipy.ndimage.rotate(x, a, axes=(-1, -2), reshape=False, order=1)``;
            90 degrees = ``torch.rot90(x, 1, dims=(-2, -1))``).
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("rotate_images expects a floating-point tensor")
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"rotate_images expects images [N, C, H, W], got {tuple(x.shape)}")
    angles = torch.as_tensor(angles_deg, dtype=torch.float64).reshape(-1)
    if angles.numel() == 0:
        raise ValueError("no angles given")
    if not bool(torch.isfinite(angles).all()):
        raise ValueError(f"angles must be finite, got {angles.tolist()}")
    n, c, h, w = x.shape
    a = angles.numel()
    # In float64 so that multiples of 90 degrees land on pixel centres to ~1e-15 (float32 grids are off by
    # ~1e-6 pixel, which blurs even a rotation by 0); cast back to x's dtype at the end.
    theta = _rotation_thetas(angles, h, w).to(device=x.device).repeat_interleave(n, dim=0)
    grid = F.affine_grid(theta, [a * n, c, h, w], align_corners=False)
    batch = x.to(torch.float64).unsqueeze(0).expand(a, n, c, h, w).reshape(a * n, c, h, w)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(a, n, c, h, w).to(x.dtype)


def _as_image(image: Tensor, name: str) -> Tensor:
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3:
        raise ValueError(f"{name} must be one image [C, H, W] (or [H, W]), got {tuple(image.shape)}")
    return image


@torch.no_grad()
def predict_probs(method: Method, images: Tensor, n_samples: int = 100) -> dict[str, Tensor]:
    """Per-sample softmax of ``images [A, ...]``: ``probs [A, S, K]``, ``mean_probs [A, K]`` (the predictive
    distribution), ``entropy [A]`` of the predictive in nats, ``predicted [A]`` (its argmax)."""
    with method.evaluating():
        outputs = method.sample_outputs(images, int(n_samples))  # [S, A, K]
    probs = outputs.float().softmax(-1).transpose(0, 1).contiguous()
    mean = probs.mean(1)
    return {"probs": probs, "mean_probs": mean, "entropy": entropy(mean, clamp=0.0), "predicted": mean.argmax(-1)}


def rotation_probe(method: Method, image: Tensor, angles: Sequence[float] | Tensor = ANGLES_90,
                   n_samples: int = 100) -> dict[str, Tensor]:
    """Predictions on rotated copies of one image (docs/protocol.md §6.6).

    Args:
        method: any bbh method (eval mode is the caller's business).
        image: ``[1, 28, 28]`` (any ``[C, H, W]`` or ``[H, W]``) in pixel units, background 0.
        angles: degrees, counter-clockwise positive (see :func:`rotate_images`).
        n_samples: posterior samples (MAP: 1, ensembles: M whatever is asked).

    Returns:
        ``angles [A]``, ``images [A, C, H, W]``, ``probs [A, S, K]`` (every per-sample softmax), ``mean_probs
        [A, K]``, ``entropy [A]`` (of the mean, nats), ``predicted [A]``.
    """
    image = _as_image(image, "image")
    angles_t = torch.as_tensor(angles, dtype=torch.float32).reshape(-1)
    images = rotate_images(image.unsqueeze(0), angles_t)[:, 0]
    return {"angles": angles_t, "images": images, **predict_probs(method, images, n_samples)}


def mixup_probe(method: Method, image_a: Tensor, image_b: Tensor, lambdas: Sequence[float] | Tensor = MIXUP_LAMBDAS,
                n_samples: int = 100) -> dict[str, Tensor]:
    """Predictions on λ · a + (1 - λ) · b for each λ (authors: a = test image 391, b = 270, λ = 0, 0.1, ..., 1).

    Returns ``lambdas [L]``, ``images [L, C, H, W]``, ``probs [L, S, K]``, ``mean_probs [L, K]``,
    ``entropy [L]``, ``predicted [L]``.
    """
    a, b = _as_image(image_a, "image_a"), _as_image(image_b, "image_b")
    if a.shape != b.shape:
        raise ValueError(f"image_a and image_b need the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    lam = torch.as_tensor(lambdas, dtype=a.dtype, device=a.device).reshape(-1)
    if lam.numel() == 0:
        raise ValueError("no lambdas given")
    view = lam.view(-1, *([1] * a.dim()))
    images = view * a + (1 - view) * b
    return {"lambdas": lam, "images": images, **predict_probs(method, images, n_samples)}


def author_probes(method: Method, test_images: Tensor, n_samples: int = 100) -> dict[str, dict[str, Tensor]]:
    """All of the authors' MNIST probes (:data:`ROTATION_PROBES`, :data:`MIXUP_PROBES`) on the test images
    ``[10000, 1, 28, 28]`` (or ``[10000, 784]``) in [0, 1]: ``{name: probe result}``."""
    if test_images.dim() == 2:
        test_images = test_images.view(-1, 1, 28, 28)
    results: dict[str, dict[str, Tensor]] = {}
    for name, (index, angles) in ROTATION_PROBES.items():
        results[name] = {"index": torch.tensor(index),
                         **rotation_probe(method, test_images[index], angles, n_samples)}
    for name, (ia, ib) in MIXUP_PROBES.items():
        results[name] = {"index": torch.tensor([ia, ib]),
                         **mixup_probe(method, test_images[ia], test_images[ib], n_samples=n_samples)}
    return results


def probe_records(result: dict[str, Tensor], key: str | None = None) -> list[dict[str, float | int]]:
    """The authors' long table (``get_pred_df``): one row per (image, sample, class) with ``prob``, ``class``,
    ``image`` (position in the probe), ``sample`` and the probe value (``angle`` or ``lambda``)."""
    key = key or ("angles" if "angles" in result else "lambdas")
    label = "angle" if key == "angles" else "lambda"
    probs, values = result["probs"], result[key]
    rows = []
    for i in range(probs.shape[0]):
        for s in range(probs.shape[1]):
            for k in range(probs.shape[2]):
                rows.append({"image": i, label: float(values[i]), "sample": s, "class": k,
                             "prob": float(probs[i, s, k])})
    return rows


__all__ = ["ANGLES_180", "ANGLES_90", "ANGLES_NEG_180", "ANGLES_NEG_90", "MIXUP_LAMBDAS", "MIXUP_PROBES",
           "ROTATION_PROBES", "author_probes", "mixup_probe", "predict_probs", "probe_records", "rotate_images",
           "rotation_probe"]

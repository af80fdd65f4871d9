"""Posterior weight plots (paper Figs. 5-9, docs/protocol.md §6.7): marginals, correlations and per-weight stds.

The authors drew 1 000 weight samples (200 runs x 5) from BbH / BbB / MNF, flattened each into one vector, and
plotted

* ``weights.png``: a 5 x 5 grid of histogram + KDE (seaborn ``distplot``) of the **first 25 scalars**;
* ``corr.png``: the Pearson correlation matrix of the first 500 scalars (LeNet conv1 kernel 5·5·1·20) or 432
  (ResNet stem 3·3·3·16) as a heat-map;
* ``weights_std.png``: the distribution of the per-weight standard deviation over all weights;

and the same for deep ensembles with the M member vectors. MAP and MC-Dropout have no weight posterior.

Flat order. :func:`weight_samples` concatenates the parameters in the model's parameter order, each tensor
flattened row-major. In PyTorch's layout (``layout="torch"``, default) a conv kernel is [out, in, kh, kw], so the
first 25 scalars of LeNet's conv1 are the 25 taps of filter 0 — one 5 x 5 filter. The authors' TensorFlow
kernels were HWIO, so their first 25 were the (0, 0) tap of all 20 filters plus the (0, 1) tap of filters
0-4; ``layout="tf"`` reproduces that order (conv kernels permuted to [kh, kw, in, out], dense weights to
[in, out]). The first 500 (conv1) / 432 (ResNet stem) are the same set of scalars in both layouts, ordered
differently.

Figures use matplotlib's Agg backend; every file is written atomically (:func:`bbh.io.atomic_write`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from ..core.functional import chunk_sizes  # noqa: E402
from ..core.io import atomic_write  # noqa: E402
from ..posteriors.protocol import Method  # noqa: E402

LAYOUTS = ("torch", "tf")
PAPER_NUM_SAMPLES = 1000
"""200 runs x 5 samples (docs/protocol.md §6.7)."""
LENET_CONV1_SCALARS = 500
"""5 x 5 x 1 x 20: the LeNet conv1 kernel, the authors' correlation plot on MNIST."""
RESNET_STEM_SCALARS = 432
"""3 x 3 x 3 x 16: the ResNet stem kernel, the authors' correlation plot on CIFAR-5."""


def _to_layout(t: Tensor, layout: str) -> Tensor:
    """Samples ``[n, *shape]`` reordered for the flat vector: unchanged (torch) or TF's kernel layout."""
    if layout == "torch" or t.dim() <= 2:  # scalars and vectors (biases) are the same in both
        return t
    # [n, out, in, *k] -> [n, *k, in, out] (dense [n, out, in] -> [n, in, out])
    dims = t.dim()
    return t.permute(0, *range(3, dims), 2, 1)


def _flatten(tensors: list[Tensor], layout: str) -> Tensor:
    """``[n, *shape]`` tensors -> one ``[n, D]`` matrix, each flattened row-major in ``layout``."""
    return torch.cat([_to_layout(t, layout).reshape(t.shape[0], -1) for t in tensors], dim=1)


def _weight_chunks(method: Method, n: int, layout: str, chunk_size: int) -> Iterator[Tensor]:
    """Flat weight samples in chunks ``[c, D]`` (float32, CPU); see :func:`weight_samples`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(map(repr, LAYOUTS))}")
    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"number of samples must be >= 1, got {n}")
    n, chunk = int(n), max(1, int(chunk_size))
    # (no_grad around each draw, never around a yield: the grad mode is global and the caller runs between)
    for k in chunk_sizes(n, chunk) if method.fixed_draws is None else [method.fixed_draws]:
        with torch.no_grad():
            draw = method.weight_samples(k)
            if draw is None:
                raise TypeError(f"{type(method).__name__} ({method.name}) has no weight posterior to sample "
                                f"(its weight_samples() is None: a point estimate, or noise on the activations "
                                f"rather than the weights)")
            flat = _flatten([t.detach().float().cpu() for t in draw.values()], layout)
        yield flat


def weight_samples(method: Method, n: int = PAPER_NUM_SAMPLES, *, layout: str = "torch",
                   first: int | None = None, chunk_size: int = 100) -> Tensor:
    """Flat posterior weight samples ``[n, D]`` (detached, float32 on the CPU).

    * BbH / BbB: ``method.sample(n)`` (in chunks of ``chunk_size``), the tensors of ``method.param_names``
      (the random parameters, in the model's parameter order) flattened and concatenated; D = number of
      random scalars, weights and biases.
    * MNF: per sample one call of every MNF layer's ``sample_weight()`` (in the model's layer order): a fresh
      z and ε per layer, ``W = μ ⊙ z + clip(σ) ε``. As the authors' ``get_weight``, **kernels only**: biases
      and the flow / r-model parameters are not included, and the per-layer z draws are independent (as in
      the forward pass).
    * Deep ensembles: the M member vectors, ``[M, D]`` whatever ``n`` is; D = the weights and biases of every
      Linear / Conv layer (the default random parameters of the other methods, so the first 500 scalars are
      again the LeNet conv1 kernel); normalisation parameters are left out.
    * MAP, MC-Dropout (any method whose ``weight_samples`` is None): ``TypeError`` — no weight posterior.

    Memory: ``n x D`` floats (LeNet-5, 1 000 samples: 1.7 GB); ``first`` keeps only the first scalars of every
    chunk (all the marginal and correlation plots need) and :func:`weight_std` gives the per-weight stds
    without holding all samples.

    Args:
        method: a trained method.
        n: number of samples (authors: 1 000).
        layout: ``"torch"`` (PyTorch parameter layouts) or ``"tf"`` (the authors' HWIO / [in, out] order).
        first: keep only the first ``first`` scalars of each sample (None: all D).
        chunk_size: samples drawn per call (memory: ``chunk_size`` x D for the draw).
    """
    keep = None if first is None else int(first)
    if keep is not None and keep < 1:
        raise ValueError(f"first must be >= 1, got {first}")
    parts = [c if keep is None else c[:, :keep].clone() for c in _weight_chunks(method, n, layout, chunk_size)]
    return torch.cat(parts, dim=0)


def weight_std(method: Method, n: int = PAPER_NUM_SAMPLES, *, chunk_size: int = 100) -> Tensor:
    """Per-weight standard deviation (ddof 1) over ``n`` posterior samples, ``[D]``, accumulated chunk by
    chunk (float64 sums), for :func:`plot_weight_std` on networks whose ``[n, D]`` samples are too large."""
    count = 0
    shift = total = total_sq = None
    for c in _weight_chunks(method, n, "torch", chunk_size):
        c64 = c.to(torch.float64)
        if shift is None:
            shift = c64[0].clone()  # sums of deviations from a first sample stay well conditioned
        d = c64 - shift
        total = d.sum(0) if total is None else total + d.sum(0)
        total_sq = (d * d).sum(0) if total_sq is None else total_sq + (d * d).sum(0)
        count += c.shape[0]
    if count < 2:
        raise ValueError("need at least 2 samples for a standard deviation")
    var = (total_sq - total * total / count) / (count - 1)
    return var.clamp(min=0).sqrt().float()


def _check_samples(samples: Tensor, min_rows: int = 2) -> Tensor:
    if not isinstance(samples, Tensor) or samples.dim() != 2:
        raise ValueError(f"samples must be a [n, D] tensor, got "
                         f"{tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__}")
    if samples.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} samples, got {samples.shape[0]}")
    return samples.detach().to(device="cpu", dtype=torch.float64)


def gaussian_kde(values: Tensor, grid: Tensor, bandwidth: float | None = None) -> Tensor:
    """Gaussian kernel density estimate of 1-d ``values`` on ``grid``.

    Bandwidth: Scott's rule h = σ̂ n^{-1/5} (scipy's and seaborn's default), σ̂ the sample std (ddof 1); a
    constant sample gets h = 1e-3 · max(1, |value|) (a spike instead of a division by zero).
    """
    v = values.detach().to(torch.float64).reshape(-1)
    g = grid.detach().to(torch.float64).reshape(-1)
    if bandwidth is None:
        sd = float(v.std()) if v.numel() > 1 else 0.0
        bandwidth = sd * v.numel() ** (-0.2) if sd > 0 else 1e-3 * max(1.0, float(v.abs().max()))
    z = (g[:, None] - v[None, :]) / bandwidth
    return torch.exp(-0.5 * z * z).mean(1) / (bandwidth * math.sqrt(2 * math.pi))


def weight_correlation(samples: Tensor, first: int | None = LENET_CONV1_SCALARS) -> Tensor:
    """Pearson correlation ``[F, F]`` of the first ``first`` scalars (all with None) over the samples (pandas
    ``corr``: NaN where a scalar is constant)."""
    s = _check_samples(samples)
    if first is not None:
        s = s[:, : int(first)]
    c = s - s.mean(0, keepdim=True)
    cov = c.t() @ c
    norm = torch.sqrt(torch.diagonal(cov))
    corr = cov / (norm[:, None] * norm[None, :])
    return corr.clamp(-1.0, 1.0)  # NaN (constant scalars) stays NaN


def _save(fig, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def plot_weight_marginals(samples: Tensor, path: str | Path, first: int = 25, bins: int = 30) -> Path:
    """Paper Fig. 5-style grid: histogram (density) and Gaussian KDE of each of the first ``first`` scalars,
    on a square-ish grid (5 x 5 for 25). Returns the path of the PNG."""
    s = _check_samples(samples)
    k = min(int(first), s.shape[1])
    if k < 1:
        raise ValueError(f"first must be >= 1, got {first}")
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat[k:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:k]):
        v = s[:, i]
        lo, hi = float(v.min()), float(v.max())
        pad = 0.1 * (hi - lo) if hi > lo else 1e-3 * max(1.0, abs(lo))
        grid = torch.linspace(lo - pad, hi + pad, 200, dtype=torch.float64)
        ax.hist(v.numpy(), bins=bins, range=(lo - pad, hi + pad), density=True, color="tab:blue", alpha=0.45)
        ax.plot(grid.numpy(), gaussian_kde(v, grid).numpy(), color="tab:blue", linewidth=1.2)
        ax.set_title(f"w[{i}]", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def plot_weight_correlation(samples: Tensor, path: str | Path, first: int = LENET_CONV1_SCALARS) -> Path:
    """Heat-map of the Pearson correlation of the first ``first`` scalars (LeNet conv1: 500, ResNet stem:
    :data:`RESNET_STEM_SCALARS`), colour scale [-1, 1]; constant scalars (NaN) are shown grey."""
    corr = weight_correlation(samples, first)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="lightgrey")
    im = ax.imshow(corr.numpy(), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="Pearson correlation")
    ax.set_title(f"correlation of the first {corr.shape[0]} weights ({samples.shape[0]} samples)")
    ax.set_xlabel("weight index")
    ax.set_ylabel("weight index")
    fig.tight_layout()
    return _save(fig, path)


def plot_weight_std(samples: Tensor, path: str | Path, bins: int = 50, log_x: bool = False) -> Path:
    """Histogram of the per-weight standard deviation (ddof 1) over the samples, all D weights.

    ``samples`` may also be the per-weight stds themselves (a 1-d tensor ``[D]``), e.g. accumulated in chunks
    for a network whose ``[n, D]`` samples do not fit in memory. ``log_x`` uses log-spaced bins on a log axis
    (useful when the stds span decades, e.g. BbB's σ ≈ 0.011 vs learnt ones).
    """
    if isinstance(samples, Tensor) and samples.dim() == 1:
        std = samples.detach().to(device="cpu", dtype=torch.float64)
    else:
        std = _check_samples(samples).std(0)
    if std.numel() == 0:
        raise ValueError("no weights")
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    values = std.numpy()
    if log_x:
        positive = values[values > 0]
        if positive.size == 0:
            raise ValueError("log_x needs some positive standard deviations")
        lo, hi = float(positive.min()), float(positive.max())
        edges = torch.logspace(math.log10(lo), math.log10(hi) + 1e-9, bins + 1).numpy()
        ax.hist(positive, bins=edges, color="tab:blue", alpha=0.7)
        ax.set_xscale("log")
    else:
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.7)
    ax.set_xlabel("per-weight standard deviation")
    ax.set_ylabel("number of weights")
    ax.set_title(f"{values.size} weights, median std {float(std.median()):.3g}")
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["LAYOUTS", "LENET_CONV1_SCALARS", "PAPER_NUM_SAMPLES", "RESNET_STEM_SCALARS", "gaussian_kde",
           "plot_weight_correlation", "plot_weight_marginals", "plot_weight_std", "weight_correlation",
           "weight_samples", "weight_std"]

"""Figures. matplotlib is imported with the non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ..core.io import atomic_write  # noqa: E402

METHOD_TITLES = {"bbh": "BbH", "map": "MAP", "hmc": "HMC (reference)", "mc-dropout": "MC-Dropout",
                 "ensemble": "Ensemble", "bbb": "BbB", "mnf": "MNF"}


def plot_toy(path: str | Path, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor,
             samples: dict[str, torch.Tensor], ylim: float = 100.0) -> Path:
    """Paper Fig. 1: one panel per method with data, x^3 dashed, predictive mean and +-1, 2, 3 std bands.

    Args:
        path: output PNG.
        x, y: training data [n, 1].
        grid: [G, 1].
        samples: ``{method: Tensor[S, G, 1]}`` function samples on the grid.
        ylim: symmetric y-axis limit (the paper's +-100).
    """
    g = grid.squeeze(-1).numpy()
    cols = min(4, len(samples))
    rows = -(-len(samples) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(samples):]:
        ax.set_visible(False)
    for ax, (name, s) in zip(axes.flat, samples.items()):
        mean = s.mean(0).squeeze(-1).numpy()
        std = (s.std(0) if s.shape[0] > 1 else torch.zeros_like(s[0])).squeeze(-1).numpy()
        for k, alpha in ((3, 0.12), (2, 0.18), (1, 0.28)):
            ax.fill_between(g, mean - k * std, mean + k * std, color="tab:blue", alpha=alpha, linewidth=0)
        ax.plot(g, g**3, "k--", linewidth=1, label="$x^3$")
        ax.plot(g, mean, color="tab:blue", linewidth=1.5, label="mean")
        ax.scatter(x.squeeze(-1).numpy(), y.squeeze(-1).numpy(), s=10, color="k", zorder=3)
        ax.set_title(METHOD_TITLES.get(name, name))
        ax.set_xlim(g[0], g[-1])
        ax.set_ylim(-ylim, ylim)
        ax.set_xlabel("x")
    for row in axes:
        row[0].set_ylabel("y")
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def _save(fig, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def plot_entropy_cdf(path: str | Path, entropies: dict[str, torch.Tensor], max_entropy: float,
                     title: str = "") -> Path:
    """Empirical CDFs of the predictive entropy / log K, one curve per set (paper's entropy-CDF plots:
    a confident model's in-distribution curve rises early, an uncertain one's outlier curve late)."""
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    for name, h in entropies.items():
        v = (h.flatten().sort().values / max_entropy).numpy()
        ax.plot(v, (torch.arange(1, len(v) + 1) / len(v)).numpy(), label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("entropy / log K")
    ax.set_ylabel("CDF")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_adversarial(path: str | Path, curves: dict[str, list[dict]], title: str = "") -> Path:
    """Paper Figs. 3/4: accuracy (solid) and mean entropy / log K (dashed) against the FGSM epsilon, one
    colour per run; ``curves[name]`` is a list of ``{"epsilon", "accuracy", "entropy"}``."""
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for i, (name, rows) in enumerate(curves.items()):
        color = f"C{i}"
        eps = [r["epsilon"] for r in rows]
        ax.plot(eps, [r["accuracy"] for r in rows], "-", color=color, label=name)
        ax.plot(eps, [r["entropy"] for r in rows], "--", color=color)
    ax.set_xlabel("epsilon")
    ax.set_ylabel("accuracy (solid), entropy / log K (dashed)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(path: str | Path, bins: dict[str, list[float]], title: str = "") -> Path:
    """Reliability diagram: accuracy against confidence per bin, the diagonal is perfect calibration;
    ``bins`` has ``lower``, ``upper``, ``accuracy``, ``confidence``, ``count`` lists."""
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    centres = [(lo + hi) / 2 for lo, hi in zip(bins["lower"], bins["upper"])]
    widths = [hi - lo for lo, hi in zip(bins["lower"], bins["upper"])]
    acc = [a if c else 0.0 for a, c in zip(bins["accuracy"], bins["count"])]
    ax.bar(centres, acc, width=widths, edgecolor="k", linewidth=0.5, alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)

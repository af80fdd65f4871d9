"""Figures. matplotlib is imported with the non-interactive Agg backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .io import atomic_write  # noqa: E402

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

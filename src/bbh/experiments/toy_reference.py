"""The HMC reference posterior of the toy regression (paper Fig. 1), cached on disk.

:func:`toy_hmc` samples the posterior of the toy's 1-100-1 network with :func:`bbh.reference.hmc.posterior_hmc`
and caches the predictive on the grid; :func:`check_step_sizes` compares two step sizes;
:func:`predictive_summary` is the RMSE / inside-outside std summary every toy panel is scored by.
``python -m bbh.experiments.toy_reference`` runs both and prints the summaries.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..core import io
from ..core.functional import forward_samples
from ..core.likelihoods import Gaussian
from ..data.toy import make_toy_data, toy_function, toy_grid
from ..models import MLP
from ..reference.hmc import effective_sample_size, posterior_hmc

CACHE_VERSION = 1
"""Bumped by hand when the meaning of the cached toy result changes (the source hash catches the rest)."""


def predictive_summary(samples: torch.Tensor, grid: torch.Tensor) -> dict[str, float]:
    """RMSE of the predictive mean against x^3 and mean predictive std inside and outside the data.

    Args:
        samples: function values [S, G, 1] on the grid.
        grid: [G, 1].
    """
    mean, std = samples.mean(0).squeeze(-1), samples.std(0, unbiased=samples.shape[0] > 1).squeeze(-1)
    if samples.shape[0] == 1:
        std = torch.zeros_like(mean)
    x = grid.squeeze(-1)
    inside = x.abs() <= 4
    outside = (x.abs() >= 5) & (x.abs() <= 6)
    return {
        "rmse": float(((mean - toy_function(x)) ** 2).mean().sqrt()),
        "std_inside": float(std[inside].mean()),
        "std_outside": float(std[outside].mean()),
    }



TOY_HMC_DEFAULTS: dict[str, Any] = dict(
    prior_scale=1.0, sigma=9.0, hidden=100, n_data=20, data_seed=1, grid_points=500,
    burn_in=2000, num_samples=4000, thin=10, num_leapfrog=5, step_size=0.08,
)


def _version() -> str:
    try:
        return importlib.metadata.version("bbh")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "source"


def _code_version() -> str:
    """bbh and torch versions, :data:`CACHE_VERSION` and a hash of the sources the toy result depends on."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for rel in ("reference/hmc.py", "experiments/toy_reference.py", "data/toy.py", "models/mlp.py",
                "likelihoods.py", "priors.py"):
        try:
            h.update((root / rel).read_bytes())
        except OSError:
            h.update(rel.encode())
    return f"bbh-{_version()}/torch-{torch.__version__}/v{CACHE_VERSION}/{h.hexdigest()[:16]}"


def _toy_key(settings: dict[str, Any]) -> str:
    blob = json.dumps({"settings": settings, "code": _code_version()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _run_toy_hmc(settings: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    s = settings
    x, y = make_toy_data(n=s["n_data"], seed=s["data_seed"], noise=s["sigma"])
    grid = toy_grid(s["grid_points"]).double()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        model = MLP(1, 1, hidden=(s["hidden"],)).double()  # the chain starts at the default init
    samples, res = posterior_hmc(model, x, y, Gaussian(s["sigma"]), s["prior_scale"], step_size=s["step_size"],
                                 num_leapfrog=s["num_leapfrog"], num_samples=s["num_samples"],
                                 burn_in=s["burn_in"], thin=s["thin"], seed=s["seed"], dtype=torch.float64)
    with torch.no_grad():
        f = forward_samples(model, samples, grid)  # [K, G, 1] function values (no observation noise)
    summary = predictive_summary(f, grid)
    ess = effective_sample_size(f.squeeze(-1))  # per grid point, over the kept draws
    summary.update(ess_min=float(ess.min()), ess_median=float(ess.median()),
                   acceptance=res.acceptance, burn_in_acceptance=res.burn_in_acceptance,
                   step_size=res.step_size, num_leapfrog=s["num_leapfrog"], divergences=res.divergences,
                   kept=int(f.shape[0]), sampling_seconds=res.seconds, seconds=time.perf_counter() - start)
    f = f.squeeze(-1)
    return {
        "settings": s,
        "summary": summary,
        "grid": grid.squeeze(-1).tolist(),
        "mean": f.mean(0).tolist(),
        "std": f.std(0).tolist(),
        "samples": [[round(v, 4) for v in row] for row in f.tolist()],
    }


def _read_cache(path: Path, key: str, grid_points: int) -> dict[str, Any] | None:
    """The cached result if ``path`` holds a complete, well-formed one for ``key``; otherwise None."""
    try:
        with open(path) as fh:
            data = json.load(fh)
        ok = (isinstance(data, dict) and data.get("key") == key and isinstance(data.get("summary"), dict)
              and isinstance(data.get("samples"), list) and isinstance(data.get("settings"), dict)
              and all(len(data[k]) == grid_points and all(math.isfinite(v) for v in data[k])
                      for k in ("grid", "mean", "std"))
              and all(math.isfinite(data["summary"][k]) for k in ("rmse", "std_inside", "std_outside")))
        return data if ok else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def toy_hmc(seed: int = 0, cache_dir: str | Path | None = None, *, use_cache: bool = True,
            **overrides: Any) -> dict[str, Any]:
    """The HMC reference posterior of the toy regression (paper Fig. 1), cached on disk.

    Data: 20 points, x ~ U(-4, 4), y = x^3 + N(0, 9^2) (``RandomState(1)``); network 1-100-1 ReLU (301
    parameters, weights and biases); likelihood N(y; f(x), 9^2); prior N(0, 1) on every parameter. HMC in
    float64 from the default initialisation: 2,000 burn-in iterations, 4,000 more of which every 10th is
    kept (400 draws), a fixed ``step_size`` and ``num_leapfrog`` (:data:`TOY_HMC_DEFAULTS`; ``overrides``
    change any of them).

    The result is cached as ``toy_hmc-<key>.json`` in ``cache_dir`` (default :func:`bbh.io.cache_dir`),
    written atomically; the key hashes the settings, the seed and :func:`_code_version`. A missing,
    unreadable or malformed file is recomputed and overwritten.

    Returns:
        ``{"settings", "summary", "grid", "mean", "std", "samples", "key", "cached"}``: ``mean``/``std`` are
        the predictive mean and std of f(x) (the network output, without the sigma-9 observation noise) on
        the 500-point grid ``linspace(-6, 6, 500)``, ``samples`` the kept function values ``[K][G]`` (rounded
        to 1e-4), ``summary`` has ``rmse`` (predictive mean vs x^3 on the grid), ``std_inside`` (mean std on
        |x| <= 4), ``std_outside`` (on 5 <= |x| <= 6), ``acceptance``, ``step_size``, ``seconds`` (of the
        whole computation; ``sampling_seconds`` of the chain alone),
        ``ess_min``/``ess_median`` (effective sample size of f(x) over grid points), ...;
        ``cached`` says whether it was read from disk.
    """
    unknown = set(overrides) - set(TOY_HMC_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown toy_hmc setting(s): {', '.join(sorted(unknown))}")
    settings = {**TOY_HMC_DEFAULTS, **overrides, "seed": int(seed)}
    key = _toy_key(settings)
    path = Path(cache_dir) if cache_dir is not None else io.cache_dir()
    path = path / f"toy_hmc-{key[:20]}.json"
    if use_cache:
        cached = _read_cache(path, key, settings["grid_points"])
        if cached is not None:
            cached["cached"] = True
            return cached
    result = {**_run_toy_hmc(settings), "key": key}
    if use_cache:  # compact JSON (the 400 x 500 samples), written atomically
        def write(tmp: str) -> None:
            with open(tmp, "w") as fh:
                json.dump(result, fh, separators=(",", ":"))

        io.atomic_write(path, write)
    result["cached"] = False
    return result


def check_step_sizes(seed: int = 0, cache_dir: str | Path | None = None, *, factor: float = 0.5,
                     rtol: float = 0.2, **overrides: Any) -> dict[str, Any]:
    """Run :func:`toy_hmc` at ``step_size`` and ``factor * step_size`` and compare the summary stds.

    The smaller step keeps the trajectory length ``step_size * num_leapfrog`` (``num_leapfrog / factor``
    steps), so the two chains differ only in discretisation error, not in how far each proposal moves.
    ``agree`` is True when ``std_inside`` and ``std_outside`` agree to a relative ``rtol``.
    """
    base = {**TOY_HMC_DEFAULTS, **overrides}
    a = toy_hmc(seed, cache_dir, **overrides)
    b = toy_hmc(seed, cache_dir, **{**overrides, "step_size": base["step_size"] * factor,
                                    "num_leapfrog": int(round(base["num_leapfrog"] / factor))})
    rel = {k: abs(a["summary"][k] - b["summary"][k]) / max(abs(a["summary"][k]), 1e-12)
           for k in ("std_inside", "std_outside", "rmse")}
    return {"full": a["summary"], "half": b["summary"], "relative_difference": rel,
            "agree": rel["std_inside"] <= rtol and rel["std_outside"] <= rtol}


if __name__ == "__main__":  # python -m bbh.experiments.toy_reference [cache_dir]: numbers and step-size check
    import sys

    out = check_step_sizes(cache_dir=sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps(out, indent=2))

"""Choosing what a setting leaves open on a split's own validation carve-out (:func:`select_on_validation`)."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...data.uci import UCIDataset
from ...posteriors import Method
from .cells import scale_noise, score, train_setting
from .settings import BUDGETS, NOISE_SCALES, VALIDATION, Budget, UCISetting, training_steps, uci_settings


def selection_grid(setting: UCISetting, budget: Budget) -> list[int]:
    """The training lengths (steps) ``setting`` chooses from: its ``select_steps`` factors times the budget's
    ``min_steps`` (BbH at the full budget: 2,000, 4,000, 8,000, 16,000)."""
    if not setting.select_steps or min(setting.select_steps) <= 0:
        raise ValueError(f"{setting.method}: select_steps must hold positive factors, got {setting.select_steps}")
    return sorted({max(1, round(f * budget.min_steps)) for f in setting.select_steps})


def selection_rows(dataset: UCIDataset, k: int, *, kind: str = "standard", seed: int = 0,
                   validation: float = VALIDATION) -> tuple[Tensor, Tensor]:
    """The row indices split ``k``'s choices train on and are scored on: its training rows minus the carve-out,
    and the carve-out (the last ``validation`` part of a seeded permutation of the training rows). Both are
    subsets of split ``k``'s training rows, so disjoint from its test rows."""
    split = dataset.split(k, kind=kind, validation=validation, seed=seed)
    assert split.val_idx is not None
    return split.train_idx, split.val_idx


def select_on_validation(dataset: UCIDataset, method: str, *, split: int = 0, kind: str = "standard",
                         budget: Budget = BUDGETS["full"], setting: UCISetting | None = None, seed: int = 0,
                         validation: float = VALIDATION) -> dict[str, Any]:
    """Choose what ``setting`` (default: ``method``'s in :func:`uci_settings`) leaves open — its training length
    (``select_steps``), its dropout rate (``select_dropout``) and its noise scale (``calibrate_noise``) — on
    split ``split`` of ``dataset`` without test data.

    The last ``validation`` part of the split's training rows (:func:`selection_rows`) is held out and the method
    trains on the rest, once per candidate dropout rate: for the longest of :func:`selection_grid` (in whole
    epochs), or for the protocol's length (:func:`training_steps` of the carve-out) when the length is not chosen.
    The validation LL (:func:`score`) is measured after the epoch that first reaches each grid length, for every
    factor c of :data:`NOISE_SCALES` applied to the learned σ when ``calibrate_noise`` (else c = 1): one training
    run per rate, scored on the way (the scoring draws come from a forked random state, so they leave the
    training as it would be without them). The chosen (rate, length, c) maximises the validation LL (ties: the
    shorter length, then the c nearer 1, then the smaller rate); the split's cell then trains on its whole
    training split.

    Returns ``{"steps" (None: the protocol's length), "grid", "val_ll" (per grid length: per split, at c = 1),
    "mean_val_ll" (at c = 1), "splits", "validation", "seconds"}`` (for the chosen rate), with
    ``calibrate_noise`` also ``"noise_scale"``, ``"noise_scales"``, ``"mean_val_ll_by_scale"`` (per grid length:
    per c) and ``"calibrated_val_ll"`` (the chosen triple's mean), and with ``select_dropout`` also
    ``"dropout"`` and ``"best_val_ll_by_dropout"`` (per rate: its best mean over lengths and c). JSON-ready; grid
    lengths and rates as string keys; the grid length 0 stands for the protocol's length.

    Raises:
        ValueError: the setting chooses nothing (no ``select_steps`` or ``select_dropout``, ``calibrate_noise``
            False).
    """
    setting = setting or uci_settings()[method]
    if not setting.selects:
        raise ValueError(f"{setting.method}: the setting chooses nothing on validation (no select_steps or "
                         f"select_dropout, calibrate_noise False)")
    scales = NOISE_SCALES if setting.calibrate_noise else (1.0,)
    rates = sorted(setting.select_dropout) if setting.select_dropout else [setting.dropout]
    splits = [split]
    start = time.perf_counter()
    val_ll: dict[tuple[float, int], list[list[float]]] = {}  # (rate, grid length) -> per split -> per scale
    grid: list[int] = []
    for rate in rates:
        candidate = replace(setting, dropout=rate)
        for k in splits:
            part = dataset.split(k, kind=kind, validation=validation, seed=seed)
            assert part.x_val is not None and part.y_val is not None and part.val_idx is not None
            x_val, y_val, y_raw = part.x_val.float(), part.y_val, dataset.y[part.val_idx]
            batch_size = min(setting.batch_size, len(part.x_train))
            if setting.select_steps:
                per_epoch = max(1, len(part.x_train) // batch_size)
                grid = selection_grid(setting, budget)
                reached = {g: max(1, math.ceil(g / per_epoch)) for g in grid}  # the epoch that first reaches each
            else:
                epochs, per_epoch = training_steps(len(part.x_train), batch_size, dataset.n_epochs or 40, budget,
                                                   setting.min_steps)
                grid = [0]  # one length: the protocol's
                reached = {0: epochs}

            def at_epoch(model: Method, finished: int) -> None:
                lengths = [g for g, e in reached.items() if e == finished]  # noqa: B023 (used within this split)
                if lengths:
                    with torch.random.fork_rng():
                        predictive = model.predict(x_val, n_samples=budget.n_samples)  # noqa: B023
                    lls = [score(scale_noise(predictive, c), part, y_val, y_raw)["test_ll"] for c in scales]  # noqa: B023
                    for g in lengths:
                        val_ll.setdefault((rate, g), []).append(lls)  # noqa: B023

            train_setting(candidate, dataset, part, max(reached.values()), batch_size, seed + k, at_epoch)
    means = {key: [sum(per[i] for per in v) / len(v) for i in range(len(scales))] for key, v in val_ll.items()}
    best_rate, best_g, best_i = max(
        ((r, g, i) for r in rates for g in grid for i in range(len(scales))),
        key=lambda t: (means[t[0], t[1]][t[2]], -t[1], -abs(math.log(scales[t[2]])), -t[0]))
    at_one = scales.index(1.0)
    chosen: dict[str, Any] = {
        "steps": best_g if setting.select_steps else None, "grid": grid,
        "val_ll": {str(g): [per[at_one] for per in val_ll[best_rate, g]] for g in grid},
        "mean_val_ll": {str(g): means[best_rate, g][at_one] for g in grid}, "splits": splits,
        "validation": validation, "seconds": time.perf_counter() - start}
    if setting.calibrate_noise:
        chosen.update(noise_scale=scales[best_i], noise_scales=list(scales),
                      mean_val_ll_by_scale={str(g): means[best_rate, g] for g in grid},
                      calibrated_val_ll=means[best_rate, best_g][best_i])
    if setting.select_dropout:
        chosen.update(dropout=best_rate, best_val_ll_by_dropout={
            str(r): max(max(means[r, g]) for g in grid) for r in rates})
    return chosen

def selection_path(out: Path, kind: str, dataset: str, method: str, split: int) -> Path:
    """Where what was chosen for (dataset, method, split) on validation lives (:func:`select_on_validation`)."""
    return out / "selection" / kind / dataset / method / f"split_{split}.json"

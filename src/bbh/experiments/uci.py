"""The UCI regression benchmark: ``bbh uci`` and :func:`run_uci`.

Every (dataset, method, split) cell is trained and scored under the protocol of the published tables
(Hernández-Lobato & Adams 2015; Gal & Ghahramani 2016; Lakshminarayanan et al. 2017):

* inputs and targets standardised with the training split's statistics (:meth:`bbh.data.uci.UCIDataset.split`);
* one hidden layer of ``n_hidden.txt`` ReLU units (50; 100 for protein);
* a Gaussian likelihood whose noise level is learned (:class:`bbh.likelihoods.LearnedGaussian`; the deep
  ensemble, as published, predicts a variance per member: :class:`bbh.likelihoods.Heteroscedastic`);
* the scores in the original units of y, on the test part:

      test LL = (1/N) Σ_n log (1/S) Σ_s N(y_n; μ_s(x_n), σ_s²)          (logsumexp over the S draws)
      RMSE    = sqrt((1/N) Σ_n (y_n - (1/S) Σ_s μ_s(x_n))²)

  reported as mean ± standard error (sample std with ddof 1 / sqrt(#splits)) over the splits.

Hyper-parameters are fixed defaults (:func:`uci_settings`), the same for every dataset, except what a setting leaves
open — its training length (``select_steps``), its dropout rate (``select_dropout``) and the scale c of its
predictive noise (``calibrate_noise``): those are chosen **per split, on that split's own validation carve-out** (the
last 20 % of a seeded permutation of the split's training rows; :func:`select_on_validation`), as the 2018 re-run
of MC-Dropout chose its settings. No split's test rows can touch any choice, its own or another split's
(:func:`selection_rows`; a test checks the disjointness). The budget (:data:`BUDGETS`)
sets the splits, the training length and the posterior samples. Every finished cell is written atomically to
``OUT/cells/<kind>/<dataset>/<method>/split_<k>.json`` and never redone, so an interrupted run continues where
it stopped; ``OUT/results.json`` and ``OUT/report.md`` (``results-gap.json`` / ``report-gap.md`` for the gap
splits) are rewritten after every cell. The HMC reference (``--methods ...,hmc``) runs on datasets of at most
:data:`HMC_MAX_ROWS` rows, on the first ``hmc_splits`` splits (:mod:`bbh.reference.hmc_regression`).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.io import atomic_write, ensure_writable, read_json_object, write_json
from ..core.likelihoods import Heteroscedastic, LearnedGaussian
from ..core.predictive import RegressionPredictive
from ..core.threads import announce, use_threads
from ..data.uci import SPLIT_KINDS, UCIDataset, UCISplit, load_uci, uci_datasets
from ..models import MLP
from ..posteriors import Method, create
from ..training import progress as lines
from ..training.trainer import Trainer

UCI_METHODS = ("map", "mc-dropout", "ensemble", "bbb", "mnf", "bbh")
"""The methods of the benchmark, in report order, each under one tuning protocol (:func:`uci_settings`); ``"hmc"``
(the reference) is run when asked for."""
UNTUNED = "-untuned"
UNTUNED_METHODS = tuple(m + UNTUNED for m in UCI_METHODS)
"""The same methods under the untuned 2016 protocol (the budget's length, the learned σ as it is, MC-Dropout's
rate 0.05): the columns beside the tuned ones that show what tuning buys each method."""
GRID_METHODS = tuple(m for pair in zip(UCI_METHODS, UNTUNED_METHODS) for m in pair)
"""What ``bbh uci`` runs by default: each method tuned, then untuned."""
REFERENCE_METHODS = ("hmc",)
HMC_MAX_ROWS = 1100
"""HMC runs on datasets with at most this many rows (boston, concrete, energy, yacht; not wine's 1,599)."""

PUBLISHED_LL: dict[str, dict[str, float]] = {
    # Test log-likelihood (higher is better) on the 20 standard splits. PBP, MC-Dropout 2016 and the deep
    # ensemble as reported by Lakshminarayanan et al. (2017, Table 1, negated NLL); the 2018 grid-search re-run
    # from the README of yaringal/DropoutUncertaintyExps (10x epochs, per-split grid search on a validation part).
    "bostonHousing": {"PBP": -2.57, "MC-Dropout 2016": -2.46, "MC-Dropout 2018": -2.40, "Ensemble 2017": -2.41},
    "concrete": {"PBP": -3.16, "MC-Dropout 2016": -3.04, "MC-Dropout 2018": -2.93, "Ensemble 2017": -3.06},
    "energy": {"PBP": -2.04, "MC-Dropout 2016": -1.99, "MC-Dropout 2018": -1.21, "Ensemble 2017": -1.38},
    "kin8nm": {"PBP": 0.90, "MC-Dropout 2016": 0.95, "MC-Dropout 2018": 1.14, "Ensemble 2017": 1.20},
    "naval-propulsion-plant": {"PBP": 3.73, "MC-Dropout 2016": 3.80, "MC-Dropout 2018": 4.45, "Ensemble 2017": 5.63},
    "power-plant": {"PBP": -2.84, "MC-Dropout 2016": -2.80, "MC-Dropout 2018": -2.80, "Ensemble 2017": -2.79},
}
PUBLISHED_RMSE: dict[str, dict[str, float]] = {
    # RMSE of MC-Dropout with grid search (2018 re-run), README of yaringal/DropoutUncertaintyExps.
    "bostonHousing": {"MC-Dropout 2018": 2.90}, "concrete": {"MC-Dropout 2018": 4.82},
    "energy": {"MC-Dropout 2018": 0.54}, "kin8nm": {"MC-Dropout 2018": 0.08},
    "naval-propulsion-plant": {"MC-Dropout 2018": 0.00}, "power-plant": {"MC-Dropout 2018": 4.01},
}
PUBLISHED_SOURCES = ("PBP, MC-Dropout 2016 and Ensemble 2017: Lakshminarayanan et al. 2017, Table 1 (negated NLL); "
                     "MC-Dropout 2018: grid-search re-run, README of yaringal/DropoutUncertaintyExps.")


@dataclass(frozen=True)
class Budget:
    """How much of the benchmark to run.

    Attributes:
        splits: the first ``splits`` splits of every dataset (``None``: all).
        min_steps: train at least this many optimiser steps (more epochs on small datasets).
        max_steps: and at most this many (``None``: no cap; fewer epochs on large datasets).
        n_samples: posterior draws for the predictive.
        hmc_splits: splits the HMC reference runs on.
        hmc_scale: multiplies the HMC chains' burn-in and kept iterations.
    """

    splits: int | None
    min_steps: int
    max_steps: int | None
    n_samples: int
    hmc_splits: int = 5
    hmc_scale: float = 1.0


BUDGETS: dict[str, Budget] = {
    "full": Budget(splits=None, min_steps=4000, max_steps=8000, n_samples=100, hmc_splits=5),
    "quick": Budget(splits=2, min_steps=600, max_steps=1200, n_samples=50, hmc_splits=1, hmc_scale=0.25),
}
"""``full``: the 20 standard splits (every qualifying gap split), ``n_epochs.txt`` epochs (40) but at least 4,000 and
at most 8,000 steps (the cap shortens kin8nm, naval and power to 23-34 epochs of their 40, protein to 6).
``quick``: 2 splits, 600-1,200 steps, 50 draws: a smoke run of the whole grid in minutes. A setting with
``select_steps`` chooses its length from multiples of ``min_steps`` instead (BbH, full: 2,000-16,000 steps)."""
VALIDATION = 0.2
"""The share of a split's training rows held out to choose its settings (:func:`select_on_validation`)."""
NOISE_SCALES: tuple[float, ...] = tuple(2.0 ** (k / 16) for k in range(-32, 17))
"""The factors c a setting with ``calibrate_noise`` chooses from (0.25 to 2, 49 log-spaced, 4.4 % apart): its
predictive is (1/S) Σ_s N(y; μ_s, (c σ_s)²) instead of (1/S) Σ_s N(y; μ_s, σ_s²)."""


@dataclass(frozen=True)
class UCISetting:
    """How one method is built and trained on a UCI split (the same for every dataset).

    Attributes:
        method: the registered method name.
        options: keyword options for :func:`bbh.create` (besides model and likelihood).
        likelihood: ``"gaussian"`` (learned homoscedastic σ) or ``"heteroscedastic"``.
        dropout: the MLP's dropout rate (MC-Dropout: on the inputs and the hidden units).
        lr: Adam's learning rate.
        batch_size: minibatch size.
        kl_weight: multiplies the KL term (1: the ELBO).
        min_steps: the least number of steps (``None``: the budget's; 0: just the protocol's epochs).
        select_steps: factors of the budget's ``min_steps``: the training length is chosen per dataset among
            them on validation carve-outs (:func:`select_on_validation`) instead of the budget's ``min_steps``
            / ``max_steps``. Empty: not chosen.
        calibrate_noise: choose a factor c of the learned noise level per dataset on the same carve-outs
            (:data:`NOISE_SCALES`); the predictive uses c σ. The published MC-Dropout runs chose their model
            precision τ = 1 / σ² by validation LL (Gal & Ghahramani 2016); a σ learned inside the dropout
            objective fits residuals that include the dropout perturbation, and the prediction then adds the
            masks' spread on top of it (docs/uci.md). False: σ as learned.
        select_dropout: dropout rates to choose ``dropout`` from per dataset on the same carve-outs (the 2018
            re-run of MC-Dropout searched 0.005, 0.01, 0.05, 0.1 on validation). Empty: ``dropout`` as given.
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    likelihood: str = "gaussian"
    dropout: float = 0.0
    lr: float = 1e-3
    batch_size: int = 32
    kl_weight: float = 1.0
    min_steps: int | None = None
    select_steps: tuple[float, ...] = ()
    calibrate_noise: bool = False
    select_dropout: tuple[float, ...] = ()

    def untuned(self) -> UCISetting:
        """The setting with nothing chosen on validation (the 2016 protocol's fixed length and σ)."""
        return replace(self, select_steps=(), calibrate_noise=False, select_dropout=())

    @property
    def selects(self) -> bool:
        """Whether something of this setting is chosen on validation carve-outs (:func:`select_on_validation`)."""
        return bool(self.select_steps) or self.calibrate_noise or bool(self.select_dropout)

    def describe(self) -> dict[str, Any]:
        """The setting as plain data (recorded in every cell; resuming compares it). ``select_steps`` and
        ``calibrate_noise`` appear only when set, so a setting without them describes itself as before."""
        d = asdict(self)
        d["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}
        if self.select_steps:
            d["select_steps"] = list(self.select_steps)
        else:
            del d["select_steps"]
        if not self.calibrate_noise:
            del d["calibrate_noise"]
        if self.select_dropout:
            d["select_dropout"] = list(self.select_dropout)
        else:
            del d["select_dropout"]
        return d


TUNED_LENGTHS = (0.5, 1.0, 2.0, 4.0)
"""The training lengths every tuned method chooses from, as factors of the budget's ``min_steps``."""


def uci_settings() -> dict[str, UCISetting]:
    """The per-method settings of ``bbh uci``, the same on every dataset: every method of :data:`UCI_METHODS` under
    one tuning protocol, and its untuned twin (``"<method>-untuned"``, :meth:`UCISetting.untuned`).

    The model: the N(0, 1) prior of the HMC reference on every weight and bias (MAP and MC-Dropout as their L2 term
    (1/N) Σ w² / 2, BbB, MNF and BbH as their prior; the deep ensemble has none, as published), a learned noise
    level, Adam at lr 3e-3 with batch 32. The deep ensemble keeps its published protocol (Lakshminarayanan et al.
    2017: 5 members, adversarial training, batch 100) except its learning rate, 0.01 (their 0.1 makes the variance
    head overflow here). BbH uses the settings that bring it to HMC on the toy (docs/toy.md): the entropy-based KL
    (``kl="nn-entropy"``), 20 posterior samples per step, all of them in the likelihood term.

    The tuning protocol, the same for every method: per split, on its own validation carve-out
    (:func:`select_on_validation`), choose the training length among :data:`TUNED_LENGTHS` times the budget's
    ``min_steps`` (``select_steps``: no fixed length serves both boston, where long runs over-fit the learned noise
    level, and concrete, where they are needed) and the factor c of the predictive noise (``calibrate_noise``: a σ
    learned on the training rows fits their residuals and is too narrow on held-out rows; the published MC-Dropout
    runs chose their precision τ on validation data the same way), and each method's own knob where it has one that
    the published runs tuned: MC-Dropout's rate among 0.005, 0.01, 0.05, 0.1 (the 2018 re-run's grid). The untuned
    twins run the budget's length with c = 1 and MC-Dropout's rate 0.05.
    """
    tuned = dict(select_steps=TUNED_LENGTHS, calibrate_noise=True)
    settings = {
        "map": UCISetting("map", dict(prior_scale=1.0), lr=3e-3, **tuned),
        "mc-dropout": UCISetting("mc-dropout", dict(prior_scale=1.0), dropout=0.05, lr=3e-3,
                                 select_dropout=(0.005, 0.01, 0.05, 0.1), **tuned),
        "ensemble": UCISetting("ensemble", dict(members=5, adversarial=True, alpha=0.5, epsilon=0.01),
                               likelihood="heteroscedastic", lr=0.01, batch_size=100, min_steps=0, **tuned),
        "bbb": UCISetting("bbb", dict(prior=1.0, estimator="local", init_log_var=-6.0), lr=3e-3, **tuned),
        "mnf": UCISetting("mnf", dict(prior_log_var=0.0), lr=3e-3, **tuned),
        "bbh": UCISetting("bbh", dict(hidden=(16, 32, 64), noise="shared", noise_dim=8, num_samples=20,
                                      likelihood_samples="average", kl="nn-entropy", init_spread=None), lr=3e-3,
                          **tuned),
    }
    settings.update({m + UNTUNED: settings[m].untuned() for m in UCI_METHODS})
    return settings


def prior_std(method: Method) -> float | None:
    """The std of the Normal prior ``method`` puts on every weight and bias (``None``: no prior, the deep
    ensemble). MNF's is read from its layers' buffers, the others' from ``method.prior``."""
    from ..posteriors.ensemble import DeepEnsemble
    from ..posteriors.mnf import MNFLayer

    if isinstance(method, DeepEnsemble):
        return None
    stds = {round(float(v), 12) for mod in method.modules() if isinstance(mod, MNFLayer)
            for v in (0.5 * torch.cat([mod.prior_log_var.reshape(-1), mod.prior_log_var_bias.reshape(1)])).exp()}
    if stds:
        if len(stds) > 1:
            raise ValueError(f"MNF layers with different prior stds {sorted(stds)}")
        return stds.pop()
    return float(method.prior.scale)  # type: ignore[attr-defined]


def build_method(setting: UCISetting, n_features: int, n_hidden: int) -> Method:
    """The method of ``setting`` on an ``n_features -> n_hidden -> 1`` ReLU MLP (2 outputs, mean and
    log-variance, for the heteroscedastic likelihood)."""
    if setting.likelihood == "gaussian":
        likelihood: Any = LearnedGaussian()
        outputs = 1
    elif setting.likelihood == "heteroscedastic":
        likelihood, outputs = Heteroscedastic(), 2
    else:
        raise ValueError(f"unknown UCI likelihood {setting.likelihood!r}; expected 'gaussian' or 'heteroscedastic'")
    model = MLP(n_features, outputs, hidden=(n_hidden,), dropout=setting.dropout)
    return create(setting.method, model, likelihood=likelihood, **setting.options)


def training_steps(n_train: int, batch_size: int, epochs: int, budget: Budget,
                   min_steps: int | None = None) -> tuple[int, int]:
    """``(epochs, steps_per_epoch)``: ``epochs`` clamped so that the total steps lie in
    ``[min_steps, budget.max_steps]`` (``min_steps`` None: the budget's; whole epochs; at least one)."""
    per_epoch = max(1, n_train // batch_size)
    least = budget.min_steps if min_steps is None else min_steps
    epochs = max(epochs, math.ceil(least / per_epoch))
    if budget.max_steps is not None:
        epochs = min(epochs, max(1, budget.max_steps // per_epoch))
    return epochs, per_epoch


def score(predictive: RegressionPredictive, split: UCISplit, y: Tensor, y_raw: Tensor) -> dict[str, float]:
    """Test LL and RMSE of a predictive of one-output draws (``[S, B, 1]``) against targets ``y`` (standardised
    with ``split``'s statistics, ``[B]``) and ``y_raw`` (the same in the original units), in the original units
    (module docstring); also the root mean aleatoric and epistemic variances there."""
    log_density = predictive.log_density(y.to(predictive.sample_means).unsqueeze(-1)).double()
    mean = split.unstandardise_mean(predictive.mean.squeeze(-1).double())
    return {
        "test_ll": float(split.unstandardise_log_density(log_density).mean()),
        "rmse": float(((mean - y_raw.double()) ** 2).mean().sqrt()),
        "noise_std": float(split.unstandardise_std(predictive.aleatoric_var.double().mean().sqrt())),
        "epistemic_std": float(split.unstandardise_std(predictive.epistemic_var.double().mean().sqrt())),
    }


def _train(setting: UCISetting, dataset: UCIDataset, split: UCISplit, epochs: int, batch_size: int, seed: int,
           at_epoch: Callable[[Method, int], None] | None = None) -> tuple[Method, dict[str, Any]]:
    """Build ``setting``'s method for ``dataset`` and train it on ``split``'s training part for ``epochs``;
    ``at_epoch(model, finished_epochs)`` is called after every epoch. Returns the model and the last epoch's
    history record."""
    torch.manual_seed(seed)
    model = build_method(setting, dataset.x.shape[1], protocol_hidden(dataset))
    trainer = Trainer(model, optimizer="adam", lr=setting.lr, epochs=epochs, kl_anneal=setting.kl_weight,
                      device="cpu", seed=seed, progress=False, handle_signals=False)
    if at_epoch is not None:
        trainer.callbacks.append(lambda record: at_epoch(model, trainer.epoch) if record["event"] == "epoch" else None)
    history = trainer.fit((split.x_train.float(), split.y_train.float().unsqueeze(-1)), batch_size=batch_size)
    return model, history[-1]


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

            _train(candidate, dataset, part, max(reached.values()), batch_size, seed + k, at_epoch)
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


def scale_noise(predictive: Any, c: float) -> RegressionPredictive:
    """The predictive with every draw's noise level scaled by ``c``: (1/S) Σ_s N(y; μ_s, (c σ_s)²)."""
    if not isinstance(predictive, RegressionPredictive):
        raise TypeError(f"a noise scale needs a regression predictive, got {type(predictive).__name__}")
    if c == 1.0:
        return predictive
    return RegressionPredictive(predictive.sample_means, predictive.sample_variances * c ** 2)


def run_cell(dataset: UCIDataset, method: str, k: int, *, kind: str = "standard", budget: Budget = BUDGETS["full"],
             setting: UCISetting | None = None, seed: int = 0, validation: float | None = None,
             steps: int | None = None, noise_scale: float | None = None,
             dropout: float | None = None) -> dict[str, Any]:
    """Train ``method`` on split ``k`` of ``dataset`` and score it; a JSON-ready record of the cell.

    ``steps``: train for the first whole epoch that reaches this many steps (a length chosen by
    :func:`select_on_validation`) instead of the budget's length. ``noise_scale``: score the predictive with
    every draw's σ times this factor (:func:`scale_noise`; one chosen by :func:`select_on_validation`).
    ``dropout``: this dropout rate instead of the setting's (one chosen by :func:`select_on_validation`).

    Raises :class:`FloatingPointError` (the Trainer's ``NonFiniteLossError`` is one) when training diverges or
    the scores are not finite; :func:`run_uci` records such a cell as failed and goes on.

    With ``validation`` (a fraction) the last part of a seeded permutation of the training split is held out
    (:meth:`UCIDataset.split`), training uses the rest, and the scores are those of the held-out part: the
    way to choose settings without looking at the test part (which is then not touched).
    """
    split = dataset.split(k, kind=kind, validation=validation, seed=seed)
    if validation is None:
        x_eval, y_eval, y_raw = split.x_test, split.y_test, dataset.y[split.test_idx]
    else:
        assert split.x_val is not None and split.y_val is not None and split.val_idx is not None
        x_eval, y_eval, y_raw = split.x_val, split.y_val, dataset.y[split.val_idx]
    n_hidden = protocol_hidden(dataset)
    start = time.perf_counter()
    if method == "hmc":
        record = _run_hmc_cell(split, x_eval, y_eval, y_raw, n_hidden, budget, seed=seed + k)
    else:
        setting = setting or uci_settings()[method]
        described = setting.describe()  # the cell records the setting it was made with, rate still open
        if dropout is not None:
            setting = replace(setting, dropout=dropout)
        batch_size = min(setting.batch_size, len(split.x_train))  # a tiny dataset trains full-batch
        if steps is None:
            epochs, per_epoch = training_steps(len(split.x_train), batch_size, dataset.n_epochs or 40, budget,
                                               setting.min_steps)
        else:
            per_epoch = max(1, len(split.x_train) // batch_size)
            epochs = max(1, math.ceil(steps / per_epoch))
        model, last = _train(setting, dataset, split, epochs, batch_size, seed + k)
        train_seconds = time.perf_counter() - start
        predictive = model.predict(x_eval.float(), n_samples=budget.n_samples)
        record = score(predictive if noise_scale is None else scale_noise(predictive, noise_scale), split, y_eval,
                       y_raw)
        record.update(train_seconds=train_seconds, epochs=epochs, steps=epochs * per_epoch,
                      final_nll=float(last["nll"]), final_kl=float(last["kl"]), setting=described)
        if steps is not None:
            record["selected_steps"] = steps
        if noise_scale is not None:
            record["noise_scale"] = noise_scale
        if dropout is not None:
            record["selected_dropout"] = dropout
    if not (math.isfinite(record["test_ll"]) and math.isfinite(record["rmse"])):
        raise FloatingPointError(f"non-finite test score (test LL {record['test_ll']}, RMSE {record['rmse']})")
    record.update(dataset=dataset.name, method=method, split=k, kind=kind, n_train=len(split.x_train),
                  n_test=len(x_eval), n_hidden=n_hidden, scored="validation" if validation is not None else "test",
                  seconds=time.perf_counter() - start)
    return record


def _run_hmc_cell(split: UCISplit, x: Tensor, y: Tensor, y_raw: Tensor, n_hidden: int, budget: Budget,
                  seed: int) -> dict[str, Any]:
    """The HMC reference on one split (:func:`bbh.reference.hmc_regression.hmc_regression`: 2 chains of 400
    warm-up and 400 sampling iterations of 150 leapfrog steps, scaled by ``budget.hmc_scale``), scored as the
    methods are, with its convergence diagnostics and each chain's own test LL."""
    from ..reference.hmc_regression import hmc_regression

    iterations = max(8, round(400 * budget.hmc_scale))
    chain = {"num_samples": iterations, "burn_in": iterations, "init_steps": max(100, round(3000 * budget.hmc_scale))}
    result = hmc_regression(split.x_train, split.y_train, x, hidden=n_hidden, seed=seed, **chain)
    predictive = result.predictive()  # one-output draws [S, B]: score wants [S, B, 1]
    record: dict[str, Any] = score(RegressionPredictive(predictive.sample_means.unsqueeze(-1),
                                                       predictive.sample_variances.unsqueeze(-1)), split, y, y_raw)
    record["diagnostics"] = result.diagnostics.to_dict()
    record["setting"] = {"method": "hmc", **chain}
    record["test_ll_chains"] = result.test_metrics(y, split.y_std)["test_ll_chains"]
    return record


def cell_path(out: Path, kind: str, dataset: str, method: str, k: int) -> Path:
    """Where a finished cell's record lives."""
    return out / "cells" / kind / dataset / method / f"split_{k}.json"


def mean_se(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "se", "per_split"}``: the mean and its standard error std(ddof=1) / sqrt(n) (0 for n = 1)."""
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return {"mean": mean, "se": se, "per_split": list(values)}


def protocol_hidden(dataset: UCIDataset) -> int:
    """Hidden units of the protocol's network: ``n_hidden.txt`` when the folder has it, else the published
    choice (100 for protein-tertiary-structure, 50 for every other dataset; Hernández-Lobato & Adams 2015)."""
    if dataset.n_hidden is not None:
        return dataset.n_hidden
    return 100 if dataset.name.startswith("protein") else 50


def _splits_for(dataset: UCIDataset, method: str, kind: str, budget: Budget, splits: int | None) -> list[int]:
    available = list(range(dataset.n_splits)) if kind == "standard" else dataset.gap_dimensions
    wanted = splits if splits is not None else budget.splits
    if kind == "standard" and splits is not None and splits > len(available) and method != "hmc":
        warnings.warn(f"{dataset.name} has {len(available)} standard splits; --splits {splits} runs all "
                      f"{len(available)}", stacklevel=3)
    if method == "hmc":
        if len(dataset.x) > HMC_MAX_ROWS:
            return []
        wanted = min(wanted or len(available), budget.hmc_splits)
    return available[:wanted] if wanted is not None else available


def aggregate(cells: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset and method: ``test_ll`` and ``rmse`` as :func:`mean_se` over splits (in split order),
    ``std_over_rmse`` (the root mean predictive variance over the squared error, sqrt(mean(aleatoric + epistemic
    variance)) / RMSE, per split: 1 for a predictive as wide as its errors, > 1 over-dispersed, < 1
    over-confident), ``n_splits``, ``seconds`` (total wall time of the cells), ``failed_splits`` (cells whose
    training diverged, left out of the means); where the HMC reference ran, every method's
    ``test_ll_minus_hmc``: the paired difference of test LL on the splits both ran, as :func:`mean_se`."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for c in cells:
        grouped.setdefault(c["dataset"], {}).setdefault(c["method"], []).append(c)
    table: dict[str, dict[str, Any]] = {}
    for name, methods in grouped.items():
        for method, records in methods.items():
            failed = sorted(r["split"] for r in records if "failed" in r)
            records = sorted((r for r in records if "failed" not in r), key=lambda r: r["split"])
            if not records:
                table.setdefault(name, {})[method] = {"n_splits": 0, "splits": [], "failed_splits": failed,
                                                      "seconds": 0.0}
                continue
            entry = {"test_ll": mean_se([r["test_ll"] for r in records]), "rmse": mean_se([r["rmse"] for r in records]),
                     "std_over_rmse": mean_se([math.hypot(r["noise_std"], r["epistemic_std"]) / r["rmse"]
                                               for r in records]),
                     "failed_splits": failed, "n_splits": len(records), "splits": [r["split"] for r in records],
                     "seconds": sum(r["seconds"] for r in records)}
            for key in CHOICES:
                chosen = [r[key] for r in records if key in r]
                if chosen:
                    entry[key] = {str(v): chosen.count(v) for v in sorted(set(chosen))}
            if method == "hmc" and all("diagnostics" in r for r in records):
                diagnostics = [r["diagnostics"] for r in records]
                entry["rhat_f_max"] = max(d["rhat_f_max"] for d in diagnostics)
                entry["rhat_f_median"] = sorted(d["rhat_f_median"] for d in diagnostics)[len(diagnostics) // 2]
                entry["ess_f_min"] = min(d["ess_f_min"] for d in diagnostics)
                entry["divergences"] = sum(sum(d["divergences"]) for d in diagnostics)
            table.setdefault(name, {})[method] = entry
    _pair_with_hmc(table)
    return table


CHOICES = ("selected_steps", "noise_scale", "selected_dropout")
"""What a cell records of its split's validation choice; aggregated as {value: number of splits}."""


def _counts(counts: dict[str, int] | None) -> str:
    if not counts:
        return "—"
    return ", ".join(f"{float(v):.3g} ×{c}" if c > 1 else f"{float(v):.3g}" for v, c in counts.items())


def _pair_with_hmc(table: dict[str, dict[str, Any]]) -> None:
    """Set every method's ``test_ll_minus_hmc`` (in place) on the datasets where the HMC reference ran."""
    for methods in table.values():
        reference = methods.get("hmc")
        if reference is None or not reference["splits"]:
            continue
        ref = dict(zip(reference["splits"], reference["test_ll"]["per_split"]))
        for method, entry in methods.items():
            shared = [k for k in entry.get("splits", []) if k in ref and method != "hmc"]
            if shared:
                own = dict(zip(entry["splits"], entry["test_ll"]["per_split"]))
                entry["test_ll_minus_hmc"] = {**mean_se([own[k] - ref[k] for k in shared]), "splits": shared}


def merge_results(own: dict[str, Any], other: dict[str, Any], methods: Sequence[str],
                  source: str = "") -> dict[str, Any]:
    """``own`` (a run's results) with every method not in ``methods`` taken from ``other`` (an earlier run's
    ``results.json``): the way to rerun one method whose setting changed and tabulate it beside the others' earlier
    cells without retraining them. The paired differences to HMC are recomputed; ``merged`` records which methods
    came from where (``source``), and the report says so.

    Raises:
        ValueError: ``other`` was made with another split kind or budget, or is not a results file.
    """
    if not (isinstance(other, dict) and isinstance(other.get("datasets"), dict)
            and isinstance(other.get("settings"), dict)):
        raise ValueError(f"{source or 'the merged results'}: not a bbh uci results.json (no datasets / settings)")
    for key in ("split_kind", "budget"):
        if other.get(key) != own[key]:
            raise ValueError(f"{source or 'the merged results'} has {key} {other.get(key)!r}, this run "
                             f"{own[key]!r}: results of different protocols do not go in one table")
    merged = copy.deepcopy(own)
    taken: set[str] = set()
    for name, entries in other["datasets"].items():
        for method, entry in entries.items():
            if method not in methods:
                merged["datasets"].setdefault(name, {})[method] = copy.deepcopy(entry)
                merged["n_cells"] += entry.get("n_splits", 0) + len(entry.get("failed_splits", []))
                merged["seconds"] += entry.get("seconds", 0.0)
                taken.add(method)
    merged["settings"] = {**{m: v for m, v in other["settings"].items() if m in taken}, **own["settings"]}
    _pair_with_hmc(merged["datasets"])
    merged["merged"] = {"source": source, "methods": sorted(taken)}
    return merged


def _fmt(entry: dict[str, Any] | None, digits: int = 2) -> str:
    if entry is None:
        return "—"
    return f"{entry['mean']:.{digits}f} ± {entry['se']:.{digits}f}"


def _pub(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def render_report(results: dict[str, Any]) -> str:
    """``report.md``: test LL and RMSE tables (datasets x methods, mean ± SE; a single split as "mean (n = 1)", it
    has no SE) with the published numbers in the columns beside, the budget in words, the settings, and the summed
    time of the finished cells (labelled as such: it is not the command's wall time)."""

    def cell(entry: dict[str, Any] | None, digits: int = 2) -> str:  # one split: no "± 0.00" that looks like an SE
        if entry is not None and len(entry.get("per_split", ())) == 1:
            return f"{entry['mean']:.{digits}f} (n = 1)"
        return _fmt(entry, digits)

    def plural(n: int, word: str) -> str:
        return f"{n:,} {word}{'' if n == 1 else 's'}"

    def budget_text(b: dict[str, Any]) -> str:
        splits = "every split" if b.get("splits") is None else f"the first {plural(b['splits'], 'split')}"
        steps = (f"{b['min_steps']:,}–{b['max_steps']:,}" if b.get("max_steps") is not None
                 else f"at least {b['min_steps']:,}")
        return (f"{splits} of each dataset, {steps} training steps per cell (a method that chooses its length on "
                f"validation: multiples of {b['min_steps']:,}), "
                f"{plural(b['n_samples'], 'predictive draw')}; HMC on at most {plural(b['hmc_splits'], 'split')}, "
                f"its chains at {b['hmc_scale']:g}x length")

    table = results["datasets"]
    methods = [m for m in (*GRID_METHODS, *REFERENCE_METHODS) if any(m in t for t in table.values())]
    pub_ll = ["PBP", "MC-Dropout 2016", "MC-Dropout 2018", "Ensemble 2017"]
    budget = results["budget"]
    missing = results.get("missing_cells") or 0
    lines = [f"# UCI regression benchmark ({results['split_kind']} splits, budget `{results['budget_name']}`)", "",
             f"Budget: {budget_text(budget) if isinstance(budget, dict) else budget}. "
             f"{plural(results['n_cells'], 'cell')} finished"
             + (f", {plural(missing, 'cell')} of the grid not run yet" if missing else "")
             + f"; {results['seconds'] / 60:.1f} min is the sum of the finished cells' wall times, not the command's "
             "(cells finished by earlier runs count, the time between cells does not). Mean ± standard error over the "
             "splits (n in the last table; one split: \"(n = 1)\", no SE); original units of y.", ""]
    if results.get("merged", {}).get("methods"):
        lines += [f"Cells of {', '.join(results['merged']['methods'])} taken from an earlier run "
                  f"(`{results['merged']['source']}`, same budget and split kind); the other methods' from this "
                  "one.", ""]
    if results["split_kind"] == "gap":
        lines += ["Gap splits (Foong et al. 2019): split k holds out the middle third of the data sorted by input "
                  "dimension k (only the dimensions with a real gap: no test value of the feature occurs in training, "
                  "`UCIDataset.gap_dimensions`); published numbers are for the standard splits and are not shown.", ""]
    header = ["dataset", *methods] + (pub_ll if results["split_kind"] == "standard" else [])
    lines += ["## Test log-likelihood (higher is better)", "", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(header)]
    for name in sorted(table):
        row = [name, *(cell(table[name].get(m, {}).get("test_ll")) for m in methods)]
        if results["split_kind"] == "standard":
            row += [_pub(PUBLISHED_LL.get(name, {}).get(p)) for p in pub_ll]
        lines.append("| " + " | ".join(row) + " |")
    header = ["dataset", *methods] + (["MC-Dropout 2018"] if results["split_kind"] == "standard" else [])
    lines += ["", "## RMSE (lower is better)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in sorted(table):
        row = [name, *(cell(table[name].get(m, {}).get("rmse"), 3) for m in methods)]
        if results["split_kind"] == "standard":
            row.append(_pub(PUBLISHED_RMSE.get(name, {}).get("MC-Dropout 2018")))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Predictive std / RMSE (1: as wide as the errors; > 1 over-dispersed, < 1 over-confident)", "",
              "| dataset | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for name in sorted(table):
        lines.append(f"| {name} | " + " | ".join(cell(table[name].get(m, {}).get("std_over_rmse")) for m in methods)
                     + " |")
    lines += ["", "## Splits and wall time per cell group", "", "| dataset | " + " | ".join(methods) + " |",
              "|" + "---|" * (len(methods) + 1)]
    for name in sorted(table):
        cells = [f"{t['n_splits']} / {t['seconds']:.0f} s" + (f" ({len(t['failed_splits'])} diverged)"
                                                                if t.get("failed_splits") else "")
                 if (t := table[name].get(m)) else "—" for m in methods]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    with_hmc = [n for n in sorted(table) if table[n].get("hmc", {}).get("rhat_f_max") is not None]
    if with_hmc:
        paired = [m for m in methods if m != "hmc"]
        lines += ["", "## Test LL minus HMC's, paired over the splits HMC ran (0: as good as the exact posterior)", "",
                  "| dataset | " + " | ".join(paired) + " |", "|" + "---|" * (len(paired) + 1)]
        for name in with_hmc:
            lines.append(f"| {name} | " + " | ".join(cell(table[name].get(m, {}).get("test_ll_minus_hmc"))
                                                       for m in paired) + " |")
        lines += ["", "HMC convergence (rank-normalised split R-hat and bulk ESS of the test predictions f(x), over "
                  "its splits): " + "; ".join(
                      f"{n}: R-hat max {(h := table[n]['hmc'])['rhat_f_max']:.2f}, median {h['rhat_f_median']:.3f}, "
                      f"ESS min {h['ess_f_min']:.0f}, {h['divergences']} divergences" for n in with_hmc) + "."]
    if any(key in table[n].get(m, {}) for n in table for m in methods for key in CHOICES):
        lines += ["", "## Chosen on validation", "",
                  "Every tuned method chooses its training length, its noise factor c (the predictive uses c σ) "
                  "and MC-Dropout its dropout rate per split, on that split's own validation "
                  f"carve-out (the last {VALIDATION:.0%} of a seeded permutation of the split's training rows): no "
                  "split's test rows touch any choice. The `-untuned` columns run the budget's length with c = 1. "
                  "Chosen values, over the splits (value ×count):", "",
                  "| dataset | method | length (steps) | c | dropout |", "|---|---|---|---|---|"]
        for n in sorted(table):
            for m in methods:
                entry = table[n].get(m, {})
                if any(key in entry for key in CHOICES):
                    lines.append(f"| {n} | {m} | " + " | ".join(_counts(entry.get(key)) for key in CHOICES) + " |")
    lines += ["", f"Published: {PUBLISHED_SOURCES}", "", "Settings (every dataset): "
              + "; ".join(f"{m}: {results['settings'][m]}" for m in methods if m in results["settings"]), ""]
    return "\n".join(lines)


def run_uci(data_dir: str | Path, out: str | Path, *, datasets: Sequence[str] | None = None,
            methods: Sequence[str] = GRID_METHODS, splits: int | None = None, budget: str | Budget = "full",
            split_kind: str = "standard", seed: int = 0, progress: bool = True, train: bool = True,
            on_cell: Callable[[dict[str, Any]], None] | None = None,
            merge: str | Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Run the benchmark grid (datasets x methods x splits) and write ``results.json`` and ``report.md``.

    Args:
        data_dir: a folder of dataset folders in the standard layout (``DIR/<name>/data.txt`` ...), or a data
            directory holding them under ``uci/``.
        out: the output folder; finished cells found there are not redone (resume).
        datasets: folder names (default: every dataset folder found).
        methods: some of :data:`GRID_METHODS` (:data:`UCI_METHODS` tuned, :data:`UNTUNED_METHODS`) and ``"hmc"``.
        splits: the first ``splits`` splits (default: the budget's).
        budget: a name in :data:`BUDGETS`, or a :class:`Budget` (recorded as ``"custom"``).
        split_kind: ``"standard"`` (the published splits) or ``"gap"`` (one per qualifying input dimension).
        seed: the base seed; split k trains with ``seed + k``.
        train: False: train nothing, only write ``results.json`` / ``report.md`` from the finished cells (e.g.
            after several processes each ran part of the grid into the same ``out``); missing cells are counted.
        on_cell: called with every newly finished cell's record.
        merge: an earlier run's ``results.json``: the methods not in ``methods`` are tabulated from it
            (:func:`merge_results`; same budget and split kind), e.g. after rerunning one method into a new ``out``.
        threads: torch threads while training (default one per process, :func:`bbh.threads.use_threads` with
            ``"small"``: these networks gain nothing from more, and several processes can share the cores; a
            count set with ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` is kept); restored after.

    Without a progress bar, inside :func:`bbh.training.progress.log_lines` (``bbh uci`` without a terminal), one
    line per finished cell with an ETA instead of the cells' own training lines.

    A cell whose training diverges (or whose scores are not finite) is recorded with its error under
    ``"failed"``, left out of the means and counted in the report; the run goes on. Cells record the budget and
    seed they were made with; resuming with others is refused.

    Raises:
        ValueError: an unknown method, budget, split kind or dataset, or ``out`` made with another budget.
        FileNotFoundError: ``data_dir`` holds no dataset folder.
    """
    from tqdm.auto import tqdm

    if isinstance(budget, Budget):
        plan, budget = budget, "custom"
    elif budget in BUDGETS:
        plan = BUDGETS[budget]
    else:
        raise ValueError(f"unknown budget {budget!r}; expected one of {', '.join(BUDGETS)} or a Budget")
    if split_kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {split_kind!r}; expected one of {', '.join(SPLIT_KINDS)}")
    valid = (*GRID_METHODS, *REFERENCE_METHODS)
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise ValueError(f"unknown UCI method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"expected some of {', '.join(valid)}")
    if splits is not None and splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    methods = list(dict.fromkeys(methods))  # a name given twice would count its splits twice
    root = uci_root(data_dir)
    found = uci_datasets(root)
    names = list(dict.fromkeys(datasets)) if datasets else found
    missing = [n for n in names if n not in found and not (root / n).is_dir()]
    if missing or not names:
        raise FileNotFoundError(f"{root}: no UCI dataset folder {', '.join(map(repr, missing)) or '(none found)'}; "
                                f"found: {', '.join(found) or 'none'}")
    loaded = {n: load_uci(root / n) for n in names}  # an incomplete folder: load_uci names the missing file
    out_dir = ensure_writable(out)
    _check_same_budget(out_dir, budget, asdict(plan), seed)
    made_by = {"budget_name": budget, "budget": asdict(plan), "seed": seed}
    grid = [(n, m, k) for n in names for m in methods for k in _splits_for(loaded[n], m, split_kind, plan, splits)]
    settings: dict[str, Any] = {m: uci_settings()[m].describe() for m in methods if m in GRID_METHODS}
    cells: list[dict[str, Any]] = []
    todo = []
    for n, m, k in grid:
        path = cell_path(out_dir, split_kind, n, m, k)
        record = read_json_object(path)  # None: not done (or unreadable: redone)
        if record is None or not ({"test_ll", "rmse", "split"} <= record.keys() or "failed" in record):
            todo.append((n, m, k))
            continue
        if m in GRID_METHODS and record.get("setting") != settings[m]:
            raise ValueError(f"{path} was made with other {m} settings ({record.get('setting')}) than this version's "
                             f"({settings[m]}); choose another --out")
        other = {key: (record[key], value) for key, value in made_by.items() if key in record and record[key] != value}
        if other:
            raise ValueError(f"{path} was made with other {', '.join(other)} ({other}); choose another --out")
        cells.append(record)
    earlier: dict[str, Any] | None = None
    if merge is not None:
        try:
            earlier = json.loads(Path(merge).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--merge {merge}: cannot read a results.json ({err})") from err

    def tabulate(missing: int) -> dict[str, Any]:
        own = _results(cells, budget, plan, split_kind, settings, missing=missing)
        return own if earlier is None else merge_results(own, earlier, methods, source=str(merge))

    results = tabulate(len(todo))
    if not train:
        todo = []
    selecting = {m for m in methods if m in GRID_METHODS and uci_settings()[m].selects}
    chosen: dict[tuple[str, str, int], dict[str, Any]] = {}  # (dataset, method, split) -> its own selection
    started, done_before = time.perf_counter(), len(grid) - len(todo)
    with use_threads("small", threads), tqdm(total=len(grid), initial=done_before, desc="bbh uci",
                                             disable=not progress, unit="cell") as bar:
        if todo:
            announce()
            if not progress:
                lines.emit(f"bbh uci: {len(todo)} cell{'' if len(todo) == 1 else 's'} to run, {done_before} done")
        for i, (n, m, k) in enumerate(todo, 1):
            bar.set_postfix_str(f"{n} {m} split {k}")
            if m in selecting and (n, m, k) not in chosen:
                bar.set_postfix_str(f"{n} {m} split {k}: choosing on its validation carve-out")
                with lines.quiet():
                    chosen[n, m, k] = _selection(out_dir, loaded[n], m, k, split_kind, plan, seed, settings[m])
            selection = chosen.get((n, m, k), {})
            try:
                with lines.quiet():  # one line per cell below, not the cell's training lines
                    record = run_cell(loaded[n], m, k, kind=split_kind, budget=plan, seed=seed,
                                      steps=selection.get("steps"), noise_scale=selection.get("noise_scale"),
                                      dropout=selection.get("dropout"))
            except FloatingPointError as err:  # a diverged cell is recorded (and not retried: its seed is fixed)
                record = {"dataset": n, "method": m, "split": k, "kind": split_kind, "failed": str(err),
                          "seconds": 0.0, "setting": settings.get(m)}
                print(f"bbh uci: {n} {m} split {k} diverged, recorded as failed: {err}", file=sys.stderr)
            record.update(made_by)
            write_json(cell_path(out_dir, split_kind, n, m, k), record)
            cells.append(record)
            results = tabulate(len(grid) - len(cells))
            _write_results(out_dir, results)
            if on_cell is not None:
                on_cell(record)
            bar.update(1)
            if not progress:
                elapsed = time.perf_counter() - started
                eta = f"ETA {lines.duration(elapsed / i * (len(todo) - i))}" if i < len(todo) else "done"
                lines.emit(f"bbh uci: cell {done_before + i}/{len(grid)} {n} {m} split {k} "
                           f"({record['seconds']:.1f} s); {lines.duration(elapsed)} elapsed, {eta}")
    _write_results(out_dir, results)
    return results


def selection_path(out: Path, kind: str, dataset: str, method: str, split: int) -> Path:
    """Where what was chosen for (dataset, method, split) on validation lives (:func:`select_on_validation`)."""
    return out / "selection" / kind / dataset / method / f"split_{split}.json"


def _selection(out: Path, dataset: UCIDataset, method: str, k: int, kind: str, plan: Budget, seed: int,
               setting: dict[str, Any]) -> dict[str, Any]:
    """The stored choice for split ``k`` of (dataset, method) (:func:`select_on_validation` on that split's own
    carve-out), made once and reused by a resumed run."""
    path = selection_path(out, kind, dataset.name, method, k)
    stored = read_json_object(path)
    if (stored is not None and stored.get("setting") == setting and stored.get("budget") == asdict(plan)
            and stored.get("seed") == seed):
        return stored
    chosen = select_on_validation(dataset, method, split=k, kind=kind, budget=plan, seed=seed)
    chosen.update(dataset=dataset.name, method=method, kind=kind, setting=setting, budget=asdict(plan), seed=seed)
    write_json(path, chosen)
    return chosen


def uci_root(data_dir: str | Path) -> Path:
    """``data_dir/uci`` when it exists, else ``data_dir`` itself (a folder of dataset folders)."""
    root = Path(data_dir)
    return root / "uci" if (root / "uci").is_dir() else root


def _check_same_budget(out: Path, budget: str, plan: dict[str, Any], seed: int) -> None:
    """Resume only what the same budget and seed made: cells of another budget would mix into the tables."""
    meta = out / "uci-run.json"
    made = read_json_object(meta)
    if made is None and meta.exists():
        raise ValueError(f"{meta} is unreadable; it records which budget and seed made the cells in {out}: restore "
                         f"it or choose another --out")
    if made is not None:
        if (made.get("budget"), made.get("plan"), made.get("seed")) != (budget, plan, seed):
            raise ValueError(f"{out} holds a run with budget {made.get('budget')!r} and seed {made.get('seed')}; "
                             f"resume it with those, or choose another --out for budget {budget!r} seed {seed}")
    else:
        write_json(meta, {"budget": budget, "plan": plan, "seed": seed})


def _results(cells: list[dict[str, Any]], budget: str, plan: Budget, kind: str,
             settings: dict[str, Any], missing: int = 0) -> dict[str, Any]:
    return {"split_kind": kind, "budget_name": budget, "budget": asdict(plan), "settings": settings,
            "n_cells": len(cells), "missing_cells": missing, "seconds": sum(c["seconds"] for c in cells),
            "datasets": aggregate(cells),
            "published": {"test_ll": PUBLISHED_LL, "rmse": PUBLISHED_RMSE, "sources": PUBLISHED_SOURCES}}


def _write_results(out: Path, results: dict[str, Any]) -> None:
    suffix = "" if results["split_kind"] == "standard" else f"-{results['split_kind']}"
    write_json(out / f"results{suffix}.json", results)
    report = render_report(results)
    atomic_write(out / f"report{suffix}.md", lambda tmp: Path(tmp).write_text(report))


__all__ = ["BUDGETS", "GRID_METHODS", "HMC_MAX_ROWS", "NOISE_SCALES", "UCI_METHODS", "UNTUNED_METHODS",
           "VALIDATION", "Budget", "UCISetting", "aggregate", "build_method", "mean_se", "merge_results",
           "prior_std", "render_report", "run_cell", "run_uci", "scale_noise", "score", "select_on_validation",
           "selection_grid", "selection_path", "selection_rows", "training_steps", "uci_settings"]

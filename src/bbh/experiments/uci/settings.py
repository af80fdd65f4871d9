"""The UCI benchmark's methods, budgets and per-method settings (:func:`uci_settings`), and how a setting
becomes a method and a training length."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from ...core.likelihoods import Heteroscedastic, LearnedGaussian
from ...data.uci import UCIDataset
from ...models import MLP
from ...posteriors import Method, create
from ..settings import MethodSetting

UCI_METHODS = ("map", "mc-dropout", "ensemble", "bbb", "mnf", "bbh")
"""The methods of the benchmark, in report order, each under one tuning protocol (:func:`uci_settings`); the
references (:data:`REFERENCE_METHODS`) are run when asked for."""
UNTUNED = "-untuned"
UNTUNED_METHODS = tuple(m + UNTUNED for m in UCI_METHODS)
"""The same methods under the untuned 2016 protocol (the budget's length, the learned σ as it is, MC-Dropout's
rate 0.05): the columns beside the tuned ones that show what tuning buys each method."""
GRID_METHODS = tuple(m for pair in zip(UCI_METHODS, UNTUNED_METHODS) for m in pair)
"""What ``bbh uci`` runs by default: each method tuned, then untuned."""
REFERENCE_METHODS = ("hmc", "nuts")
"""Samplers of the same network's posterior, the references the methods are paired with: ``"hmc"`` (bbh's own,
:mod:`bbh.reference.hmc_regression`) and ``"nuts"`` (NumPyro's NUTS, 4 chains; extra ``reference``,
:mod:`bbh.reference.nuts`). Both run on the datasets of at most :data:`HMC_MAX_ROWS` rows, on the budget's
``hmc_splits`` splits, with chains scaled by its ``hmc_scale``."""
HMC_MAX_ROWS = 1100
"""The references run on datasets with at most this many rows (boston, concrete, energy, yacht; not wine's 1,599)."""

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
class UCISetting(MethodSetting):
    """How one method is built and trained on a UCI split (the same for every dataset).

    Attributes:
        method: the registered method name.
        options: keyword options for :func:`bbh.create` (besides model and likelihood).
        likelihood: ``"gaussian"`` (learned homoscedastic σ) or ``"heteroscedastic"``.
        dropout: the MLP's dropout rate (MC-Dropout: on the inputs and the hidden units).
        lr: Adam's learning rate.
        batch_size: minibatch size.
        kl_anneal: multiplies the KL term (1: the ELBO).
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

    likelihood: str = "gaussian"
    dropout: float = 0.0
    batch_size: int = 32
    kl_anneal: float = 1.0
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
        """The setting as plain data (recorded in every cell; resuming compares it). ``select_steps``,
        ``calibrate_noise`` and ``select_dropout`` appear only when set (an untuned setting has none of them)."""
        d = super().describe()
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
        "bbh": UCISetting("bbh", dict(hidden=(16, 32, 64), noise="shared", noise_dim=8, draws_per_step=20,
                                      likelihood_samples="average", kl="nn-entropy", init_spread=None), lr=3e-3,
                          **tuned),
    }
    settings.update({m + UNTUNED: settings[m].untuned() for m in UCI_METHODS})
    return settings


def prior_std(method: Method) -> float | None:
    """The std of the Normal prior ``method`` puts on every weight and bias (``None``: no prior, the deep
    ensemble). MNF's is read from its layers' buffers, the others' from ``method.prior``."""
    from ...posteriors.ensemble import DeepEnsemble
    from ...posteriors.mnf import MNFLayer

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

def protocol_hidden(dataset: UCIDataset) -> int:
    """Hidden units of the protocol's network: ``n_hidden.txt`` when the folder has it, else the published
    choice (100 for protein-tertiary-structure, 50 for every other dataset; Hernández-Lobato & Adams 2015)."""
    if dataset.n_hidden is not None:
        return dataset.n_hidden
    return 100 if dataset.name.startswith("protein") else 50

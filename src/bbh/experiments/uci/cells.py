"""One (dataset, method, split) cell: train, score in the original units, record (:func:`run_cell`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...core.predictive import RegressionPredictive
from ...data.uci import UCIDataset, UCISplit
from ...posteriors import Method
from ...training.trainer import Trainer
from .settings import (
    BUDGETS,
    REFERENCE_METHODS,
    Budget,
    UCISetting,
    build_method,
    protocol_hidden,
    training_steps,
    uci_settings,
)


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


def train_setting(setting: UCISetting, dataset: UCIDataset, split: UCISplit, epochs: int, batch_size: int, seed: int,
           at_epoch: Callable[[Method, int], None] | None = None) -> tuple[Method, dict[str, Any]]:
    """Build ``setting``'s method for ``dataset`` and train it on ``split``'s training part for ``epochs``;
    ``at_epoch(model, finished_epochs)`` is called after every epoch. Returns the model and the last epoch's
    history record."""
    torch.manual_seed(seed)
    model = build_method(setting, dataset.x.shape[1], protocol_hidden(dataset))
    trainer = Trainer(model, optimizer=setting.optimizer, lr=setting.lr, epochs=epochs, kl_anneal=setting.kl_anneal,
                      device="cpu", seed=seed, progress=False, handle_signals=False)
    if at_epoch is not None:
        trainer.callbacks.append(lambda record: at_epoch(model, trainer.epoch) if record["event"] == "epoch" else None)
    history = trainer.fit((split.x_train.float(), split.y_train.float().unsqueeze(-1)), batch_size=batch_size)
    return model, history[-1]

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
    if method in REFERENCE_METHODS:
        record = _run_reference_cell(method, split, x_eval, y_eval, y_raw, n_hidden, budget, seed=seed + k)
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
        model, last = train_setting(setting, dataset, split, epochs, batch_size, seed + k)
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


def cell_path(out: Path, kind: str, dataset: str, method: str, k: int) -> Path:
    """Where a finished cell's record lives."""
    return out / "cells" / kind / dataset / method / f"split_{k}.json"


def _run_reference_cell(method: str, split: UCISplit, x: Tensor, y: Tensor, y_raw: Tensor, n_hidden: int,
                        budget: Budget, seed: int) -> dict[str, Any]:
    """A reference sampler on one split, its chains scaled by ``budget.hmc_scale``, scored as the methods are, with
    its convergence diagnostics and each chain's own test LL:

    * ``"hmc"`` (:func:`bbh.reference.hmc_regression.hmc_regression`): 2 chains of 400 warm-up and 400 sampling
      iterations of 150 leapfrog steps;
    * ``"nuts"`` (:func:`bbh.reference.nuts.nuts_regression`): 4 chains of 500 warm-up and 1,000 kept iterations,
      tree depth at most 10; its diagnostics also say whether it meets the bar
      (:meth:`~bbh.reference.nuts.NUTSResult.meets_bar`: R-hat ≤ 1.05 on 99 % of the test points, bulk ESS ≥ 200
      on all, no divergence).
    """
    init_steps = max(100, round(3000 * budget.hmc_scale))
    if method == "hmc":
        from ...reference.hmc_regression import hmc_regression as sampler

        iterations = max(8, round(400 * budget.hmc_scale))
        chain: dict[str, int] = {"num_samples": iterations, "burn_in": iterations, "init_steps": init_steps}
    else:
        from ...reference.nuts import nuts_regression as sampler

        chain = {"chains": 4, "warmup": max(8, round(500 * budget.hmc_scale)),
                 "samples": max(8, round(1000 * budget.hmc_scale)), "init_steps": init_steps}
    result = sampler(split.x_train, split.y_train, x, hidden=n_hidden, seed=seed, **chain)
    predictive = result.predictive()  # one-output draws [S, B]: score wants [S, B, 1]
    record: dict[str, Any] = score(RegressionPredictive(predictive.sample_means.unsqueeze(-1),
                                                       predictive.sample_variances.unsqueeze(-1)), split, y, y_raw)
    record["diagnostics"] = result.diagnostics.to_dict()
    if hasattr(result, "meets_bar"):
        record["diagnostics"]["meets_bar"] = result.meets_bar()
    record["setting"] = {"method": method, **chain}
    record["test_ll_chains"] = result.test_metrics(y, split.y_std)["test_ll_chains"]
    return record


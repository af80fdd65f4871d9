"""The training objective (negative ELBO per data point) and KL annealing schedules.

The objective, stated once for every method of bbh:

    loss = (1/B) Σ_{b in minibatch} -log p(y_b | x_b, w)  +  kl_weight(t) · KL(q || p) / N

with B the minibatch size and N the number of training examples. Multiplying by N gives the negative
ELBO of the whole data set, -E_q[log p(D | w)] + KL(q || p) (paper Eq. 1), so the minibatch loss is an
unbiased estimate of -ELBO / N whatever B is: the scaling does not depend on the batch size (tested in
``tests/test_elbo.py``). ``kl_weight(t)`` is the annealing factor of paper Sec. 3 ("MNF and BbH anneal
the KL term"); it is 1 for the plain ELBO.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass
class LossTerms:
    """The terms of one training loss, kept apart for logging.

    Attributes:
        nll: mean negative log-likelihood over the minibatch.
        kl: the (estimated) KL(q || p) of the whole posterior, not yet divided by N.
        kl_weight: the annealing factor used.
        total: nll + kl_weight * kl / num_data, the quantity to minimise.
        extras: further values to log (floats).
        outputs: the detached per-example outputs the NLL was computed from, ``[B, ...]`` (a classifier's
            logits or log-probabilities), so that a training loop can report e.g. the training accuracy
            without reaching into the method; None where there is no single per-example output.
    """

    nll: Tensor
    kl: Tensor
    kl_weight: float
    total: Tensor
    extras: dict[str, float] = field(default_factory=dict)
    outputs: Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        """Detached Python floats of every term, for logs and progress bars."""
        out = {"loss": float(self.total.detach()), "nll": float(self.nll.detach()),
               "kl": float(self.kl.detach()), "kl_weight": float(self.kl_weight)}
        out.update(self.extras)
        return out


def elbo(nll: Tensor, kl: Tensor | float, *, num_data: int, kl_weight: float = 1.0,
         outputs: Tensor | None = None) -> LossTerms:
    """Combine a mean minibatch NLL and a KL into the per-datum negative ELBO.

    total = nll + kl_weight * kl / num_data   (module docstring; paper Eq. 1 divided by N)

    Args:
        nll: mean negative log-likelihood over the minibatch (scalar).
        kl: KL(q || p) of the whole weight posterior (scalar), or 0 for methods without one.
        num_data: N, the number of training examples (> 0).
        kl_weight: annealing factor in [0, inf).
        outputs: the per-example outputs behind ``nll`` (stored detached in :attr:`LossTerms.outputs`).
    """
    if not isinstance(num_data, int) or isinstance(num_data, bool) or num_data <= 0:
        raise ValueError(f"num_data must be a positive int (the training-set size N), got {num_data!r}")
    if not math.isfinite(kl_weight) or kl_weight < 0:
        raise ValueError(f"kl_weight must be finite and >= 0, got {kl_weight!r}")
    kl_t = kl if isinstance(kl, Tensor) else torch.as_tensor(float(kl), dtype=nll.dtype, device=nll.device)
    total = nll + kl_weight * kl_t / num_data
    return LossTerms(nll=nll, kl=kl_t, kl_weight=float(kl_weight), total=total,
                     outputs=None if outputs is None else outputs.detach())


class Schedule(Protocol):
    """A KL weight as a function of the optimisation step (0-based)."""

    def __call__(self, step: int, steps_per_epoch: int | None = None) -> float: ...


class ConstantWeight:
    """kl_weight(t) = value (1 gives the plain ELBO: BbB, MAP, and BbH without ``-a``)."""

    def __init__(self, value: float = 1.0) -> None:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"kl weight must be finite and >= 0, got {value!r}")
        self.value = float(value)

    def __call__(self, step: int, steps_per_epoch: int | None = None) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"ConstantWeight({self.value})"


class LinearAnneal:
    """kl_weight(t) = clip((t - start) / length, 0, 1): zero, then a linear ramp, then one.

    The authors' ``-a`` schedule (docs/protocol.md §3): start 5 epochs, length 15 epochs on MNIST
    (start 20 on CIFAR), counted in iterations: a = (i - s·B) / (L·B) with B batches per epoch.

    Args:
        start: when the ramp begins.
        length: how long it lasts (> 0).
        unit: ``"epoch"`` (converted with the trainer's batches per epoch) or ``"step"``.
    """

    def __init__(self, start: float = 5, length: float = 15, unit: str = "epoch") -> None:
        if unit not in ("epoch", "step"):
            raise ValueError(f"unknown unit {unit!r}; expected 'epoch' or 'step'")
        if start < 0 or length <= 0:
            raise ValueError(f"need start >= 0 and length > 0, got start={start}, length={length}")
        self.start, self.length, self.unit = float(start), float(length), unit

    def __call__(self, step: int, steps_per_epoch: int | None = None) -> float:
        scale = 1.0
        if self.unit == "epoch":
            if not steps_per_epoch:
                raise ValueError("LinearAnneal in epochs needs steps_per_epoch (the number of batches per epoch)")
            scale = float(steps_per_epoch)
        return min(max((step - self.start * scale) / (self.length * scale), 0.0), 1.0)

    def scaled(self, factor: float) -> LinearAnneal:
        """The same ramp with ``start`` and ``length`` multiplied by ``factor`` (a run cut to 3 of 100 epochs
        keeps its KL switched on: "0 until epoch 5, 1 from epoch 20" becomes "0 until 0.15, 1 from 0.6")."""
        return LinearAnneal(self.start * factor, self.length * factor, self.unit)

    def __repr__(self) -> str:
        return f"LinearAnneal(start={self.start:g}, length={self.length:g}, unit={self.unit!r})"


class ToyAnneal:
    """kl_weight(i) = clip(10 / (i + 1) - offset, 0, 1): the authors' toy-regression schedule.

    With offset 1 (their newer notebook and the PyTorch port) the weight is 1 for i <= 4, then 0.67, 0.43,
    0.25, 0.11 and 0 from i = 9 on: the KL acts only in the first ten iterations (docs/protocol.md §1.4).
    """

    def __init__(self, offset: float = 1.0) -> None:
        self.offset = float(offset)

    def __call__(self, step: int, steps_per_epoch: int | None = None) -> float:
        return min(max(10.0 / (step + 1) - self.offset, 0.0), 1.0)

    def __repr__(self) -> str:
        return f"ToyAnneal(offset={self.offset:g})"


def as_schedule(value: Schedule | float | None) -> Schedule:
    """None -> constant 1, a number -> constant, a schedule -> itself."""
    if value is None:
        return ConstantWeight(1.0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ConstantWeight(float(value))
    if callable(value):
        return value
    raise TypeError(f"kl_anneal must be a number, a schedule or None, got {type(value).__name__}")


def schedule_to_spec(schedule: Schedule | None) -> dict[str, Any]:
    """A schedule as plain data (checkpoints, configs): the inverse of :func:`schedule_from_spec`.

    None -> ``{"kind": "none"}``; bbh's schedules -> their kind and arguments; any other callable ->
    ``{"kind": "custom", "repr": ...}``, which cannot be rebuilt from data.
    """
    if schedule is None:
        return {"kind": "none"}
    if isinstance(schedule, ConstantWeight):
        return {"kind": "constant", "value": schedule.value}
    if isinstance(schedule, LinearAnneal):
        return {"kind": "linear", "start": schedule.start, "length": schedule.length, "unit": schedule.unit}
    if isinstance(schedule, ToyAnneal):
        return {"kind": "toy", "offset": schedule.offset}
    return {"kind": "custom", "repr": repr(schedule)}


def schedule_from_spec(spec: Any) -> Schedule | None:
    """The one reader of KL schedules written as data (TOML ``train.kl_anneal``, checkpoints).

    ``None`` / ``"none"`` / ``{"kind": "none"}`` -> None (weight 1); a number -> :class:`ConstantWeight`;
    ``{"kind": "constant", "value": v}``; ``{"kind": "linear", "start", "length", "unit"}`` -> :class:`LinearAnneal`
    (missing keys take its defaults, the paper's 5 and 15 epochs); ``{"kind": "toy", "offset"}`` ->
    :class:`ToyAnneal`.

    Raises:
        ValueError: anything else, a ``"custom"`` schedule included (a callable must be passed again).
    """
    if spec is None or spec == "none":
        return None
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return ConstantWeight(float(spec))
    if isinstance(spec, Mapping):
        kind, args = spec.get("kind"), {k: v for k, v in spec.items() if k != "kind"}
        builders: dict[str, Callable[..., Schedule]] = {"constant": ConstantWeight, "linear": LinearAnneal,
                                                        "toy": ToyAnneal}
        if kind == "none" and not args:
            return None
        if kind in builders:
            try:
                return builders[kind](**args)
            except TypeError as error:
                raise ValueError(f"KL schedule {dict(spec)!r}: {error}") from None
        if kind == "custom":
            raise ValueError(f"a custom KL schedule ({spec.get('repr')}) cannot be rebuilt from data; pass it again")
    raise ValueError(f"a KL schedule must be 'none', a number or a table {{kind = \"linear\", start, length, unit}} "
                     f"(or constant / toy), got {spec!r}")


def scale_schedule_spec(spec: Any, factor: float) -> Any:
    """``spec`` with a linear ramp's epochs (or steps) multiplied by ``factor`` (:meth:`LinearAnneal.scaled`);
    every other schedule is returned as it is."""
    schedule = schedule_from_spec(spec)
    if not isinstance(schedule, LinearAnneal):
        return spec
    return schedule_to_spec(schedule.scaled(factor))

"""How one method is built and trained in an experiment: the dataclass that ``bbh toy`` and ``bbh uci`` extend and
that ``bbh train``'s TOML experiments map onto.

The one TOML mapping (:meth:`MethodSetting.from_config`): ``experiment.method`` -> :attr:`~MethodSetting.method`,
the ``[method]`` table -> :attr:`~MethodSetting.options`, ``train.optimizer`` / ``train.lr`` / ``train.kl_anneal``
-> :attr:`~MethodSetting.optimizer` / :attr:`~MethodSetting.lr` / :attr:`~MethodSetting.kl_anneal` (the schedule
read by the one codec of :mod:`bbh.core.elbo`). :meth:`MethodSetting.describe` writes a setting back as plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..core.elbo import Schedule, as_schedule, schedule_from_spec, schedule_to_spec
from ..posteriors import Method


@dataclass(frozen=True)
class MethodSetting:
    """``bbh.create(method, model, **options)`` trained by a Trainer with ``optimizer``, ``lr`` and ``kl_anneal``.

    Attributes:
        method: a name of :func:`bbh.available_methods`.
        options: the method's keyword options.
        optimizer: the Trainer's optimizer.
        lr: its learning rate (None: the method's default, ``Method.default_lr``).
        kl_anneal: the KL weight: a number, a schedule or None (1).
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float | None = 1e-3
    kl_anneal: Schedule | float | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MethodSetting:
        """The setting of a resolved ``bbh train`` configuration (the module docstring's mapping)."""
        train = config["train"]
        return cls(config["experiment"]["method"], dict(config["method"]), optimizer=train["optimizer"],
                   lr=train["lr"], kl_anneal=schedule_from_spec(train["kl_anneal"]))

    def build(self, model: nn.Module) -> Method:
        """``bbh.create(method, model, **options)`` (looked up when called, so a patched factory is the one used)."""
        from .. import posteriors

        return posteriors.create(self.method, model, **self.options)

    def describe(self) -> dict[str, Any]:
        """The setting as plain data: options with tuples as lists and objects as their repr, the KL schedule as
        :func:`bbh.core.elbo.schedule_to_spec` writes it."""
        d = asdict(self)
        d["options"] = {k: (list(v) if isinstance(v, tuple) else v if isinstance(v, (str, int, float, bool, list,
                                                                                      type(None))) else repr(v))
                        for k, v in self.options.items()}
        d["kl_anneal"] = schedule_to_spec(as_schedule(self.kl_anneal))
        return d


__all__ = ["MethodSetting"]

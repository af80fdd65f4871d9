"""How one method is built and trained in an experiment: the dataclass that ``bbh toy`` and ``bbh uci`` extend.

``bbh train``'s TOML experiments state the same things as tables (``[method]`` = :attr:`MethodSetting.options`,
``[train]`` optimizer, lr, kl_anneal); :meth:`MethodSetting.describe` writes a setting as the plain data a result
records, with the KL schedule in the one codec of :mod:`bbh.core.elbo`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.elbo import Schedule, as_schedule, schedule_to_spec


@dataclass(frozen=True)
class MethodSetting:
    """``bbh.create(method, model, **options)`` trained by a Trainer with ``optimizer``, ``lr`` and ``kl_anneal``.

    Attributes:
        method: a name of :func:`bbh.available_methods`.
        options: the method's keyword options.
        optimizer: the Trainer's optimizer.
        lr: its learning rate.
        kl_anneal: the KL weight: a number, a schedule or None (1).
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 1e-3
    kl_anneal: Schedule | float | None = None

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

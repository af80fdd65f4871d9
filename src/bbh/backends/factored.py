"""Collection point for low-rank ("factored") weight gradients, active only inside :func:`collecting`.

A hypernet output layer y = h W^T + b (h [S, H], W [P, H]) has the rank-S weight gradient

    dW = dy^T h = L R,   L = dy^T [P, S],  R = h [S, H].

For the LeNet fc1 head (P = 400,000, H = 512) materialising dW writes 800 MB that an optimizer reads right
back. An optimizer that can form dW block by block (:mod:`bbh.training.optim`) opts in for *its own*
backward pass only::

    with collecting(collector):       # what ``optimizer.factored_backward()`` does
        loss.backward()

Inside the context, a layer that can factor its weight gradient calls :func:`offer_factors`; when the active
collector wants that parameter the factors (L, R) are recorded in the collector (owned by the optimizer,
never stored on the Parameter) and the layer returns no dense dW. Everywhere else — no context, a parameter
the collector does not want, ``torch.autograd.grad`` asking for the weight, a double backward — the layer
returns its dense dW and autograd fills ``.grad`` as usual. Nothing here is stored between steps except in
a collector, which its optimizer clears in ``zero_grad`` and consumes in ``step``.

The active collector is a module-level variable, not a thread-local one: autograd runs the backward of CUDA
tensors on its own device threads, which must see the collector of the thread that called ``backward``. A
backward run by another thread *while* a collector is active would offer its factors to that collector too;
bbh's optimizers only activate it around their own ``loss.backward()``.

This module depends on torch alone (posteriors/ and training/ both import it; neither imports the other).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

Factors = list[tuple[Tensor, Tensor]]
"""Pairs (L [P, S_i], R [S_i, H]) whose products sum to a weight gradient: dW = Σ_i L_i R_i."""


class FactorCollector:
    """The factored gradients of the parameters one optimizer updates, between its backward and its step.

    Args:
        params: the parameters whose factors this collector accepts (:meth:`want` can replace them).
    """

    def __init__(self, params: Iterable[Tensor] = ()) -> None:
        self._wanted: set[int] = set()
        self._factors: dict[int, Factors] = {}
        self.want(params)

    def want(self, params: Iterable[Tensor]) -> None:
        """Accept factors for exactly ``params`` from now on (factors already collected are kept)."""
        self._wanted = {id(p) for p in params}

    def wants(self, param: Tensor) -> bool:
        """Whether factors offered for ``param`` are recorded here."""
        return id(param) in self._wanted

    def add(self, param: Tensor, left: Tensor, right: Tensor) -> None:
        """Record dW(param) += left @ right (left [P, S], right [S, H]); accumulates like ``.grad``."""
        if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[0] \
                or (left.shape[0], right.shape[1]) != tuple(param.shape):
            raise ValueError(f"factors {tuple(left.shape)} @ {tuple(right.shape)} do not give a gradient of "
                             f"shape {tuple(param.shape)}")
        # detached: a saved input of the backward still carries its grad_fn, which would keep the graph alive
        self._factors.setdefault(id(param), []).append((left.detach(), right.detach()))  # atomic under the GIL

    def get(self, param: Tensor) -> Factors:
        """The factors collected for ``param`` (empty list when none); they stay collected."""
        return self._factors.get(id(param), [])

    def pop(self, param: Tensor) -> Factors:
        """Remove and return the factors of ``param`` (empty list when none)."""
        return self._factors.pop(id(param), [])

    def scale_(self, coef: Tensor | float) -> None:
        """Multiply every collected gradient by ``coef``: (L, R) -> (L, coef R), R being the small factor."""
        for factors in self._factors.values():
            factors[:] = [(left, right * (coef.to(right.device) if torch.is_tensor(coef) else coef))
                          for left, right in factors]

    def clear(self) -> None:
        """Drop every collected factor (what ``zero_grad`` does)."""
        self._factors.clear()

    def __len__(self) -> int:
        """Number of parameters with collected factors."""
        return sum(1 for factors in self._factors.values() if factors)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        return f"FactorCollector(wanted={len(self._wanted)}, holding={len(self)})"


_active: FactorCollector | None = None


def active() -> FactorCollector | None:
    """The collector of the enclosing :func:`collecting` context, None outside one."""
    return _active


@contextmanager
def collecting(collector: FactorCollector) -> Iterator[FactorCollector]:
    """Make ``collector`` the active one for the enclosed backward pass; the previous one is restored on exit
    (also when the block raises)."""
    global _active
    previous, _active = _active, collector
    try:
        yield collector
    finally:
        _active = previous


def _engine_use(param: Tensor) -> str:
    """What the running backward does with ``param``'s gradient: ``"accumulate"`` (into ``.grad``, the case
    factors may replace), ``"unused"`` (the engine drops it: ``autograd.grad`` or ``backward(inputs=...)``
    for other tensors) or ``"capture"`` (``torch.autograd.grad`` returns it: it must be dense)."""
    try:
        node = torch.autograd.graph.get_gradient_edge(param).node
        return "accumulate" if torch._C._will_engine_execute_node(node) else "unused"
    except RuntimeError:  # torch raises for a leaf that autograd.grad captures
        return "capture"
    except (AttributeError, TypeError):  # pragma: no cover - a torch without these helpers
        return "accumulate"


def offer_factors(param: Tensor, left: Tensor, right: Tensor) -> bool:
    """Called by a layer's backward for a weight gradient dW = left @ right (left [P, S], right [S, H]).

    Returns:
        True when the gradient is taken care of (recorded in the active collector, or not needed by this
        backward at all): the layer returns None for dW. False: the layer must return the dense dW.
    """
    collector = _active
    if collector is None or not collector.wants(param) or torch.is_grad_enabled():  # grad mode: double backward
        return False
    use = _engine_use(param)
    if use == "capture":
        return False
    if use == "accumulate":
        collector.add(param, left, right)
    return True


__all__ = ["FactorCollector", "Factors", "active", "collecting", "offer_factors"]

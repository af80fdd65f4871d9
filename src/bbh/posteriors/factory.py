"""Build a method by name: ``bbh.create("bbh", model, layout="layerwise")``; methods register themselves."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .protocol import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a method to the :func:`create` factory under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(_REGISTRY)


def create(method: str, model: nn.Module, **options: Any) -> Method:
    """Build a method by name: ``bbh.create("bbh", model, layout="layerwise", noise="independent")``.

    Raises:
        ValueError: unknown method name or unknown option (the message lists the valid ones).
    """
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(map(repr, available_methods()))}")
    cls = _REGISTRY[method]
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p not in ("self", "model")]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for method {method!r}; "
                         f"valid options: {', '.join(valid)}")
    return cls(model, **options)


__all__ = ["available_methods", "create", "register"]

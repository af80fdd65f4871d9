"""The main networks by name, as a run configuration's ``[model]`` table names them.

``build_model({"name": "lenet5"}, num_classes=10)`` is how ``bbh train`` and ``bbh evaluate`` turn a
configuration into a network; the remaining keys of the table are the network's constructor options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .lenet import LeNet5
from .mlp import MLP
from .resnet import ResNet32

MODEL_NAMES = ("lenet5", "resnet32", "mlp")
"""The names :func:`build_model` accepts."""


def build_model(options: Mapping[str, Any], num_classes: int) -> nn.Module:
    """Build the network named by ``options["name"]`` with the remaining options.

    Args:
        options: a ``[model]`` table: ``name`` ("lenet5", "resnet32" or "mlp") and constructor options
            (``mlp`` takes ``in_features`` and ``hidden`` and expects flat inputs).
        num_classes: the number of output classes.

    Returns:
        A freshly initialised network (parameters drawn from torch's global generator).

    Raises:
        ValueError: unknown name, or ``mlp`` without ``in_features``.
    """
    opts = {k: v for k, v in options.items() if k != "name"}
    name = options.get("name", "")
    if name == "lenet5":
        return LeNet5(num_classes=num_classes, **opts)
    if name == "resnet32":
        return ResNet32(num_classes=num_classes, **opts)
    if name == "mlp":
        if "in_features" not in opts:
            raise ValueError("model 'mlp' needs in_features")
        return MLP(opts.pop("in_features"), num_classes, hidden=tuple(opts.pop("hidden", (32,))), **opts)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(map(repr, MODEL_NAMES))}")


__all__ = ["MODEL_NAMES", "build_model"]

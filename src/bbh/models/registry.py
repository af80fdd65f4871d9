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
from .resnet18 import ResNet18
from .wide_resnet import WideResNet

MODEL_NAMES = ("lenet5", "resnet32", "mlp", "resnet20", "resnet18", "wrn28-10", "wide_resnet")
"""The names :func:`build_model` accepts."""


def build_model(options: Mapping[str, Any], num_classes: int) -> nn.Module:
    """Build the network named by ``options["name"]`` with the remaining options.

    Args:
        options: a ``[model]`` table: ``name`` (one of :data:`MODEL_NAMES`) and constructor options
            (``mlp`` takes ``in_features`` and ``hidden`` and expects flat inputs). ``resnet20`` is He et al.'s
            CIFAR ResNet-20, ``ResNet32(variant="standard", depth=20)`` (options may override the variant);
            ``resnet18`` is the CIFAR :class:`~bbh.models.resnet18.ResNet18` (option ``width``); ``wrn28-10`` is
            Zagoruyko & Komodakis' WRN-28-10, :class:`~bbh.models.wide_resnet.WideResNet` (option ``dropout``),
            and ``wide_resnet`` any WRN-d-k (options ``depth``, default 28, ``widen_factor``, default 10,
            ``dropout``).
        num_classes: the number of output classes.

    Returns:
        A freshly initialised network (parameters drawn from torch's global generator).

    Raises:
        ValueError: unknown name, ``mlp`` without ``in_features``, ``resnet20`` with a ``depth``, or ``wrn28-10``
            with a ``depth`` or ``widen_factor``.
    """
    opts = {k: v for k, v in options.items() if k != "name"}
    name = options.get("name", "")
    if name == "lenet5":
        return LeNet5(num_classes=num_classes, **opts)
    if name == "resnet32":
        return ResNet32(num_classes=num_classes, **opts)
    if name == "resnet20":
        if "depth" in opts:
            raise ValueError("model 'resnet20' has depth 20; name 'resnet32' with a depth option gives other depths")
        return ResNet32(num_classes=num_classes, **{"variant": "standard", "depth": 20, **opts})
    if name == "resnet18":
        return ResNet18(num_classes=num_classes, **opts)
    if name == "wrn28-10":
        fixed = [k for k in ("depth", "widen_factor") if k in opts]
        if fixed:
            raise ValueError(f"model 'wrn28-10' has depth 28 and widen_factor 10 (got {', '.join(fixed)}); name "
                             f"'wide_resnet' with depth and widen_factor options gives other wide ResNets")
        return WideResNet(28, 10, num_classes=num_classes, **opts)
    if name == "wide_resnet":
        return WideResNet(num_classes=num_classes, **opts)
    if name == "mlp":
        if "in_features" not in opts:
            raise ValueError("model 'mlp' needs in_features")
        return MLP(opts.pop("in_features"), num_classes, hidden=tuple(opts.pop("hidden", (32,))), **opts)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(map(repr, MODEL_NAMES))}")


__all__ = ["MODEL_NAMES", "build_model"]

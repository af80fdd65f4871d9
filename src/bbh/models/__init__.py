"""Main networks: ordinary ``nn.Module``s with nothing Bayesian inside, and :func:`build_model` by name."""

from .lenet import LeNet5
from .mlp import MLP
from .registry import build_model
from .resnet import ResNet32

__all__ = ["LeNet5", "MLP", "ResNet32", "build_model"]

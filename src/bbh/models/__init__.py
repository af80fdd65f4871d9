"""Main networks: ordinary ``nn.Module``s with nothing Bayesian inside, and :func:`build_model` by name."""

from .lenet import LeNet5
from .mlp import MLP
from .registry import build_model
from .resnet import ResNet32
from .resnet18 import ResNet18
from .wide_resnet import WideResNet

__all__ = ["LeNet5", "MLP", "ResNet18", "ResNet32", "WideResNet", "build_model"]

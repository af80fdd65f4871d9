"""Main networks: ordinary ``nn.Module``s with nothing Bayesian inside."""

from .lenet import LeNet5
from .mlp import MLP
from .resnet import ResNet32

__all__ = ["LeNet5", "MLP", "ResNet32"]

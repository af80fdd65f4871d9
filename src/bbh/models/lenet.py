"""LeNet-5 as used in the paper's MNIST experiments (docs/protocol.md §1.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LeNet5(nn.Module):
    """The authors' LeNet-5 variant: 431,080 parameters.

    ====  ==========================================  ============
    c1    conv 5x5, 1 -> 20, valid, + bias, ReLU, max-pool 2    24x24x20 -> 12x12x20
    c2    conv 5x5, 20 -> 50, valid, + bias, ReLU, max-pool 2   8x8x50 -> 4x4x50
    fc1   dense 800 -> 500 + bias, ReLU
    fc2   dense 500 -> 10 + bias (logits)
    ====  ==========================================  ============

    Input: ``[B, 784]`` (the authors' flattened pixels in [0, 1]) or ``[B, 1, 28, 28]``.
    The flatten before fc1 uses PyTorch's (C, H, W) order where TensorFlow used (H, W, C); this permutes
    fc1's input rows and changes nothing else.

    The identity modules ``drop1``, ``drop2``, ``drop3`` are the declared MC-Dropout sites (after the ReLUs
    of c1 and c2, before pooling, and after fc1's ReLU — docs/protocol.md §4.2); they do nothing here.
    """

    dropout_sites: tuple[str, ...] = ("drop1", "drop2", "drop3")

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 20, kernel_size=5)
        self.c2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.drop1 = nn.Identity()
        self.drop2 = nn.Identity()
        self.drop3 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and x.shape[-1] == 784:
            x = x.view(-1, 1, 28, 28)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"LeNet5 expects images [B, 1, 28, 28] or [B, 784], got {tuple(x.shape)}")
        x = F.max_pool2d(self.drop1(F.relu(self.c1(x))), 2)
        x = F.max_pool2d(self.drop2(F.relu(self.c2(x))), 2)
        x = torch.flatten(x, 1)
        x = self.drop3(F.relu(self.fc1(x)))
        return self.fc2(x)

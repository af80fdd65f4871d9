"""The CIFAR ResNet-18 of the Bayesian deep learning literature (kuangliu/pytorch-cifar's ``ResNet18``).

He et al.'s ImageNet ResNet-18 (four stages of two basic blocks, projection shortcuts) with the CIFAR stem: a
3x3 stride-1 conv and no max-pool, so a 32x32 image keeps its resolution through the first stage. ``w`` is the
``width`` argument (64, the usual network, by default):

======  ============================================================================  ===========
stem    conv 3x3, 3 -> w, stride 1 -> BatchNorm -> ReLU                               32x32xw
stage1  2 basic blocks, w -> w, stride 1                                              32x32xw
stage2  2 basic blocks, w -> 2w, stride 2 in the first block                          16x16x2w
stage3  2 basic blocks, 2w -> 4w, stride 2 in the first block                         8x8x4w
stage4  2 basic blocks, 4w -> 8w, stride 2 in the first block                         4x4x8w
head    global average pool -> dense 8w -> classes + bias
======  ============================================================================  ===========

Block(x) = ``ReLU(norm2(conv2(ReLU(norm1(conv1(x))))) + shortcut(x))`` with 3x3 convs (stride s in conv1) and
the identity as shortcut, or a 1x1 conv (stride s) + BatchNorm where the shape changes (the first blocks of
stages 2-4). Convs have no bias. 17 weight layers on the main path (the stem, 16 block convs, the dense layer)
plus 3 projection convs; 11,173,962 parameters with 10 classes, 11,220,132 with 100.

Initialisation as torchvision's ResNet: convs Kaiming-normal (fan_out, ReLU gain), BatchNorm weight 1 and bias
0, the dense layer PyTorch's default; re-initialisation (``reset_parameters``, e.g. of ensemble members) keeps
it.

References: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (Table 1,
18-layer); https://github.com/kuangliu/pytorch-cifar (models/resnet.py), the CIFAR adaptation most CIFAR
ResNet-18 baselines use.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FanOutConv2d(nn.Conv2d):
    """``nn.Conv2d`` initialised as torchvision's ResNets: Kaiming-normal weights, std sqrt(2 / fan_out), where
    fan_out = out_channels x kernel area; zero bias if it has one. ``reset_parameters`` does the same, so
    re-initialisation keeps the scheme."""

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class ProjectionBlock(nn.Module):
    """The post-activation basic block with a projection shortcut where the shape changes:
    ``ReLU(norm2(conv2(ReLU(norm1(conv1(x))))) + shortcut(x))``.

    ``shortcut`` is ``nn.Identity`` when ``stride == 1`` and ``in_channels == out_channels``, else
    ``nn.Sequential(1x1 conv with the block's stride, BatchNorm)``. ``drop_mid`` (an identity module after norm1,
    before the ReLU that precedes conv2) is the block's MC-Dropout site; it does nothing unless hooked.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = FanOutConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.drop_mid = nn.Identity()
        self.conv2 = FanOutConv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(FanOutConv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.drop_mid(self.norm1(self.conv1(x))))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNet18(nn.Module):
    """The CIFAR ResNet-18 (see the module docstring): 11,173,962 parameters at ``num_classes=10, width=64``.

    Input ``[B, 3, 32, 32]``; output logits ``[B, num_classes]``. Modules: ``stem`` (conv), ``stem_norm``,
    ``stage1``..``stage4`` (``nn.Sequential`` of 2 :class:`ProjectionBlock` each), ``fc``. The BatchNorms are the
    usual ones (batch statistics in training, running averages in ``eval()``) and stay point estimates under
    every bbh method (none generates normalisation parameters).

    Args:
        num_classes: outputs of the dense layer.
        width: channels of the stem and the first stage; the stages have width x (1, 2, 4, 8). 64 is the
            usual network; 16 gives a 0.7 M-parameter one for tests and quick runs.

    ``dropout_sites`` (instance attribute): the 8 blocks' ``drop_mid`` modules (``"stage1.0.drop_mid"``, ...),
    what MC-Dropout hooks by default.
    """

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if int(width) < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.num_classes, self.width = int(num_classes), int(width)
        w = self.width
        self.stem = FanOutConv2d(3, w, 3, padding=1, bias=False)
        self.stem_norm = nn.BatchNorm2d(w)
        channels, stages = w, []
        for out, stride in zip((w, 2 * w, 4 * w, 8 * w), (1, 2, 2, 2)):
            stages.append(nn.Sequential(ProjectionBlock(channels, out, stride), ProjectionBlock(out, out)))
            channels = out
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.fc = nn.Linear(8 * w, self.num_classes)
        self.dropout_sites: tuple[str, ...] = tuple(f"stage{s}.{k}.drop_mid" for s in (1, 2, 3, 4) for k in (0, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(f"ResNet18 expects images [B, 3, 32, 32], got {tuple(x.shape)}")
        x = F.relu(self.stem_norm(self.stem(x)))
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.fc(x.mean(dim=(2, 3)))

    def extra_repr(self) -> str:
        return f"width={self.width}"


__all__ = ["FanOutConv2d", "ProjectionBlock", "ResNet18"]

"""Wide residual networks (Zagoruyko & Komodakis 2016) for 32x32 images: WRN-d-k, e.g. WRN-28-10.

Three stages of n = (d - 4) / 6 pre-activation "wide basic" blocks each, after a 3x3 stem conv. With k the
widening factor:

======  ============================================================================  ===========
stem    conv 3x3, 3 -> 16, stride 1                                                   32x32x16
stage1  n wide basic blocks, 16 -> 16k, stride 1                                      32x32x16k
stage2  n wide basic blocks, 16k -> 32k, stride 2 in the first block                  16x16x32k
stage3  n wide basic blocks, 32k -> 64k, stride 2 in the first block                  8x8x64k
head    BatchNorm -> ReLU -> global average pool -> dense 64k -> classes + bias
======  ============================================================================  ===========

A wide basic block (pre-activation, BN-ReLU-conv): ``o = ReLU(norm1(x))``;
``h = conv2(dropout(ReLU(norm2(conv1(o)))))`` with 3x3 convs (stride s in conv1); output ``h + x`` where the
shape is kept, else ``h + shortcut(o)`` with ``shortcut`` a 1x1 conv (stride s) of the pre-activated input (the
first block of every stage when k > 1, of stages 2 and 3 when k = 1). Convs have no bias; depth counts the convs
on the main path (1 + 6n) plus 3 (the shortcuts, as the paper counts them): d = 6n + 4.

WRN-28-10 has 36,479,194 parameters with 10 classes (36.5 M in the paper's Table 4), WRN-16-8 10,961,370,
WRN-10-1 77,850 (a network for tests).

Initialisation as the reference PyTorch implementation (xternalz/WideResNet-pytorch): convs Kaiming-normal
(fan_out, ReLU gain; :class:`~bbh.models.resnet18.FanOutConv2d`, which keeps the scheme on
``reset_parameters``), BatchNorm weight 1 and bias 0, the dense layer PyTorch's default.

References: S. Zagoruyko, N. Komodakis, "Wide Residual Networks", BMVC 2016 (Table 1, the B(3,3) block; dropout
between the two convs, Sec. 2.4); https://github.com/szagoruyko/wide-residual-networks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .resnet18 import FanOutConv2d


class WideBasicBlock(nn.Module):
    """The pre-activation wide basic block (see the module docstring).

    ``drop_mid`` (an identity module after the ReLU that precedes conv2, where WRN's own dropout acts) is the
    block's MC-Dropout site; it does nothing unless hooked. ``dropout`` is ``nn.Dropout(p)`` for ``p > 0`` (the
    paper's dropout, active in training mode only), else ``nn.Identity``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = FanOutConv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.drop_mid = nn.Identity()
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = FanOutConv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = FanOutConv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.norm1(x))
        h = self.conv1(o)
        h = self.conv2(self.dropout(self.drop_mid(F.relu(self.norm2(h)))))
        return h + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for CIFAR (see the module docstring); 36,479,194 parameters at the defaults.

    Input ``[B, 3, 32, 32]``; output logits ``[B, num_classes]``. Modules: ``stem`` (conv), ``stage1``..``stage3``
    (``nn.Sequential`` of n :class:`WideBasicBlock` each), ``norm`` (the final BatchNorm), ``fc``. The BatchNorms
    stay point estimates under every bbh method (none generates normalisation parameters).

    Args:
        depth: d = 6n + 4 with n >= 1 blocks per stage (10, 16, 22, 28, 34, 40, ...).
        widen_factor: k >= 1; the stages have 16k, 32k and 64k channels.
        num_classes: outputs of the dense layer.
        dropout: the paper's dropout rate between the two convs of every block (0: none, the default; active
            in training mode only, like any ``nn.Dropout``).

    ``dropout_sites`` (instance attribute): the blocks' ``drop_mid`` modules (``"stage1.0.drop_mid"``, ...),
    what MC-Dropout hooks by default (with ``dropout > 0`` its masks come on top of the network's own dropout).
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 blocks per stage (10, 16, 22, 28, 34, 40, ...), "
                             f"got {depth!r}")
        if not isinstance(widen_factor, int) or isinstance(widen_factor, bool) or widen_factor < 1:
            raise ValueError(f"widen_factor must be an integer >= 1, got {widen_factor!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}")
        self.depth, self.widen_factor = depth, widen_factor
        self.num_classes, self.dropout = int(num_classes), float(dropout)
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stem = FanOutConv2d(3, 16, 3, padding=1, bias=False)
        channels, stages = 16, []
        for out, stride in zip(widths, (1, 2, 2)):
            blocks = [WideBasicBlock(channels if i == 0 else out, out, stride if i == 0 else 1, self.dropout)
                      for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            channels = out
        self.stage1, self.stage2, self.stage3 = stages
        self.norm = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, self.num_classes)
        self.dropout_sites: tuple[str, ...] = tuple(f"stage{s}.{i}.drop_mid" for s in (1, 2, 3) for i in range(n))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise ValueError(f"WideResNet expects images [B, 3, 32, 32], got {tuple(x.shape)}")
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        x = F.relu(self.norm(x))
        return self.fc(x.mean(dim=(2, 3)))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, widen_factor={self.widen_factor}, dropout={self.dropout}"


__all__ = ["WideBasicBlock", "WideResNet"]

"""ResNet-32 for the paper's CIFAR-5 experiments (docs/protocol.md §1.2, 1.3, 4.2) and He et al.'s CIFAR ResNets.

Two architectures share one class, :class:`ResNet32`, chosen by ``variant``; both are described below at their
default depth, 32. ``depth`` = 6n + 2 (8, 14, 20, 32, 44, 56, 110, ...) sets the n units per stage (5 at depth 32):
the stem, 2 convs per unit and the dense layer are the ``depth`` weight layers. ``ResNet32(variant="standard",
depth=20)`` is He et al.'s ResNet-20 (269,722 parameters with 10 classes, their "0.27M"); depth 56 and 110 are
their ResNet-56 and ResNet-110.

* ``"paper"`` — the authors' network (their ``get_*_cifar_resnet``), on 24x24 crops:

  ======  ==========================================================================  ===========
  stem    conv 3x3, 3 -> 16, + bias (no norm / ReLU after it)                          24x24x16
  stage1  5 pre-activation units, 16 -> 16, stride 2 in the first unit                 12x12x16
  stage2  5 pre-activation units, 16 -> 32, stride 2 in the first unit                 6x6x32
  stage3  5 pre-activation units, 32 -> 64, stride 2 in the first unit                 3x3x64
  head    [final norm] -> ReLU -> global average pool -> dense 64 -> classes + bias
  ======  ==========================================================================  ===========

  Unit(x): ``h = conv1(ReLU(norm1(x)))`` (stride s, + bias), ``h = conv2(ReLU(norm2(h)))`` (+ bias),
  ``out = h + shortcut(x)`` with the shortcut on the raw x: average pool k = s = 2 when s = 2, then zero
  channels padded floor / ceil of (out - in) / 2 before / after. Stride 2 also in stage 1 (unlike
  standard CIFAR ResNets). 32 weight layers, 64 weight/bias tensors, 462,693 of them (the parameters BbH /
  BbB / MNF make random); 2,144 normalisation parameters (2,272 with ``final_norm=True``).

* ``"standard"`` — He et al. (2016), Sec. 4.2: 32x32 inputs, stem conv 3x3 3 -> 16 -> norm -> ReLU,
  3 stages of 5 post-activation basic blocks (16, 32, 64 channels, stride 1, 2, 2; block(x) =
  ``ReLU(norm2(conv2(ReLU(norm1(conv1(x))))) + shortcut(x))``), option-A shortcuts (subsample every
  second pixel, zero-pad channels), convs without bias, global average pool, dense. 464,154 parameters
  with 10 classes (the "0.46M" of He et al.'s Table 6).

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, Sec. 4.2.
"""

from __future__ import annotations

import math
from enum import Enum

import torch.nn.functional as F
from torch import Tensor, nn

from ..core.options import (
    DropoutPlacement,
    NormKind,
    Padding,
    ResNetInit,
    ResNetVariant,
    ShortcutMode,
    choices,
    parse_option,
)

VARIANTS = choices(ResNetVariant)
"""``ResNet32(variant=...)``: the authors' network or He et al.'s."""
NORMS = choices(NormKind)
"""``ResNet32(norm=...)``: the normalisation layers (see :func:`make_norm`)."""
DROPOUT_PLACEMENTS = choices(DropoutPlacement)
"""``ResNet32(dropout_placement=...)``: where the MC-Dropout sites are (see :class:`ResNet32`)."""
PADDINGS = choices(Padding)
"""``ResNet32(padding=...)``: how the stride-2 3x3 convolutions pad their input."""
INITS = choices(ResNetInit)
"""``ResNet32(init=...)``: initialisation of the conv and dense layers."""
DEPTH = 32
"""``ResNet32(depth=...)``'s default: 6n + 2 weight layers with n = 5 units per stage."""


def _check(value: str, enum: type[Enum], name: str) -> str:
    """``value`` as its option's string (:func:`bbh.core.options.parse_option`)."""
    return parse_option(enum, value, name).value


def units_per_stage(depth: int) -> int:
    """n for a CIFAR ResNet of ``depth`` = 6n + 2 weight layers (n >= 1); ValueError for any other depth."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 with n >= 1 units per stage (8, 14, 20, 32, 44, 56, 110, ...), "
                         f"got {depth!r}")
    return (depth - 2) // 6


def make_norm(kind: str, channels: int, eps: float, momentum: float) -> nn.Module:
    """A 2-d normalisation layer with a learnable per-channel affine (weight 1, bias 0 at init).

    * ``"running"`` — ``BatchNorm2d``: batch statistics in training, running averages in ``eval()``.
    * ``"batch"`` — ``BatchNorm2d(track_running_stats=False)``: the statistics of the current batch, also in
      ``eval()`` (the authors' layer-wise BbH ResNet: TF BN always called with ``training=True``), so an
      example's output depends on the rest of its batch.
    * ``"instance"`` — ``InstanceNorm2d(affine=True, track_running_stats=False)``: per-example, per-channel
      statistics over H x W with a shared affine (the authors' ``virtual_batch_size=1`` BN in the MAP,
      Dropout, Ensemble, BbB, MNF and single-G BbH ResNets), identical in training and evaluation.
    """
    _check(kind, NormKind, "norm")
    if kind == "instance":
        return nn.InstanceNorm2d(channels, eps=eps, affine=True, track_running_stats=False)
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum, track_running_stats=kind == "running")


def _init_weight_layer(layer: nn.Conv2d | nn.Linear, scheme: str) -> None:
    """Initialise ``layer`` with ``"variance-scaling"`` or ``"kaiming"`` (``"torch"`` is the layer's own)."""
    w = layer.weight
    fan_in = w[0].numel()
    if scheme == "variance-scaling":  # TF 1.7 variance_scaling_initializer(): N(0, 1/fan_in) cut at ±2 std
        std = math.sqrt(1.0 / fan_in)
        nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)
    else:  # kaiming: He et al. (2015) normal, std sqrt(2 / fan_in)
        nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class _SchemeInit:
    """Mixin for weight layers whose ``reset_parameters`` uses the scheme chosen at construction
    (:data:`INITS`), so that re-initialisations (e.g. of deep-ensemble members) keep it."""

    def __init__(self, *args, init: str = "torch", **kwargs) -> None:
        self.init_scheme = _check(init, ResNetInit, "init")
        super().__init__(*args, **kwargs)

    def reset_parameters(self) -> None:
        scheme = getattr(self, "init_scheme", "torch")
        if scheme == "torch":
            super().reset_parameters()  # type: ignore[misc]
        else:
            _init_weight_layer(self, scheme)  # type: ignore[arg-type]


class InitConv2d(_SchemeInit, nn.Conv2d):
    """``nn.Conv2d`` with a construction-time initialisation scheme (:class:`_SchemeInit`)."""


class InitLinear(_SchemeInit, nn.Linear):
    """``nn.Linear`` with a construction-time initialisation scheme (:class:`_SchemeInit`)."""


class Shortcut(nn.Module):
    """The parameter-free ("option A") shortcut: spatial downsampling, then channel zero-padding.

    Args:
        in_channels, out_channels: channels before and after (out >= in); the out - in new channels are
            zeros, floor((out - in) / 2) before the input's channels and the rest after.
        stride: 1 or 2.
        mode: ``"avgpool"`` (the authors: average pool, kernel = stride, no padding) or ``"subsample"``
            (He et al.: keep every ``stride``-th pixel).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, mode: str = "avgpool") -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"the shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.stride = int(stride)
        self.mode = _check(mode, ShortcutMode, "shortcut mode")
        extra = out_channels - in_channels
        self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride) if self.mode == "avgpool" else x[:, :, :: self.stride, :: self.stride]
        if self.pad_before or self.pad_after:
            x = F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))
        return x

    def extra_repr(self) -> str:
        return f"mode={self.mode}, stride={self.stride}, pad_channels=({self.pad_before}, {self.pad_after})"


class _Unit(nn.Module):
    """What both residual units share: two 3x3 convs, two norms, the shortcut and three identity modules
    that mark the possible dropout sites (``drop1`` after conv1, ``drop_mid`` after norm2 — the
    normalisation before conv2's ReLU in the pre-activation unit, norm1 in the basic block —, ``drop2``
    after conv2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, norm: str, eps: float,
                 momentum: float, bias: bool, padding: str, init: str, shortcut: str, norm1_channels: int) -> None:
        super().__init__()
        # TF "SAME" for a stride-2 3x3 conv on an even input pads 0 before and 1 after; PyTorch's padding=1 pads
        # 1 on both sides (same output size, the sampling grid shifted by one pixel).
        self.tf_pad = padding == "tf" and stride > 1
        self.norm1 = make_norm(norm, norm1_channels, eps, momentum)
        self.conv1 = InitConv2d(in_channels, out_channels, 3, stride=stride, padding=0 if self.tf_pad else 1,
                                bias=bias, init=init)
        self.drop1 = nn.Identity()
        self.norm2 = make_norm(norm, out_channels, eps, momentum)
        self.drop_mid = nn.Identity()
        self.conv2 = InitConv2d(out_channels, out_channels, 3, padding=1, bias=bias, init=init)
        self.drop2 = nn.Identity()
        self.shortcut = Shortcut(in_channels, out_channels, stride, shortcut)

    def _conv1(self, x: Tensor) -> Tensor:
        return self.conv1(F.pad(x, (0, 1, 0, 1)) if self.tf_pad else x)


class PreActUnit(_Unit):
    """The authors' pre-activation unit: ``conv2(ReLU(norm2(conv1(ReLU(norm1(x)))))) + shortcut(x)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, **kwargs) -> None:
        super().__init__(in_channels, out_channels, stride, norm1_channels=in_channels, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop1(self._conv1(F.relu(self.norm1(x))))
        h = self.drop2(self.conv2(F.relu(self.drop_mid(self.norm2(h)))))
        return h + self.shortcut(x)


class BasicBlock(_Unit):
    """He et al.'s post-activation block: ``ReLU(norm2(conv2(ReLU(norm1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, **kwargs) -> None:
        super().__init__(in_channels, out_channels, stride, norm1_channels=out_channels, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.drop_mid(self.norm1(self.drop1(self._conv1(x)))))
        h = self.norm2(self.drop2(self.conv2(h)))
        return F.relu(h + self.shortcut(x))


class ResNet32(nn.Module):
    """ResNet-32 on CIFAR-sized images: the authors' network (``variant="paper"``) or He et al.'s, at 32 or any
    other 6n + 2 layers (``depth``; ``variant="standard", depth=20`` is He et al.'s ResNet-20).

    See the module docstring for both architectures. Input ``[B, 3, 24, 24]`` (paper) or ``[B, 3, 32, 32]``
    (standard); output logits ``[B, num_classes]``. Modules: ``stem`` (conv), ``stem_norm`` (standard only),
    ``stage1``..``stage3`` (``nn.Sequential`` of n = (depth - 2) / 6 units each, 5 at depth 32), ``final_norm``
    (or None), ``fc``.

    Args:
        num_classes: outputs of the dense layer (CIFAR-5: 5).
        variant: ``"paper"`` or ``"standard"`` (:data:`VARIANTS`).
        norm: ``"running"`` (default), ``"batch"`` or ``"instance"`` (:func:`make_norm`). The authors used
            ``"batch"`` for their layer-wise BbH ResNet (the paper's BbH row) and ``"instance"`` for every other
            method; ``"running"`` is the usual BatchNorm, the default because it is what a PyTorch user expects
            and the only mode whose predictions depend neither on the batch nor on per-image contrast.
            Normalisation parameters always stay point estimates (no bbh method generates them).
            eps 1e-3 and momentum 0.01 (TF's 0.99) in the paper variant, PyTorch's 1e-5 / 0.1 in the standard one.
        final_norm: an extra normalisation before the head's ReLU (paper variant only). The authors' MAP,
            Dropout and Ensemble ResNets have it, their BbH / BbB / MNF ResNets do not. Default False: the
            Bayesian networks' architecture (its 462,693 generated parameters are the paper's count), and the
            same network for every method unless one asks for the difference.
        dropout_placement: which identity modules are listed in ``dropout_sites`` (what MC-Dropout hooks):
            ``"every-conv"`` (default; the authors' 2018 code behind paper Table 4: after the stem conv and after
            both convs of every unit, on the residual branch before the addition — 31 sites) or
            ``"one-per-unit"`` (their 2019 code: one per unit, after norm2 before the ReLU that precedes conv2 —
            15 sites). In the standard variant the same module positions are used (after each conv before its
            norm; ``drop_mid`` after norm1, before the ReLU that precedes conv2).
        padding: ``"tf"`` (TF SAME: the stride-2 convs pad 0 pixels before and 1 after, as the authors) or
            ``"torch"`` (padding=1 on both sides). Default: ``"tf"`` for the paper variant, ``"torch"`` for the
            standard one. Stride-1 convs pad 1 on both sides in either case.
        init: conv / dense initialisation (:data:`INITS`): ``"variance-scaling"`` (the authors' TF default:
            truncated N(0, 1/fan_in) at ±2 std, zero biases), ``"kaiming"`` (He et al.: N(0, 2/fan_in), zero
            biases) or ``"torch"`` (PyTorch's defaults). Default: ``"variance-scaling"`` for the paper variant,
            ``"kaiming"`` for the standard one. Re-initialisation (``reset_parameters``, e.g. of ensemble
            members) keeps the scheme.
        depth: weight layers, 6n + 2 with n >= 1 units per stage (:func:`units_per_stage`; ValueError
            otherwise). Default 32 (n = 5), the paper's network; 20, 44, 56, 110 are He et al.'s other CIFAR
            ResNets. Every other option means the same at any depth.

    ``dropout_sites`` (instance attribute): the names of the chosen identity modules, e.g. ``"stem_drop"``,
    ``"stage1.0.drop1"``, ``"stage1.0.drop2"``, ...; they do nothing unless MC-Dropout hooks them (6n + 1 sites
    with ``"every-conv"``, 3n with ``"one-per-unit"``: 31 and 15 at depth 32).
    """

    def __init__(self, num_classes: int = 5, variant: str = "paper", norm: str = "running",
                 final_norm: bool = False, dropout_placement: str = "every-conv", padding: str | None = None,
                 init: str | None = None, depth: int = DEPTH) -> None:
        super().__init__()
        self.variant = _check(variant, ResNetVariant, "variant")
        self.norm = _check(norm, NormKind, "norm")
        self.dropout_placement = _check(dropout_placement, DropoutPlacement, "dropout_placement")
        paper = variant == "paper"
        padding = padding if padding is not None else ("tf" if paper else "torch")
        self.padding = _check(padding, Padding, "padding")
        init = init if init is not None else ("variance-scaling" if paper else "kaiming")
        self.init = _check(init, ResNetInit, "init")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if final_norm and not paper:
            raise ValueError("final_norm=True applies to the pre-activation paper variant only; the standard "
                             "variant already normalises the output of every block")
        self.num_classes = int(num_classes)
        self.depth = depth
        n = units_per_stage(depth)
        self.input_size = 24 if paper else 32
        eps, momentum = (1e-3, 0.01) if paper else (1e-5, 0.1)
        unit = PreActUnit if paper else BasicBlock
        options = dict(norm=norm, eps=eps, momentum=momentum, bias=paper, padding=self.padding, init=self.init,
                       shortcut="avgpool" if paper else "subsample")

        self.stem = InitConv2d(3, 16, 3, padding=1, bias=paper, init=self.init)
        self.stem_drop = nn.Identity()
        self.stem_norm = None if paper else make_norm(norm, 16, eps, momentum)
        channels, stages = 16, []
        for width, stride in zip((16, 32, 64), (2, 2, 2) if paper else (1, 2, 2)):
            units = []
            for k in range(n):
                units.append(unit(channels, width, stride if k == 0 else 1, **options))
                channels = width
            stages.append(nn.Sequential(*units))
        self.stage1, self.stage2, self.stage3 = stages
        self.final_norm = make_norm(norm, 64, eps, momentum) if final_norm else None
        self.fc = InitLinear(64, self.num_classes, init=self.init)

        units = [f"stage{s}.{k}" for s in (1, 2, 3) for k in range(n)]
        if dropout_placement == "every-conv":
            pairs = (f"{u}.{d}" for u in units for d in ("drop1", "drop2"))
            self.dropout_sites: tuple[str, ...] = ("stem_drop", *pairs)
        else:
            self.dropout_sites = tuple(f"{u}.drop_mid" for u in units)

    def forward(self, x: Tensor) -> Tensor:
        size = self.input_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            depth = "" if self.depth == DEPTH else f", depth={self.depth}"
            raise ValueError(f"ResNet32(variant={self.variant!r}{depth}) expects images [B, 3, {size}, {size}], "
                             f"got {tuple(x.shape)}")
        x = self.stem_drop(self.stem(x))
        if self.stem_norm is not None:
            x = F.relu(self.stem_norm(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.variant == "paper":
            x = F.relu(x)  # the standard blocks end with a ReLU already
        return self.fc(x.mean(dim=(2, 3)))

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, depth={self.depth}, norm={self.norm!r}, padding={self.padding!r}, "
                f"init={self.init!r}, dropout_placement={self.dropout_placement!r}")


__all__ = ["BasicBlock", "InitConv2d", "InitLinear", "PreActUnit", "ResNet32", "Shortcut", "make_norm",
           "units_per_stage"]

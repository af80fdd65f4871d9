"""How big a hypernet layout is before it is built, which layout ``"auto"`` picks, and failing fast when it won't fit.

The paper's layer-wise hypernets end in a linear layer of H x P weights for a parameter tensor of P weights
(H = 512, the last hidden size): 222 M hypernet parameters for LeNet-5, 247 M for ResNet-32, about 5.7 B for a
CIFAR ResNet-18, whose Adam training would need ~92 GB. Every layout's parameter count is exact and cheap to
compute from the shapes alone (tested against the built modules), so ``bbh.create("bbh", model)`` can

* report the size before allocating anything (:class:`HypernetSize`, kept as ``method.size``),
* choose (``layout="auto"``, the default): ``layerwise`` if training it takes at most
  :data:`AUTO_BUDGET_BYTES`, otherwise ``rank1`` (:mod:`bbh.posteriors.rank1`), whose size grows with the
  channels of the network, not with its weights,
* refuse a layout whose training state cannot fit the memory of the device (:func:`check_fits`) with the
  estimate and the sizes of the alternatives, instead of dying in the allocator or the OOM killer.

Training memory is estimated as 4 copies of the parameters (values, gradients and Adam's two moments), the
upper bound of what :class:`bbh.Trainer` allocates for them; activations and weight samples come on top.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.options import Layout

AUTO_BUDGET_BYTES = 8 * 2**30
"""``layout="auto"`` keeps the paper's layer-wise hypernets while training them takes at most 8 GiB (4 bytes x 4
copies x 537 M parameters): LeNet-5 (3.6 GB) and ResNet-32 (3.95 GB) stay layer-wise, a ResNet-18 (92 GB) goes
to ``rank1``."""

TRAINING_COPIES = 4
"""Parameters, gradients and Adam's first and second moments."""

SCALABLE = (Layout.RANK1, Layout.CHUNKED)
"""The layouts whose size does not grow as H x the number of weights."""


def _trunk(num: int, in_features: int, hidden: Sequence[int]) -> int:
    sizes = [in_features, *hidden]
    return num * sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def _slices(shape: torch.Size) -> int:
    return shape[0] if (len(shape) >= 2 and shape[0] > 1) else 1


def rank1_factor_shapes(shapes: Mapping[str, torch.Size]) -> dict[str, torch.Size]:
    """The random variables of the ``rank1`` layout: ``name:out`` of size shape[0] for every tensor and ``name:in``
    of size shape[1] for tensors of two or more dimensions (a conv kernel's factor is per input channel, shared
    over its spatial window, as in Dusenberry et al. 2020)."""
    out: dict[str, torch.Size] = {}
    for name, shape in shapes.items():
        shape = torch.Size(shape)
        out[f"{name}:out"] = torch.Size([shape[0]])
        if len(shape) >= 2:
            out[f"{name}:in"] = torch.Size([shape[1]])
    return out


def matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """A tensor seen as a matrix [o, i]: o its first dimension (1 for a vector), i the rest."""
    shape = torch.Size(shape)
    o = shape[0] if len(shape) >= 2 else 1
    return o, shape.numel() // o


def gaussian_layer_parameters(shapes: Mapping[str, torch.Size], covariance: str) -> int:
    """Parameters of a semi-implicit Gaussian layer on these tensors (:mod:`bbh.posteriors.semi_implicit`):
    ``diagonal`` one per weight, ``kronecker`` o² + i² per tensor seen as [o, i] (:func:`matrix_shape`)."""
    if covariance == "diagonal":
        return sum(torch.Size(s).numel() for s in shapes.values())
    return sum(o * o + i * i for o, i in map(matrix_shape, shapes.values()))


def hypernet_parameters(shapes: Mapping[str, torch.Size], layout: Layout | str, *, noise_dim: int = 1,
                        hidden: Sequence[int] = (64, 256, 512), num_chunks: int = 130, chunk_size: int = 4096,
                        embedding_dim: int = 32, mixture: int = 1, semi_implicit: str | None = None) -> int:
    """The exact number of parameters of :class:`~bbh.posteriors.hypernet.HypernetPosterior` (or of
    :class:`~bbh.posteriors.rank1.Rank1Posterior`, base weights included) for these generated ``shapes``.

    With T tensors of P_t weights, d = ``noise_dim``, H = ``hidden[-1]`` and trunk(k, i) the parameters of k
    MLPs of input size i and the hidden sizes:

    * layerwise: trunk(T, d + 1) + sum_t (H + 1) P_t
    * sliced:    sum_t trunk(1, d + S_t) + (H + 1) P_t / S_t   (S_t output channels)
    * single:    trunk(1, d + C) + (H + 1) K,  C = min(num_chunks, P), K = ceil(P / C)
    * chunked:   C E + trunk(1, d + E) + (H + 1) K,  K = min(chunk_size, P), C = ceil(P / K)
    * rank1:     P (the base weights) + layerwise over the factors (:func:`rank1_factor_shapes`), + K F
                 component means for a mixture of K > 1 (F factor variables; ``mixture``)

    plus, with ``semi_implicit`` (``"diagonal"`` or ``"kronecker"``), the Gaussian layer on the generated tensors
    (rank1: on the factors; :func:`gaussian_layer_parameters`).
    """
    layout = Layout(layout)
    if semi_implicit is not None:
        generated = rank1_factor_shapes(shapes) if layout == Layout.RANK1 else shapes
        return (hypernet_parameters(shapes, layout, noise_dim=noise_dim, hidden=hidden, num_chunks=num_chunks,
                                    chunk_size=chunk_size, embedding_dim=embedding_dim, mixture=mixture)
                + gaussian_layer_parameters(generated, semi_implicit))
    shapes = {k: torch.Size(v) for k, v in shapes.items()}
    sizes = [s.numel() for s in shapes.values()]
    total, h = sum(sizes), hidden[-1]
    if layout == Layout.LAYERWISE:
        return _trunk(len(sizes), noise_dim + 1, hidden) + sum((h + 1) * p for p in sizes)
    if layout == Layout.SLICED:
        return sum(_trunk(1, noise_dim + _slices(s), hidden) + (h + 1) * (s.numel() // _slices(s))
                   for s in shapes.values())
    if layout == Layout.SINGLE:
        c = min(num_chunks, total)
        return _trunk(1, noise_dim + c, hidden) + (h + 1) * math.ceil(total / c)
    if layout == Layout.CHUNKED:
        k = min(chunk_size, total)
        return math.ceil(total / k) * embedding_dim + _trunk(1, noise_dim + embedding_dim, hidden) + (h + 1) * k
    if layout == Layout.RANK1:
        factors = rank1_factor_shapes(shapes)
        means = mixture * sum(f.numel() for f in factors.values()) if mixture > 1 else 0
        return total + means + hypernet_parameters(factors, Layout.LAYERWISE, noise_dim=noise_dim, hidden=hidden)
    raise ValueError(f"no size for layout {layout.value!r}; resolve 'auto' with choose_layout first")


@dataclass(frozen=True)
class HypernetSize:
    """The size of one layout for one network, known before anything is allocated.

    Attributes:
        layout: the layout.
        parameters: its parameters (hypernets, embeddings, base weights).
        random_weights: the main network's weights it generates (the parameters BbH makes random).
        bytes_per_value: 4 for float32.
    """

    layout: Layout
    parameters: int
    random_weights: int
    bytes_per_value: int = 4

    @property
    def parameter_bytes(self) -> int:
        return self.parameters * self.bytes_per_value

    @property
    def training_bytes(self) -> int:
        """Parameters, gradients and Adam's two moments (:data:`TRAINING_COPIES`)."""
        return TRAINING_COPIES * self.parameter_bytes

    @property
    def ratio(self) -> float:
        """Parameters per generated weight."""
        return self.parameters / max(self.random_weights, 1)

    def __str__(self) -> str:
        return (f"layout {self.layout.value!r}: {self.parameters:,} parameters ({self.ratio:.1f}x the "
                f"{self.random_weights:,} random weights), {_gb(self.parameter_bytes)} of parameters, "
                f"~{_gb(self.training_bytes)} to train with Adam")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def size_of(shapes: Mapping[str, torch.Size], layout: Layout | str, **options: object) -> HypernetSize:
    """:class:`HypernetSize` of ``layout`` (not ``auto``) for the generated ``shapes``; ``options`` as
    :func:`hypernet_parameters`."""
    layout = Layout(layout)
    total = sum(torch.Size(s).numel() for s in shapes.values())
    return HypernetSize(layout, hypernet_parameters(shapes, layout, **options), total)  # type: ignore[arg-type]


def choose_layout(shapes: Mapping[str, torch.Size], budget_bytes: int = AUTO_BUDGET_BYTES,
                  **options: object) -> Layout:
    """``layout="auto"``: the paper's ``layerwise`` if training it takes at most ``budget_bytes``, else ``rank1``."""
    fits = size_of(shapes, Layout.LAYERWISE, **options).training_bytes <= budget_bytes
    return Layout.LAYERWISE if fits else Layout.RANK1


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes this process can allocate on ``device`` at most, or None if unknown.

    CUDA: the free memory ``torch.cuda.mem_get_info`` reports. CPU: the smallest of the physical memory, the
    cgroup limit (``memory.max`` of cgroup v2 or ``memory.limit_in_bytes`` of v1) and the address-space limit
    (``ulimit -v``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else None
    if device.type != "cpu":
        return None
    limits: list[int] = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            limits.append(int(text))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft > 0:
        limits.append(int(soft))
    return min(limits) if limits else None


class HypernetTooLargeError(MemoryError, ValueError):
    """A hypernet layout whose training state would not fit the device's memory (raised before allocating)."""


def check_fits(size: HypernetSize, shapes: Mapping[str, torch.Size], device: torch.device | str = "cpu",
               available: int | None = None, **options: object) -> None:
    """Raise :class:`HypernetTooLargeError` if ``size.training_bytes`` exceeds the ``available`` memory
    (default :func:`available_memory` of ``device``), naming the estimate and the sizes of the scalable layouts."""
    available = available_memory(device) if available is None else available
    if available is None or size.training_bytes <= available:
        return
    others = "; ".join(str(size_of(shapes, layout, **options)) for layout in SCALABLE if layout != size.layout)
    raise HypernetTooLargeError(
        f"BbH {size} — more than the {_gb(available)} this process can allocate on {torch.device(device)}. "
        f"Use a scalable layout instead: {others} (bbh.create('bbh', model, layout='rank1' or 'chunked'; "
        f"layout='auto' chooses), or make fewer parameters random (params=...).")


__all__ = ["AUTO_BUDGET_BYTES", "HypernetSize", "HypernetTooLargeError", "SCALABLE", "available_memory",
           "check_fits", "choose_layout", "hypernet_parameters", "rank1_factor_shapes", "size_of"]

"""Running a plain ``nn.Module`` with externally supplied (batched) weights.

A posterior produces weight samples ``dict[name, Tensor[S, *shape]]``; :func:`forward_samples` evaluates
the module once per sample and stacks the outputs into ``[S, B, ...]``. The path is
``torch.func.vmap`` over ``torch.func.functional_call``: PyTorch's batching rules turn a linear layer with
batched weights into a batched matmul and a convolution into one grouped convolution, so there is no
Python loop over samples. On the CPU a convolutional network is evaluated sample by sample instead (one
ordinary convolution per sample is faster there than the grouped one; see :func:`_is_cpu_conv`).
``chunk_size`` bounds memory by evaluating that many samples at a time.
Parameters and buffers not in the dict are the module's own (shared by all samples). One exception: a
module in training mode with BatchNorm layers that update running statistics cannot run under ``vmap``
(the in-place update of unbatched buffers); it is then evaluated sample by sample, each sample's batch
updating the statistics in turn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap


def chunk_sizes(total: int, chunk_size: int | None = None) -> list[int]:
    """Split ``total`` draws into consecutive chunks of at most ``chunk_size`` (None: one chunk).

    The one chunking rule of bbh: sampling, prediction and attacks all bound their memory with it.

    Raises:
        ValueError: ``total`` < 1, or a ``chunk_size`` < 1.
    """
    if isinstance(total, bool) or int(total) < 1:
        raise ValueError(f"n_samples must be >= 1, got {total!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size!r}")
    n = int(total)
    step = n if chunk_size is None else int(chunk_size)
    return [min(step, n - i) for i in range(0, n, step)]


def forward_with(module: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Evaluate ``module(x)`` with the given (unbatched) parameters replacing the module's own."""
    return functional_call(module, dict(params), (x,))


def _updates_running_stats(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
               for m in module.modules())


def _uses_batch_statistics(module: nn.Module) -> bool:
    """Whether a BatchNorm layer normalises with the statistics of the current batch (training mode, or
    ``track_running_stats=False`` in any mode): its outputs then depend on which examples share a pass."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
               for m in module.modules())


def _is_cpu_conv(module: nn.Module, x: Tensor) -> bool:
    """A convolutional network on the CPU: evaluated draw by draw (:func:`_cpu_conv_forward`) instead of under
    ``vmap``, whose grouped convolution is slower there than one ordinary convolution per draw (LeNet-5, 50
    draws x 200 images, one thread: 1.6-2.0x faster forward, 1.3x forward + input gradient;
    ``benchmarks/eval_phases.py``). On a GPU, and for networks of linear layers (batched matmuls), ``vmap`` is
    kept."""
    return x.device.type == "cpu" and any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def forward_samples(module: nn.Module, samples: Mapping[str, Tensor], x: Tensor,
                    chunk_size: int | None = None) -> Tensor:
    """Evaluate ``module`` on ``x`` for every weight sample; returns ``[S, *module(x).shape]``.

    Args:
        module: the main network (any ``nn.Module`` that ``torch.func`` can transform).
        samples: ``dict[name, Tensor[S, *param_shape]]``, all with the same S.
        x: the input batch, shared by every sample.
        chunk_size: evaluate at most this many samples at once (None: all at once).
    """
    if not samples:
        raise ValueError("no weight samples given")
    sizes = {name: t.shape[0] for name, t in samples.items()}
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        raise ValueError(f"all weight samples need the same leading sample dimension, got {sizes}")

    def one(params: dict[str, Tensor]) -> Tensor:
        return functional_call(module, params, (x,))

    if _updates_running_stats(module):
        return torch.stack([one({k: v[i] for k, v in samples.items()}) for i in range(n)])
    if _is_cpu_conv(module, x):
        return torch.stack([_cpu_conv_forward(module, {k: v[i] for k, v in samples.items()}, x) for i in range(n)])

    batched = vmap(one, in_dims=(0,), randomness="different")
    outs, start = [], 0
    for k in chunk_sizes(n, chunk_size):
        outs.append(batched({name: v[start:start + k] for name, v in samples.items()}))
        start += k
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


CPU_CONV_SLICE = 128
"""Examples per forward pass of a convolutional network on the CPU (:func:`_cpu_conv_forward`)."""


def _cpu_conv_forward(module: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``module(x)`` with ``params``, as fast as a CPU runs a convolutional network: inputs and 4-D weights in
    channels-last layout (oneDNN's fast path) and at most :data:`CPU_CONV_SLICE` examples per pass, so that the
    activations stay in cache. LeNet-5, one thread: 3,300 images/s in one pass of 500 in the default layout,
    10,300/s like this (the same numbers up to float rounding). A network whose BatchNorm uses the current
    batch's statistics (:func:`_uses_batch_statistics`, e.g. the authors' ResNet norm ``"batch"``) runs the
    whole batch in one pass, so that its outputs are those of the batch it was given."""
    cl = torch.channels_last
    if x.dim() == 4:
        x = x.contiguous(memory_format=cl)
    params = {k: v.contiguous(memory_format=cl) if v.dim() == 4 else v for k, v in params.items()}
    if x.shape[0] <= CPU_CONV_SLICE or _uses_batch_statistics(module):
        return functional_call(module, params, (x,)).contiguous()
    return torch.cat([functional_call(module, params, (x[i:i + CPU_CONV_SLICE],)).contiguous()
                      for i in range(0, x.shape[0], CPU_CONV_SLICE)])


def forward_samples_per_input(module: nn.Module, samples: Mapping[str, Tensor], xs: Tensor) -> Tensor:
    """``module`` under weight sample s on its own input ``xs[s]``: ``[S, B, ...]`` from ``xs [S, B, ...]``.

    The per-copy evaluation adversarial attacks need (sample s sees only ``xs[s]``, so one backward pass
    gives every sample's own input gradient); vectorised with ``vmap`` over (weights, inputs) except where
    :func:`forward_samples` loops (BatchNorm updating running statistics, a convolutional network on the CPU).
    """
    if _updates_running_stats(module):
        return torch.stack([functional_call(module, {k: v[s] for k, v in samples.items()}, (xs[s],))
                            for s in range(xs.shape[0])])
    if _is_cpu_conv(module, xs):
        return torch.stack([_cpu_conv_forward(module, {k: v[s] for k, v in samples.items()}, xs[s])
                            for s in range(xs.shape[0])])

    def one(params: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(module, params, (xi,))

    return vmap(one, in_dims=(0, 0), randomness="different")(dict(samples), xs)


def chunked_sample_outputs(module: nn.Module, sample: Callable[[int], Mapping[str, Tensor]], x: Tensor,
                           n_samples: int, chunk_size: int | None = None) -> Tensor:
    """``[S, *module(x).shape]`` outputs under ``n_samples`` weight draws ``sample(k)``, drawn and evaluated
    ``chunk_size`` at a time (None: all at once) with :func:`forward_samples`."""
    outs = [forward_samples(module, sample(k), x) for k in chunk_sizes(n_samples, chunk_size)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

"""Running a plain ``nn.Module`` with externally supplied (batched) weights.

A posterior produces weight samples ``dict[name, Tensor[S, *shape]]``; :func:`forward_samples` evaluates
the module once per sample and stacks the outputs into ``[S, B, ...]``. The path is
``torch.func.vmap`` over ``torch.func.functional_call``: PyTorch's batching rules turn a linear layer with
batched weights into a batched matmul and a convolution into one grouped convolution, so there is no
Python loop over samples. ``chunk_size`` bounds memory by evaluating that many samples at a time.
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


def forward_with(module: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Evaluate ``module(x)`` with the given (unbatched) parameters replacing the module's own."""
    return functional_call(module, dict(params), (x,))


def _updates_running_stats(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
               for m in module.modules())


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
    chunk = n if chunk_size is None else max(1, int(chunk_size))

    def one(params: dict[str, Tensor]) -> Tensor:
        return functional_call(module, params, (x,))

    if _updates_running_stats(module):
        return torch.stack([one({k: v[i] for k, v in samples.items()}) for i in range(n)])

    batched = vmap(one, in_dims=(0,), randomness="different")
    outs = [batched({k: v[i:i + chunk] for k, v in samples.items()}) for i in range(0, n, chunk)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def chunked_sample_outputs(module: nn.Module, sample: Callable[[int], Mapping[str, Tensor]], x: Tensor,
                           n_samples: int, chunk_size: int | None = None) -> Tensor:
    """``[S, *module(x).shape]`` outputs under ``n_samples`` weight draws ``sample(k)``, drawn and evaluated
    ``chunk_size`` at a time (None: all at once) with :func:`forward_samples`."""
    n = int(n_samples)
    if n < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    chunk = n if chunk_size is None else max(1, int(chunk_size))
    outs = [forward_samples(module, sample(min(chunk, n - i)), x) for i in range(0, n, chunk)]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

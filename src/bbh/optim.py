"""Optimizers: torch Adam (fused where available) and RMSProp with TensorFlow 1 semantics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .options import OptimizerName, parse_option

DEFAULT_LR = {OptimizerName.ADAM: 1e-3, OptimizerName.RMSPROP_TF: 1e-4}
"""Learning rates of the authors' runs: Adam 1e-3 for the baselines, RMSProp-TF 1e-4 for BbH."""


class RMSPropTF(torch.optim.Optimizer):
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer`` (momentum 0), which the authors' BbH used.

        v <- decay * v + (1 - decay) * g^2          (v initialised to ``initial_accumulator`` = 1)
        w <- w - lr * g / sqrt(v + eps)             (eps inside the square root)

    ``torch.optim.RMSprop`` differs on both counts (v starts at 0, eps outside the root), which changes the
    first steps drastically: with v0 = 1 the early steps are ~lr * g, with v0 = 0 they are ~lr * sign(g) * 3.

    On the CPU the update runs in cache-sized chunks so that the temporaries of the five elementwise ops
    stay in cache (the hypernet output layers hold hundreds of millions of parameters).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (authors: 1e-4).
        decay: the accumulator's decay (TF ``decay``, 0.9).
        eps: added inside the square root (authors: 1e-5).
        initial_accumulator: starting value of v (TF: 1.0).
    """

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict], lr: float = 1e-4, decay: float = 0.9,
                 eps: float = 1e-5, initial_accumulator: float = 1.0, chunk_size: int = 1 << 18) -> None:
        if lr <= 0 or not 0 <= decay < 1 or eps < 0 or initial_accumulator < 0:
            raise ValueError(f"invalid RMSPropTF settings lr={lr}, decay={decay}, eps={eps}, "
                             f"initial_accumulator={initial_accumulator}")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps, initial_accumulator=initial_accumulator))
        self.chunk_size = int(chunk_size)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, eps = group["lr"], group["decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSPropTF does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.full_like(p, group["initial_accumulator"],
                                                          memory_format=torch.preserve_format)
                _rmsprop_tf_update(p, p.grad, state["square_avg"], lr, decay, eps,
                                   self.chunk_size if p.device.type == "cpu" else None)
        return loss


def _rmsprop_tf_update(p: Tensor, g: Tensor, v: Tensor, lr: float, decay: float, eps: float,
                       chunk: int | None) -> None:
    if chunk is None or not (p.is_contiguous() and g.is_contiguous() and v.is_contiguous()):
        v.mul_(decay).addcmul_(g, g, value=1 - decay)
        p.addcmul_(g, v.add(eps).rsqrt_(), value=-lr)
        return
    pf, gf, vf = p.view(-1), g.view(-1), v.view(-1)
    for s in range(0, pf.numel(), chunk):
        pc, gc, vc = pf[s:s + chunk], gf[s:s + chunk], vf[s:s + chunk]
        vc.mul_(decay).addcmul_(gc, gc, value=1 - decay)
        pc.addcmul_(gc, vc.add(eps).rsqrt_(), value=-lr)


def make_optimizer(name: OptimizerName | str, params: list[nn.Parameter], lr: float | None = None,
                   eps: float | None = None) -> torch.optim.Optimizer:
    """Build ``"adam"`` (fused kernel where the parameters allow) or ``"rmsprop-tf"``.

    Args:
        name: the optimizer.
        params: parameters to update.
        lr: learning rate; default :data:`DEFAULT_LR`.
        eps: epsilon; default torch's 1e-8 for Adam, the authors' 1e-5 for RMSProp-TF.
    """
    opt = parse_option(OptimizerName, name, "optimizer")
    if not params:
        raise ValueError("no trainable parameters to optimise")
    lr = DEFAULT_LR[opt] if lr is None else float(lr)
    if opt == OptimizerName.RMSPROP_TF:
        return RMSPropTF(params, lr=lr, eps=1e-5 if eps is None else eps)
    kwargs = dict(lr=lr, eps=1e-8 if eps is None else eps)
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # pragma: no cover - builds without the fused kernel
            pass
    return torch.optim.Adam(params, **kwargs)

"""Optimizers: Adam and RMSProp with TensorFlow 1 semantics, both able to take low-rank gradients.

Low-rank (factored) gradients
-----------------------------
The output layer of a hypernet maps S hidden vectors h [S, H] to S weight samples: y = h W^T + b with W of
shape [P, H] (P = 400,000 for the LeNet fc1 weight). Its weight gradient is the rank-S product
dW = dy^T h. Materialising it writes P x H floats (800 MB) only for the optimizer to read them back. When
a parameter is *factored* (:func:`enable_factored_grads`), the layer's backward stores the factors
``(dy^T, h)`` instead (:func:`add_grad_factors`), and :class:`Adam` / :class:`RMSPropTF` form the gradient
block by block of rows, in a cache-sized buffer, right before updating that block. The update is the same
as with a materialised gradient (tested against ``torch.optim.Adam``); measured on 2 CPU cores, the
gradient plus Adam step of the 512 x 400,000 layer goes from 393 ms to 161 ms. Where the native kernels of
:mod:`bbh.native` are available (large CPU float32 parameters), one fused loop forms each gradient row and
updates it, reading and writing the parameter and its state once (~90 ms for that layer).

A factored parameter's ``.grad`` stays None: use these optimizers (the Trainer does), or call
:func:`disable_factored_grads` before handing the parameters to another optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..backends import native
from ..options import OptimizerName, parse_option

DEFAULT_LR = {OptimizerName.ADAM: 1e-3, OptimizerName.RMSPROP_TF: 1e-4}
"""Learning rates of the authors' runs: Adam 1e-3 for the baselines, RMSProp-TF 1e-4 for BbH."""

_FACTORED = "_bbh_factored"
_FACTORS = "_bbh_grad_factors"
_CAN_FACTOR = "_bbh_can_factor"


def mark_factorable(p: nn.Parameter) -> None:
    """Declare that ``p``'s layer can deliver its gradient as factors (hypernet output layers do)."""
    setattr(p, _CAN_FACTOR, True)


def enable_factored_grads(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Switch the factorable parameters among ``params`` to factored gradients; returns them."""
    chosen = [p for p in params if getattr(p, _CAN_FACTOR, False)]
    for p in chosen:
        setattr(p, _FACTORED, True)
    return chosen


def disable_factored_grads(params: Iterable[nn.Parameter]) -> None:
    """Back to ordinary ``.grad`` gradients for ``params``."""
    for p in params:
        if getattr(p, _FACTORED, False):
            setattr(p, _FACTORED, False)
            setattr(p, _FACTORS, None)


def wants_factored_grad(p: Tensor) -> bool:
    """Whether the backward of ``p``'s layer should call :func:`add_grad_factors` instead of returning dW."""
    return bool(getattr(p, _FACTORED, False))


def add_grad_factors(p: Tensor, left: Tensor, right: Tensor) -> None:
    """Accumulate dW += left @ right (left [P, S], right [S, H]) as factors on ``p``."""
    factors = getattr(p, _FACTORS, None)
    if factors is None:
        factors = []
        setattr(p, _FACTORS, factors)
    factors.append((left, right))  # left may be a transposed view: mm reads it without a copy


def _pop_factors(p: Tensor) -> list[tuple[Tensor, Tensor]]:
    factors = getattr(p, _FACTORS, None) or []
    setattr(p, _FACTORS, None)
    return factors


def _grad_blocks(p: Tensor, factors: list[tuple[Tensor, Tensor]], rows: int, buf: Tensor | None):
    """Yield (row slice, gradient block) for the 2-d parameter ``p`` from its factors (+ its .grad)."""
    n_rows, n_cols = p.shape
    for start in range(0, n_rows, rows):
        stop = min(start + rows, n_rows)
        out = None if buf is None else buf[: (stop - start) * n_cols].view(stop - start, n_cols)
        left, right = factors[0]
        g = torch.mm(left[start:stop], right, out=out) if out is not None else left[start:stop] @ right
        for left, right in factors[1:]:
            g.addmm_(left[start:stop], right)
        if p.grad is not None:
            g.add_(p.grad[start:stop])
        yield slice(start, stop), g


class _FactoredOptimizer(torch.optim.Optimizer):
    """Shared plumbing: factored parameters are updated block by block, the rest as usual."""

    def __init__(self, params, defaults: dict, block_bytes: int) -> None:
        super().__init__(params, defaults)
        self.block_bytes = int(block_bytes)
        self._workspaces: dict[str, Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                if getattr(p, _FACTORS, None):
                    setattr(p, _FACTORS, None)

    def _workspace(self, slot: str, numel: int, dtype: torch.dtype) -> Tensor:
        """A reusable CPU buffer of ``numel`` elements per ``slot`` (allocating 4 MB per block costs page
        faults): ``"grad"`` holds a gradient block, ``"scratch"`` an elementwise temporary."""
        buf = self._workspaces.get(slot)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._workspaces[slot] = torch.empty(numel, dtype=dtype)
        return buf[:numel]

    def _scratch(self, numel: int, dtype: torch.dtype) -> Tensor:
        return self._workspace("scratch", numel, dtype)

    @staticmethod
    def _native(p: Tensor, factors: list[tuple[Tensor, Tensor]], *state: Tensor) -> bool:
        """Whether :mod:`bbh.native` can fuse gradient formation and update for ``p`` (large 2-d CPU float32)."""
        dense = [] if p.grad is None else [p.grad]
        return (p.dim() == 2 and all(t.is_contiguous() for t in (p, *state))
                and native.usable(p, *state, *dense, *(t for pair in factors for t in pair)))

    def _blocks(self, p: Tensor, factors: list[tuple[Tensor, Tensor]]):
        if p.dim() != 2:
            raise RuntimeError(f"factored gradients need a 2-d parameter, got shape {tuple(p.shape)}")
        if p.device.type != "cpu":  # one block: the point of blocking is the CPU cache
            yield from _grad_blocks(p, factors, p.shape[0], None)
            return
        rows = max(1, self.block_bytes // (p.shape[1] * p.element_size()))
        yield from _grad_blocks(p, factors, rows, self._workspace("grad", rows * p.shape[1], p.dtype))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            plain, factored = self._split(group)
            self._step_group(group, plain, factored)
        return loss

    def _step_group(self, group: dict, plain: list[Tensor], factored: list[tuple[Tensor, list]]) -> None:
        raise NotImplementedError

    def _split(self, group: dict) -> tuple[list[Tensor], list[tuple[Tensor, list]]]:
        """(params with a plain .grad, [(param, factors)])."""
        plain, factored = [], []
        for p in group["params"]:
            factors = _pop_factors(p)
            if factors:
                factored.append((p, factors))
            elif p.grad is not None:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                plain.append(p)
        return plain, factored


class Adam(_FactoredOptimizer):
    """Adam (Kingma & Ba 2015) that also accepts factored gradients.

        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
        w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    The update is ``torch.optim.Adam``'s (its fused kernel ``aten::_fused_adam_`` where available).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 block_bytes: int = 4 << 20) -> None:
        if lr <= 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps), block_bytes)

    def _state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def _update(ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], vs: list[Tensor], steps: list[Tensor],
                lr: float, b1: float, b2: float, eps: float) -> None:
        """One Adam update with already-incremented steps."""
        fused_ok = hasattr(torch, "_fused_adam_") and all(p.device.type in ("cpu", "cuda") for p in ps)
        if fused_ok:
            torch._fused_adam_(ps, gs, ms, vs, [], steps, lr=lr, beta1=b1, beta2=b2, weight_decay=0.0, eps=eps,
                               amsgrad=False, maximize=False)
            return
        for p, g, m, v, t in zip(ps, gs, ms, vs, steps):  # pragma: no cover - builds without the fused kernel
            step = float(t)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**step)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - b1**step))

    def _step_group(self, group: dict, plain: list[Tensor], factored: list[tuple[Tensor, list]]) -> None:
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        if plain:
            states = [self._state(p) for p in plain]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            by_device: dict[torch.device, list[int]] = {}
            for i, p in enumerate(plain):
                by_device.setdefault(p.device, []).append(i)
            for idx in by_device.values():
                self._update([plain[i] for i in idx], [plain[i].grad for i in idx],
                             [states[i]["exp_avg"] for i in idx], [states[i]["exp_avg_sq"] for i in idx],
                             [steps[i] if plain[i].device.type == "cpu" else steps[i].to(plain[i].device)
                              for i in idx], lr, b1, b2, eps)
        for p, factors in factored:
            state = self._state(p)
            state["step"].add_(1)
            if self._native(p, factors, state["exp_avg"], state["exp_avg_sq"]):
                native.factored_adam_(p, state["exp_avg"], state["exp_avg_sq"], factors, p.grad,
                                      step=float(state["step"]), lr=lr, beta1=b1, beta2=b2, eps=eps)
                continue
            step = state["step"] if p.device.type == "cpu" else state["step"].to(p.device)
            for rows, g in self._blocks(p, factors):
                self._update([p[rows]], [g], [state["exp_avg"][rows]], [state["exp_avg_sq"][rows]], [step],
                             lr, b1, b2, eps)


class RMSPropTF(_FactoredOptimizer):
    """RMSProp as TensorFlow 1's ``tf.train.RMSPropOptimizer`` (momentum 0), which the authors' BbH used.

        v <- decay * v + (1 - decay) * g^2          (v initialised to ``initial_accumulator`` = 1)
        w <- w - lr * g / sqrt(v + eps)             (eps inside the square root)

    ``torch.optim.RMSprop`` differs on both counts (v starts at 0, eps outside the root), which changes the
    first steps drastically: with v0 = 1 the early steps are ~lr * g, with v0 = 0 they are ~lr * sign(g) * 3.
    On the CPU the update runs in cache-sized blocks.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (authors: 1e-4).
        decay: the accumulator's decay (TF ``decay``, 0.9).
        eps: added inside the square root (authors: 1e-5).
        initial_accumulator: starting value of v (TF: 1.0).
        block_bytes: size of the blocks updated at once on the CPU.
    """

    def __init__(self, params, lr: float = 1e-4, decay: float = 0.9, eps: float = 1e-5,
                 initial_accumulator: float = 1.0, block_bytes: int = 4 << 20) -> None:
        if lr <= 0 or not 0 <= decay < 1 or eps < 0 or initial_accumulator < 0:
            raise ValueError(f"invalid RMSPropTF settings lr={lr}, decay={decay}, eps={eps}, "
                             f"initial_accumulator={initial_accumulator}")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps, initial_accumulator=initial_accumulator),
                         block_bytes)

    def _accumulator(self, p: Tensor, group: dict) -> Tensor:
        state = self.state[p]
        if not state:
            state["square_avg"] = torch.full_like(p, group["initial_accumulator"],
                                                  memory_format=torch.preserve_format)
        return state["square_avg"]

    def _step_group(self, group: dict, plain: list[Tensor], factored: list[tuple[Tensor, list]]) -> None:
        lr, decay, eps = group["lr"], group["decay"], group["eps"]
        for p in plain:
            v = self._accumulator(p, group)
            if p.device.type == "cpu" and p.is_contiguous() and p.grad.is_contiguous() and v.is_contiguous():
                chunk = max(1, self.block_bytes // p.element_size())
                pf, gf, vf = p.view(-1), p.grad.view(-1), v.view(-1)
                for s in range(0, pf.numel(), chunk):
                    _rmsprop_tf(pf[s:s + chunk], gf[s:s + chunk], vf[s:s + chunk], lr, decay, eps,
                                self._scratch(min(chunk, pf.numel() - s), p.dtype))
            else:
                _rmsprop_tf(p, p.grad, v, lr, decay, eps)
        for p, factors in factored:
            v = self._accumulator(p, group)
            if self._native(p, factors, v):
                native.factored_rmsprop_tf_(p, v, factors, p.grad, lr=lr, decay=decay, eps=eps)
                continue
            for rows, g in self._blocks(p, factors):
                scratch = self._scratch(g.numel(), p.dtype).view_as(g) if p.device.type == "cpu" else None
                _rmsprop_tf(p[rows], g, v[rows], lr, decay, eps, scratch)


def _rmsprop_tf(p: Tensor, g: Tensor, v: Tensor, lr: float, decay: float, eps: float,
                scratch: Tensor | None = None) -> None:
    """v <- decay v + (1 - decay) g^2;  p <- p - lr g / sqrt(v + eps)  (``scratch``: a reusable temporary)."""
    v.mul_(decay).addcmul_(g, g, value=1 - decay)
    inv_rms = torch.add(v, eps, out=scratch) if scratch is not None else v.add(eps)
    p.addcmul_(g, inv_rms.rsqrt_(), value=-lr)


def make_optimizer(name: OptimizerName | str, params: list[nn.Parameter], lr: float | None = None,
                   eps: float | None = None, factored: bool = True) -> torch.optim.Optimizer:
    """Build ``"adam"`` or ``"rmsprop-tf"``.

    Args:
        name: the optimizer.
        params: parameters to update.
        lr: learning rate; default :data:`DEFAULT_LR`.
        eps: epsilon; default 1e-8 for Adam (torch's), the authors' 1e-5 for RMSProp-TF.
        factored: let factorable parameters (hypernet output layers) pass low-rank gradient factors.
    """
    opt = parse_option(OptimizerName, name, "optimizer")
    if not params:
        raise ValueError("no trainable parameters to optimise")
    lr = DEFAULT_LR[opt] if lr is None else float(lr)
    if factored:
        enable_factored_grads(params)
    else:
        disable_factored_grads(params)
    if opt == OptimizerName.RMSPROP_TF:
        return RMSPropTF(params, lr=lr, eps=1e-5 if eps is None else eps)
    return Adam(params, lr=lr, eps=1e-8 if eps is None else eps)

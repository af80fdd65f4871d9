"""Optimizers: Adam and RMSProp with TensorFlow 1 semantics, both able to take low-rank gradients.

PyTorch's contract holds everywhere: after ``loss.backward()`` every trainable parameter, hypernet output
layers included, has its dense ``.grad``, and nothing is stored on a Parameter between steps. The optimizers
here work with any such gradients (they are ordinary ``torch.optim.Optimizer`` subclasses).

Low-rank (factored) gradients, opt-in
-------------------------------------
The output layer of a hypernet maps S hidden vectors h [S, H] to S weight samples: y = h W^T + b with W of
shape [P, H] (P = 400,000 for the LeNet fc1 weight). Its weight gradient is the rank-S product

    dW = dy^T h = L R,   L = dy^T [P, S],  R = h [S, H].

Materialising it writes P x H floats (800 MB) only for the optimizer to read them back. :class:`Adam` and
:class:`RMSPropTF` can instead take ``(L, R)`` for their *own* backward pass::

    with optimizer.factored_backward():     # or factored_backward(optimizer) for any optimizer
        loss.backward()
    clip_grad_norm_(optimizer, max_norm)    # optional: counts the factored part too
    optimizer.step()                        # forms each dW block by block, right before updating it
    optimizer.zero_grad(set_to_none=True)   # also drops factors that were not consumed

Inside the context the hypernet heads whose weights this optimizer updates hand their factors to the
optimizer's :class:`~bbh.backends.factored.FactorCollector` instead of returning dW (their ``.grad`` stays
None; heads of other optimizers and every other parameter get their ``.grad`` as usual). :meth:`step`
forms g = Σ L_i R_i (+ ``.grad`` if present) block by block of rows in a cache-sized buffer, or row by row
inside the fused native loop (:mod:`bbh.backends.ops`), and applies the same update as with a materialised
gradient (tested against ``torch.optim.Adam``). Measured on 2 CPU cores, the gradient plus Adam step of the
512 x 400,000 layer goes from 393 ms (materialised) to 161 ms (PyTorch blocks) and ~90 ms (native).

Limits of the factored path: gradient hooks registered on a head weight do not see the factored part, and a
``GradScaler`` does not unscale it (use a plain backward with a scaler); ``torch.autograd.grad`` and
``backward(inputs=...)`` keep working inside the context (the heads then return what autograd asks for).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from ..backends import ops
from ..backends.factored import FactorCollector, Factors, collecting
from ..core.options import OptimizerName, parse_option

DEFAULT_LR = {OptimizerName.ADAM: 1e-3, OptimizerName.RMSPROP_TF: 1e-4}
"""Learning rates of the authors' runs: Adam 1e-3 for the baselines, RMSProp-TF 1e-4 for BbH."""


class _FactoredOptimizer(torch.optim.Optimizer):
    """Shared plumbing: parameters with collected factors are updated block by block, the rest as usual.

    Args:
        params: parameters or parameter groups.
        defaults: the optimizer's hyperparameters.
        block_bytes: size of the gradient blocks formed at once on the CPU (PyTorch path).
        factored: whether :meth:`factored_backward` collects factors (False: it is a no-op context).
    """

    def __init__(self, params, defaults: dict, block_bytes: int, factored: bool = True) -> None:
        super().__init__(params, defaults)
        self.block_bytes = int(block_bytes)
        self.factored = bool(factored)
        self._collector = FactorCollector()
        self._workspace = ops.Workspace()

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(block_bytes=self.block_bytes, factored=self.factored)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("block_bytes", ops.BLOCK_BYTES)
        self.__dict__.setdefault("factored", True)
        self._collector = FactorCollector()  # factors are not state: they never outlive a step
        self._workspace = ops.Workspace()

    @property
    def collector(self) -> FactorCollector:
        """The factors collected by :meth:`factored_backward` and not yet consumed by :meth:`step`."""
        return self._collector

    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def factored_backward(self) -> AbstractContextManager:
        """Context for this optimizer's own backward pass: inside it, the hypernet heads among this optimizer's
        parameters deliver their weight gradients as factors to :attr:`collector` (consumed by :meth:`step`,
        dropped by :meth:`zero_grad`) instead of ``.grad``. A no-op context when built with
        ``factored=False``."""
        if not self.factored:
            return contextlib.nullcontext()
        self._collector.want(p for p in self._all_params() if p.dim() == 2)
        return collecting(self._collector)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``torch.optim.Optimizer.zero_grad`` plus dropping any collected factors."""
        super().zero_grad(set_to_none=set_to_none)
        self._collector.clear()

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One update of every parameter with a gradient: its ``.grad``, plus its collected factors (which
        this consumes)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            plain, factored = [], []
            for p in group["params"]:
                factors = self._collector.pop(p)
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if factors:
                    factored.append((p, factors))
                elif p.grad is not None:
                    plain.append(p)
            self._step_group(group, plain, factored)
        return loss

    def _step_group(self, group: dict, plain: list[Tensor], factored: list[tuple[Tensor, Factors]]) -> None:
        raise NotImplementedError


class Adam(_FactoredOptimizer):
    """Adam (Kingma & Ba 2015) that also accepts factored gradients.

        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
        w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    The update is ``torch.optim.Adam``'s (its fused kernel ``aten::_fused_adam_`` where available).

    Args:
        params: parameters or parameter groups.
        lr, betas, eps: Adam's hyperparameters.
        block_bytes: size of the blocks of a factored gradient formed at once on the CPU.
        factored: whether :meth:`factored_backward` collects factored gradients.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 block_bytes: int = ops.BLOCK_BYTES, factored: bool = True) -> None:
        if lr <= 0 or eps < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps), block_bytes, factored)

    def _state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _step_group(self, group: dict, plain: list[Tensor], factored: list[tuple[Tensor, Factors]]) -> None:
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        if plain:
            states = [self._state(p) for p in plain]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            by_device: dict[torch.device, list[int]] = {}
            for i, p in enumerate(plain):
                by_device.setdefault(p.device, []).append(i)
            for idx in by_device.values():
                ops.adam_update_([plain[i] for i in idx], [plain[i].grad for i in idx],
                                 [states[i]["exp_avg"] for i in idx], [states[i]["exp_avg_sq"] for i in idx],
                                 [steps[i] if plain[i].device.type == "cpu" else steps[i].to(plain[i].device)
                                  for i in idx], lr=lr, beta1=b1, beta2=b2, eps=eps)
        for p, factors in factored:
            state = self._state(p)
            state["step"].add_(1)
            ops.factored_adam_(p, state["exp_avg"], state["exp_avg_sq"], factors, p.grad, step=state["step"],
                               lr=lr, beta1=b1, beta2=b2, eps=eps, block_bytes=self.block_bytes,
                               workspace=self._workspace)


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
        factored: whether :meth:`factored_backward` collects factored gradients.
    """

    def __init__(self, params, lr: float = 1e-4, decay: float = 0.9, eps: float = 1e-5,
                 initial_accumulator: float = 1.0, block_bytes: int = ops.BLOCK_BYTES, factored: bool = True) -> None:
        if lr <= 0 or not 0 <= decay < 1 or eps < 0 or initial_accumulator < 0:
            raise ValueError(f"invalid RMSPropTF settings lr={lr}, decay={decay}, eps={eps}, "
                             f"initial_accumulator={initial_accumulator}")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps, initial_accumulator=initial_accumulator),
                         block_bytes, factored)

    def _accumulator(self, p: Tensor, group: dict) -> Tensor:
        state = self.state[p]
        if not state:
            state["square_avg"] = torch.full_like(p, group["initial_accumulator"],
                                                  memory_format=torch.preserve_format)
        return state["square_avg"]

    def _step_group(self, group: dict, plain: list[Tensor], factored: list[tuple[Tensor, Factors]]) -> None:
        lr, decay, eps = group["lr"], group["decay"], group["eps"]
        for p in plain:
            v = self._accumulator(p, group)
            if p.device.type == "cpu" and p.is_contiguous() and p.grad.is_contiguous() and v.is_contiguous():
                chunk = max(1, self.block_bytes // p.element_size())
                pf, gf, vf = p.view(-1), p.grad.view(-1), v.view(-1)
                for s in range(0, pf.numel(), chunk):
                    scratch = self._workspace.get("scratch", min(chunk, pf.numel() - s), p.dtype)
                    ops.rmsprop_tf_update_(pf[s:s + chunk], gf[s:s + chunk], vf[s:s + chunk], lr=lr, decay=decay,
                                           eps=eps, scratch=scratch)
            else:
                ops.rmsprop_tf_update_(p, p.grad, v, lr=lr, decay=decay, eps=eps)
        for p, factors in factored:
            ops.factored_rmsprop_tf_(p, self._accumulator(p, group), factors, p.grad, lr=lr, decay=decay, eps=eps,
                                     block_bytes=self.block_bytes, workspace=self._workspace)


# --------------------------------------------------------------------------------- helpers for any optimizer
def factored_backward(optimizer: torch.optim.Optimizer) -> AbstractContextManager:
    """``optimizer.factored_backward()`` for bbh's optimizers, a no-op context for any other optimizer."""
    if isinstance(optimizer, _FactoredOptimizer):
        return optimizer.factored_backward()
    return contextlib.nullcontext()


def _params_of(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _collector_of(optimizer: torch.optim.Optimizer) -> FactorCollector | None:
    return optimizer.collector if isinstance(optimizer, _FactoredOptimizer) else None


def has_factors(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` holds collected gradient factors not yet consumed by a step."""
    collector = _collector_of(optimizer)
    return collector is not None and any(collector.get(p) for p in _params_of(optimizer))


def _factored_sq_norm(factors: Factors, dense: Tensor | None) -> Tensor:
    """||Σ_i L_i R_i + G||_F^2 without forming the P x H matrix, in float64.

    With L = [L_1 ... L_k] (columns concatenated) and R = [R_1; ...; R_k] (rows concatenated):
    ||L R||_F^2 = tr(R^T L^T L R) = Σ_{ab} (L^T L)_{ab} (R R^T)_{ab}, and for a dense part G
    ||L R + G||_F^2 = ||L R||_F^2 + 2 Σ_{pa} L_{pa} (G R^T)_{pa} + ||G||_F^2.
    """
    left = factors[0][0] if len(factors) == 1 else torch.cat([f[0] for f in factors], dim=1)
    right = factors[0][1] if len(factors) == 1 else torch.cat([f[1] for f in factors], dim=0)
    left64, right64 = left.double(), right.double()
    sq = ((left64.t() @ left64) * (right64 @ right64.t())).sum()
    if dense is not None:
        cross = (dense @ right.t().to(dense.dtype)).double()
        sq = sq + 2 * (left64 * cross).sum() + dense.double().pow(2).sum()
    return sq


def _norms(optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], list[Tensor], FactorCollector | None]:
    """(per-parameter 2-norms, the dense gradients, the collector) of ``optimizer``'s parameters."""
    collector = _collector_of(optimizer)
    norms, dense = [], []
    for p in _params_of(optimizer):
        factors = collector.get(p) if collector is not None else []
        if p.grad is not None:
            dense.append(p.grad)
        if factors:
            dtype = p.grad.dtype if p.grad is not None else factors[0][0].dtype
            norms.append(_factored_sq_norm(factors, p.grad).sqrt().to(dtype))
        elif p.grad is not None:
            norms.append(torch.linalg.vector_norm(p.grad, 2.0))
    return norms, dense, collector


def _total(norms: list[Tensor]) -> Tensor:
    """sqrt(Σ n_i^2) on the first norm's device, as ``torch.nn.utils.clip_grad_norm_`` combines them."""
    if not norms:
        return torch.tensor(0.0)
    device = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2.0)


@torch.no_grad()
def grad_norm(optimizer: torch.optim.Optimizer) -> Tensor:
    """The 2-norm of the whole gradient of ``optimizer``'s parameters, dense ``.grad`` and collected factors:
    sqrt(Σ_p ||g_p||^2) with g_p = .grad + Σ_i L_i R_i (see :func:`clip_grad_norm_`)."""
    return _total(_norms(optimizer)[0])


@torch.no_grad()
def clip_grad_norm_(optimizer: torch.optim.Optimizer, max_norm: float) -> Tensor:
    """Clip the gradient of ``optimizer``'s parameters to 2-norm ``max_norm``; returns the norm before clipping.

    The norm is the true one over everything the next :meth:`step` will use: dense ``.grad`` and, for bbh's
    optimizers, the factors collected by ``factored_backward`` (||Σ_i L_i R_i||_F^2 = Σ (L^T L) ∘ (R R^T),
    computed from the S-column factors, never the P x H matrix). As ``torch.nn.utils.clip_grad_norm_``, every
    gradient is multiplied by min(1, max_norm / (norm + 1e-6)); a factored gradient through its small factor
    R. Without collected factors this *is* ``torch.nn.utils.clip_grad_norm_`` over the optimizer's
    parameters, so it works with any optimizer.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        max_norm: the largest 2-norm allowed.
    """
    if not has_factors(optimizer):
        return torch.nn.utils.clip_grad_norm_(_params_of(optimizer), max_norm)
    norms, dense, collector = _norms(optimizer)
    total = _total(norms)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in dense:
        g.mul_(coef.to(g.device))
    if collector is not None:
        collector.scale_(coef)
    return total


def make_optimizer(name: OptimizerName | str, params: list[nn.Parameter], lr: float | None = None,
                   eps: float | None = None, factored: bool = True) -> torch.optim.Optimizer:
    """Build ``"adam"`` or ``"rmsprop-tf"``.

    Args:
        name: the optimizer.
        params: parameters to update.
        lr: learning rate; default :data:`DEFAULT_LR`.
        eps: epsilon; default 1e-8 for Adam (torch's), the authors' 1e-5 for RMSProp-TF.
        factored: let the optimizer's :meth:`~_FactoredOptimizer.factored_backward` collect the hypernet heads'
            low-rank weight gradients as factors (False: it is a no-op context and every gradient is dense).
    """
    opt = parse_option(OptimizerName, name, "optimizer")
    if not params:
        raise ValueError("no trainable parameters to optimise")
    lr = DEFAULT_LR[opt] if lr is None else float(lr)
    if opt == OptimizerName.RMSPROP_TF:
        return RMSPropTF(params, lr=lr, eps=1e-5 if eps is None else eps, factored=factored)
    return Adam(params, lr=lr, eps=1e-8 if eps is None else eps, factored=factored)


__all__ = ["DEFAULT_LR", "Adam", "RMSPropTF", "clip_grad_norm_", "factored_backward", "grad_norm", "has_factors",
           "make_optimizer"]

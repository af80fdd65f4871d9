"""The operations bbh's hot paths call, each dispatching to the native CPU kernels or to PyTorch.

This module is the one seam between the numerical code (hypernet heads in :mod:`bbh.posteriors.hypernet`,
the optimizers in :mod:`bbh.training.optim`, the KL estimator in :mod:`bbh.kl.nearest`) and
:mod:`bbh.backends.native`: every operation checks :func:`native.usable <bbh.backends.native.usable>` and
runs the C kernel where it applies (large CPU float32 tensors, kernels built, not disabled with
``native.set_enabled(False)`` or ``BBH_NATIVE=0``), else its PyTorch implementation, which is also the
reference the kernels are tested against. Nothing outside ``bbh.backends`` calls ``native.*`` directly.

Operations (W [P, H] a hypernet output layer's weight, h [M, H] its few input rows, M = S samples):

* :func:`head_forward`: y = h W^T + b  -> [M, P]
* :func:`head_input_grad`: dh = dy W  (dy [M, P]) -> [M, H]
* :func:`factored_adam_` / :func:`factored_rmsprop_tf_`: the optimizer update of W with the gradient
  g = Σ_i L_i R_i (+ G), given as factors (L_i [P, S_i], R_i [S_i, H]) and an optional dense part G,
  formed block by block of rows (a cache-sized buffer, or one row at a time inside the native loop) right
  before the block is updated, so that the P x H gradient is never materialised.
* :func:`nn_kl_per_weight`: value and gradient of the per-weight nearest-neighbour KL (paper Eq. 2, d = 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from . import native
from .factored import Factors

SPLIT_ROWS = 1 << 16
"""From this many rows of W on, the PyTorch input gradient is a batched matmul over 16 row blocks."""

BLOCK_BYTES = 4 << 20
"""Default size of the gradient blocks the PyTorch factored updates form at once on the CPU (4 MB)."""


# ------------------------------------------------------------------------------------------ hypernet heads
def head_forward(weight: Tensor, h: Tensor, bias: Tensor | None) -> Tensor:
    """y = h W^T + b for few rows h [M, H] and a very wide W [P, H]; a contiguous [M, P] tensor.

    PyTorch path: ``(b + W h^T)^T`` as one ``addmm`` (``F.linear`` is several times slower for M = 5 on
    the CPU). Native: each row of W read once against all M rows of h kept in L1.

    Args:
        weight: W [P, H].
        h: h [M, H], same dtype and device as W.
        bias: b [P] or None.
    """
    if native.usable(weight, h, *([] if bias is None else [bias])):
        return native.head_forward(weight, h, bias)
    if bias is None:
        return torch.mm(weight, h.t()).t().contiguous()
    return torch.addmm(bias.unsqueeze(1), weight, h.t()).t().contiguous()


def head_input_grad(dy: Tensor, weight: Tensor, splits: int = 16) -> Tensor:
    """dh = dy W for dy [M, P] with few rows M and W [P, H] with very many rows P; [M, H].

    On the CPU a single [M, P] @ [P, H] product with M = 5 runs on one thread; the PyTorch path splits the
    reduction over P into ``splits`` blocks as one ``bmm`` and sums the partial products, using every core
    (~1.7x faster on 2 cores for the LeNet fc1 head). Native: per-thread partial sums over row ranges.
    """
    if native.usable(weight, dy):
        return native.head_input_grad(dy, weight)
    rows = weight.shape[0]
    if dy.device.type != "cpu" or rows < SPLIT_ROWS:
        return dy @ weight
    block = rows // splits
    main = block * splits
    out = torch.bmm(dy[:, :main].reshape(dy.shape[0], splits, block).transpose(0, 1),
                    weight[:main].view(splits, block, weight.shape[1])).sum(0)
    if main < rows:
        out = out.addmm_(dy[:, main:], weight[main:])
    return out


# ------------------------------------------------------------------------------------- optimizer updates
class Workspace:
    """Reusable CPU buffers by slot (allocating a 4 MB block at every step costs page faults):
    ``"grad"`` holds a gradient block, ``"scratch"`` an elementwise temporary."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, slot: str, numel: int, dtype: torch.dtype) -> Tensor:
        """A flat buffer of ``numel`` elements of ``dtype`` for ``slot`` (grown when too small)."""
        buf = self._buffers.get(slot)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._buffers[slot] = torch.empty(numel, dtype=dtype)
        return buf[:numel]


def adam_update_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 steps: list[Tensor], *, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """One Adam step (Kingma & Ba) with already-incremented step counts t, as ``torch.optim.Adam``:

        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
        w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    through ``torch._fused_adam_`` where the build has it (CPU and CUDA), else a loop of in-place ops.
    """
    if hasattr(torch, "_fused_adam_") and all(p.device.type in ("cpu", "cuda") for p in params):
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                           weight_decay=0.0, eps=eps, amsgrad=False, maximize=False)
        return
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):  # pragma: no cover - no fused kernel
        step = float(t)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - beta1**step))


def rmsprop_tf_update_(p: Tensor, g: Tensor, v: Tensor, *, lr: float, decay: float, eps: float,
                       scratch: Tensor | None = None) -> None:
    """One RMSProp step with TensorFlow 1 semantics, in place:

        v <- decay v + (1 - decay) g^2,   p <- p - lr g / sqrt(v + eps)

    ``scratch``: a reusable temporary shaped like ``p`` (saves an allocation per call).
    """
    v.mul_(decay).addcmul_(g, g, value=1 - decay)
    inv_rms = torch.add(v, eps, out=scratch) if scratch is not None else v.add(eps)
    p.addcmul_(g, inv_rms.rsqrt_(), value=-lr)


def grad_blocks(param: Tensor, factors: Factors, dense: Tensor | None, rows: int,
                buf: Tensor | None = None) -> Iterator[tuple[slice, Tensor]]:
    """Yield (row slice, g[rows]) with g = Σ_i L_i R_i (+ dense) for the 2-d ``param``, ``rows`` rows at a
    time, each block formed in ``buf`` (a flat buffer of at least rows x H elements) when given."""
    n_rows, n_cols = param.shape
    for start in range(0, n_rows, rows):
        stop = min(start + rows, n_rows)
        out = None if buf is None else buf[: (stop - start) * n_cols].view(stop - start, n_cols)
        left, right = factors[0]
        g = torch.mm(left[start:stop], right, out=out) if out is not None else left[start:stop] @ right
        for left, right in factors[1:]:
            g.addmm_(left[start:stop], right)
        if dense is not None:
            g.add_(dense[start:stop])
        yield slice(start, stop), g


def _blocks(param: Tensor, factors: Factors, dense: Tensor | None, block_bytes: int,
            workspace: Workspace | None) -> Iterator[tuple[slice, Tensor]]:
    if param.dim() != 2:
        raise ValueError(f"factored gradients need a 2-d parameter, got shape {tuple(param.shape)}")
    if not factors:
        raise ValueError("no gradient factors given")
    if param.device.type != "cpu":  # one block: the point of blocking is the CPU cache
        yield from grad_blocks(param, factors, dense, param.shape[0])
        return
    rows = max(1, int(block_bytes) // (param.shape[1] * param.element_size()))
    buf = (Workspace() if workspace is None else workspace).get("grad", rows * param.shape[1], param.dtype)
    yield from grad_blocks(param, factors, dense, rows, buf)


def _native_update(param: Tensor, factors: Factors, dense: Tensor | None, *state: Tensor) -> bool:
    """Whether the native kernels can fuse gradient formation and update (large 2-d CPU float32)."""
    return (param.dim() == 2 and all(t.is_contiguous() for t in (param, *state))
            and native.usable(param, *state, *([] if dense is None else [dense]),
                              *(t for pair in factors for t in pair)))


def factored_adam_(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, factors: Factors, dense: Tensor | None,
                   *, step: Tensor, lr: float, beta1: float, beta2: float, eps: float,
                   block_bytes: int = BLOCK_BYTES, workspace: Workspace | None = None) -> None:
    """Adam update (:func:`adam_update_`) of the 2-d ``param`` in place with g = Σ_i L_i R_i (+ ``dense``).

    Args:
        param, exp_avg, exp_avg_sq: W [P, H] and its Adam moments.
        factors: [(L_i [P, S_i], R_i [S_i, H])], at least one.
        dense: an ordinary gradient [P, H] added to the factored one, or None.
        step: the already-incremented step count t (a 0-d tensor, as in ``torch.optim.Adam``'s state).
        block_bytes, workspace: blocking of the PyTorch path on the CPU.
    """
    if _native_update(param, factors, dense, exp_avg, exp_avg_sq):
        native.factored_adam_(param, exp_avg, exp_avg_sq, factors, dense, step=float(step), lr=lr,
                              beta1=beta1, beta2=beta2, eps=eps)
        return
    step = step if param.device.type == "cpu" else step.to(param.device)
    for rows, g in _blocks(param, factors, dense, block_bytes, workspace):
        adam_update_([param[rows]], [g], [exp_avg[rows]], [exp_avg_sq[rows]], [step], lr=lr, beta1=beta1,
                     beta2=beta2, eps=eps)


def factored_rmsprop_tf_(param: Tensor, square_avg: Tensor, factors: Factors, dense: Tensor | None, *,
                         lr: float, decay: float, eps: float, block_bytes: int = BLOCK_BYTES,
                         workspace: Workspace | None = None) -> None:
    """RMSProp-TF update (:func:`rmsprop_tf_update_`) of the 2-d ``param`` in place with
    g = Σ_i L_i R_i (+ ``dense``); arguments as :func:`factored_adam_`, ``square_avg`` the accumulator v."""
    if _native_update(param, factors, dense, square_avg):
        native.factored_rmsprop_tf_(param, square_avg, factors, dense, lr=lr, decay=decay, eps=eps)
        return
    on_cpu = param.device.type == "cpu"
    workspace = Workspace() if workspace is None else workspace
    for rows, g in _blocks(param, factors, dense, block_bytes, workspace):
        scratch = workspace.get("scratch", g.numel(), param.dtype).view_as(g) if on_cpu else None
        rmsprop_tf_update_(param[rows], g, square_avg[rows], lr=lr, decay=decay, eps=eps, scratch=scratch)


# ------------------------------------------------------------------------------------------------- the KL
def nn_kl_per_weight(q: Tensor, p: Tensor, eps: float,
                     fallback: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Value and gradient (w.r.t. q) of the per-weight nearest-neighbour KL without its constant:

        value = (1 / 2n) Σ_{i,k} [log(min_j (q_ik - p_jk)^2 + eps) - log(min_{j≠i} (q_ik - q_jk)^2 + eps)]

    for posterior samples q [n, D] and prior samples p [m, D]. Native where it applies (any size: the
    kernel has no thread hand-off to amortise per row), else ``fallback(q, p)`` — the PyTorch
    implementation, which lives with the estimator in :mod:`bbh.kl.nearest` (eager or compiled).
    """
    if native.usable(q, p, min_elements=0):
        return native.nn_kl_per_weight(q, p, eps)
    return fallback(q, p)


__all__ = [
    "BLOCK_BYTES", "SPLIT_ROWS", "Workspace", "adam_update_", "factored_adam_", "factored_rmsprop_tf_",
    "grad_blocks", "head_forward", "head_input_grad", "nn_kl_per_weight", "rmsprop_tf_update_",
]

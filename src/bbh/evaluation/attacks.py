"""Adversarial examples against any bbh method: FGSM as the authors ran it, FGSM on the expected loss, and PGD.

The authors' protocol (paper Fig. 3/4, docs/protocol.md §6.5): the first 100 test images, ε ∈ {0, 0.05, ..., 0.4},
``x_adv = x + ε · sign(∇_x CE)`` with no clipping to the valid range. For a Bayesian method the adversarial op
was run once per posterior sample (a fresh sample each) and the **adversarial images** were averaged:

    authors:      x_adv = x + ε · (1/S) Σ_s sign(g_s),      g_s = ∇_x mean_b CE(f_s(x_b), y_b)

(MAP: one sample; ensembles: one per member, i.e. the mean of the members' FGSM images). This is not the
gradient of any single loss: every sample pushes each pixel by ±ε/S, so pixels on which the samples disagree
move less than ε. The usual attack on a stochastic model is instead the sign of the gradient of the expected
loss (expectation over transformation, Athalye et al. 2018):

    expectation:  x_adv = x + ε · sign(∇_x (1/S) Σ_s mean_b CE(f_s(x_b), y_b))

i.e. the gradient of the **mean of the per-sample cross-entropies** (the Monte Carlo expected log loss), not of
the cross-entropy of the mean predictive distribution; :func:`pgd` iterates it (Madry et al. 2018).

"CE" is the method's own negative log-likelihood, ``-method.likelihood.log_prob(outputs, y)`` (the softmax
cross-entropy for the categorical likelihood; a Gaussian likelihood gives an attack on a regressor).

Per-sample input gradients (``gradient="authors"``)
----------------------------------------------------
``method.sample_outputs(x, S)`` evaluates S posterior draws on **one** input, so one backward pass of
Σ_s CE_s gives only Σ_s g_s, never the separate g_s whose signs are averaged. Each sample therefore gets its own
copy of the input: ``xs = x.expand(S, *x.shape)`` (a leaf of shape ``[S, B, ...]``), sample s is evaluated on
``xs[s]`` only, and one backward pass of Σ_s CE_s(xs[s]) yields ``∂/∂xs[s] = g_s`` for all s at once. The method
declares how (its ``per_copy_outputs(xs)`` capability; the result is S independent posterior draws in each case):

* BbH / BbB (methods with ``sample(n)``): S weight sets are drawn once (without autograd: only input gradients
  are needed) and the network runs as ``vmap(functional_call)`` over (weights, input copies): cost of one
  S-sample ``sample_outputs`` call, i.e. a forward + backward on S·B examples.
* MC-Dropout and MNF (noise drawn independently per example: dropout masks, MNF's per-example z and local
  reparameterisation noise): the S copies are stacked into one batch of S·B examples and run through the
  network once, which is exactly what MC-Dropout's own ``sample_outputs`` does; same cost.
* Deep ensembles: member k on copy k (S = M); MAP: one sample.
* Any other method (the protocol's default): a loop of S calls ``sample_outputs(xs[s], 1)``, which relies
  on each call drawing a fresh sample; S forward/backward passes of B examples (no vectorisation).

Memory is that of a forward/backward pass on S·B examples plus the ``[S, B, ...]`` input gradient;
``chunk_size`` processes the samples in chunks of that many (fresh draws per chunk, the result is the same
in distribution). Networks with BatchNorm must be in ``eval()`` mode (as for any evaluation): in training mode
batch statistics would mix the samples (and the stacked S·B batch of MC-Dropout/MNF would change them).

No parameter of the method gets a ``.grad`` and no ``requires_grad`` flag is touched: every gradient is
``torch.autograd.grad`` with respect to the input only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..core.functional import chunk_sizes
from ..posteriors.protocol import Method

GRADIENTS = ("authors", "expectation")
PAPER_EPSILONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(9))
"""The authors' ε grid, ``np.linspace(0, 0.4, 9)`` (docs/protocol.md §6.5)."""
PAPER_NUM_IMAGES = 100
"""The authors attacked the first 100 test images (the paper says 1 000)."""


# ---------------------------------------------------------------------------------------------------- helpers
def _check(method: Method, x: Tensor, y: Tensor, epsilon: float, n_samples: int,
           clamp: tuple[float, float] | None) -> None:
    if not isinstance(method, Method):
        raise TypeError(f"method must be a bbh Method, got {type(method).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, Tensor) else ""))
    if x.dim() < 1 or y.shape[:1] != x.shape[:1]:
        raise ValueError(f"x and y need the same batch size, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not math.isfinite(float(epsilon)) or float(epsilon) < 0:
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")
    if isinstance(n_samples, bool) or int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if clamp is not None:
        if len(clamp) != 2 or not float(clamp[0]) <= float(clamp[1]):
            raise ValueError(f"clamp must be a pair (low, high) with low <= high, got {clamp!r}")


def _check_gradient(gradient: str) -> None:
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; expected one of {', '.join(map(repr, GRADIENTS))}")


def apply_clamp(x: Tensor, clamp: tuple[float, float] | None) -> Tensor:
    return x if clamp is None else x.clamp(float(clamp[0]), float(clamp[1]))


def _nll(method: Method, outputs: Tensor, y: Tensor) -> Tensor:
    """Per-sample mean NLL ``[S]`` of outputs ``[S, B, ...]``."""
    return -method.likelihood.log_prob(outputs, y).mean(dim=1)


def _draw_chunks(method: Method, n_samples: int, chunk_size: int | None) -> list[int]:
    """The draws per chunk: the method's fixed draws in one chunk (MAP 1, ensemble M), else ``n_samples``
    in chunks of ``chunk_size``."""
    if method.fixed_draws is not None:
        return [int(method.fixed_draws)]
    return chunk_sizes(n_samples, chunk_size)


def per_sample_input_gradients(method: Method, x: Tensor, y: Tensor, n_samples: int = 100, *,
                               chunk_size: int | None = None,
                               reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """g_s = ∇_x mean_b NLL(f_s(x_b), y_b) for S fresh posterior draws: ``[S, *x.shape]``.

    S is ``n_samples``, or the method's ``fixed_draws`` (MAP 1, deep ensembles M, one per member). With ``reduce`` (e.g.
    ``torch.sign``) the gradients are reduced chunk by chunk and only ``Σ_s reduce(g_s)`` (``[*x.shape]``)
    is returned, so that memory stays bounded by ``chunk_size``.
    """
    sizes = _draw_chunks(method, n_samples, chunk_size)
    parts: list[Tensor] = []
    acc: Tensor | None = None
    with torch.enable_grad():
        for size in sizes:
            xs = x.detach().unsqueeze(0).expand(size, *x.shape).clone().requires_grad_(True)
            loss = _nll(method, method.per_copy_outputs(xs), y).sum()
            (grad,) = torch.autograd.grad(loss, xs)
            if reduce is None:
                parts.append(grad)
            else:
                part = reduce(grad).sum(0)
                acc = part if acc is None else acc + part
    if reduce is not None:
        return acc  # type: ignore[return-value]  # at least one chunk ran
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def expected_loss_gradient(method: Method, x: Tensor, y: Tensor, n_samples: int = 100, *,
                           chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """(∇_x L, L) with L = (1/S) Σ_s mean_b NLL(f_s(x_b), y_b), the Monte Carlo expected loss over S fresh
    posterior draws (``method.sample_outputs``; S = 1 for MAP, M for ensembles), in chunks of ``chunk_size``."""
    sizes = _draw_chunks(method, n_samples, chunk_size)
    total = sum(sizes)
    grad = torch.zeros_like(x)
    value = x.new_zeros(())
    with torch.enable_grad():
        for size in sizes:
            leaf = x.detach().clone().requires_grad_(True)
            outputs = method.sample_outputs(leaf, size)
            loss = _nll(method, outputs, y).sum() / total
            (g,) = torch.autograd.grad(loss, leaf)
            grad = grad + g
            value = value + loss.detach()
    return grad, value


# ---------------------------------------------------------------------------------------------------- attacks
def fgsm(method: Method, x: Tensor, y: Tensor, epsilon: float, *, n_samples: int = 100,
         gradient: str = "authors", clamp: tuple[float, float] | None = None,
         chunk_size: int | None = None) -> Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015) against a posterior; returns the detached x_adv.

    Args:
        method: any bbh method (its train/eval mode is left as it is; put BatchNorm networks in eval mode).
        x: inputs ``[B, ...]`` in the units ε is measured in (MNIST: pixels in [0, 1]).
        y: targets ``[B, ...]`` (class labels for the categorical likelihood).
        epsilon: the L∞ step size (authors' grid :data:`PAPER_EPSILONS`).
        n_samples: S, posterior draws (authors: 100); MAP always uses 1, an ensemble its M members.
        gradient: ``"authors"`` — x + ε · mean_s sign(g_s), the average of the per-sample FGSM images
            (docs/protocol.md §6.5); ``"expectation"`` — x + ε · sign(∇_x mean_s CE_s), FGSM on the expected
            loss (mean of the per-sample cross-entropies). See the module docstring for the cost.
        clamp: optional ``(low, high)`` applied after the step (the authors: none).
        chunk_size: evaluate at most this many posterior samples at once.
    """
    _check(method, x, y, epsilon, n_samples, clamp)
    _check_gradient(gradient)
    x = x.detach()
    if float(epsilon) == 0.0:
        return apply_clamp(x.clone(), clamp)
    direction = fgsm_direction(method, x, y, n_samples=n_samples, gradient=gradient, chunk_size=chunk_size)
    return apply_clamp(x + float(epsilon) * direction, clamp).detach()


def fgsm_direction(method: Method, x: Tensor, y: Tensor, *, n_samples: int = 100, gradient: str = "authors",
                   chunk_size: int | None = None) -> Tensor:
    """FGSM's step direction d at x, so that ``fgsm(..., ε) = clamp(x + ε d)`` for every ε: ``mean_s sign(g_s)``
    (``"authors"``) or ``sign(∇_x mean_s CE_s)`` (``"expectation"``). It does not depend on ε, so a whole FGSM
    curve needs one gradient computation (:func:`bbh.evaluate` computes it once per curve)."""
    _check_gradient(gradient)
    x = x.detach()
    if gradient == "authors":
        total = sum(_draw_chunks(method, n_samples, chunk_size))
        return per_sample_input_gradients(method, x, y, n_samples, chunk_size=chunk_size,
                                          reduce=torch.sign) / total
    g, _ = expected_loss_gradient(method, x, y, n_samples, chunk_size=chunk_size)
    return g.sign()


def pgd(method: Method, x: Tensor, y: Tensor, epsilon: float, *, steps: int = 10, step_size: float | None = None,
        n_samples: int = 10, clamp: tuple[float, float] | None = None, random_start: bool = True,
        generator: torch.Generator | None = None, chunk_size: int | None = None) -> Tensor:
    """L∞ projected gradient descent (Madry et al. 2018) on the expected loss; returns the detached last iterate.

    x_0 = x (+ U(-ε, ε) noise with ``random_start``), x_{t+1} = Π(x_t + α · sign(∇_x L(x_t))), where
    L = (1/S) Σ_s mean_b CE(f_s(x_b), y_b) with S fresh posterior draws at every step (expectation over
    transformation) and Π projects onto the ε-ball around x and then onto ``clamp``.

    Args:
        method, x, y, epsilon, clamp, chunk_size: as :func:`fgsm`.
        steps: number of gradient steps.
        step_size: α (default 2.5 ε / steps, Madry et al.).
        n_samples: posterior draws per step (MAP: 1, ensemble: M).
        random_start: start from a uniform point in the ε-ball.
        generator: random generator of the start (on x's device).
    """
    _check(method, x, y, epsilon, n_samples, clamp)
    if isinstance(steps, bool) or int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    eps = float(epsilon)
    alpha = 2.5 * eps / int(steps) if step_size is None else float(step_size)
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"step_size must be a finite number >= 0, got {step_size}")
    x = x.detach()
    if eps == 0.0:
        return apply_clamp(x.clone(), clamp)
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = apply_clamp(x + eps * (2 * noise - 1), clamp)
    for _ in range(int(steps)):
        g, _ = expected_loss_gradient(method, x_adv, y, n_samples, chunk_size=chunk_size)
        x_adv = x_adv + alpha * g.sign()
        x_adv = apply_clamp(x + (x_adv - x).clamp(-eps, eps), clamp)
    return x_adv.detach()


__all__ = ["GRADIENTS", "PAPER_EPSILONS", "PAPER_NUM_IMAGES", "expected_loss_gradient", "fgsm",
           "per_sample_input_gradients", "pgd"]

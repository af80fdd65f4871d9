"""Bayes by Backprop (Blundell et al., ICML 2015): a mean-field Gaussian over the network's weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.elbo import LossTerms, elbo
from ..core.functional import forward_with
from ..core.likelihoods import Likelihood
from ..core.options import BBBEstimator, check_float, check_int, choices, parse_option
from ..core.priors import Prior
from ..kl import KLEstimator, gaussian_kl, make_kl_estimator
from .factory import register
from .protocol import ParamFilter, check_finite, select_parameters
from .sampled import WeightSampler

ESTIMATORS = choices(BBBEstimator)
LOCAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@register("bbb")
class BayesByBackprop(WeightSampler):
    """q(w) = Π_i N(w_i; mu_i, sigma_i^2) over every selected weight and bias (docs/protocol.md §4.5).

    loss = mean NLL(f(x; w)) + kl_weight * KL(q || p) / N,   w = mu + sigma * eps,
    KL = Σ_i [ log(s / sigma_i) + (sigma_i^2 + mu_i^2) / (2 s^2) - 1/2 ]   (analytic, prior N(0, s^2)).

    The variance is parametrised as the authors did, by its log: ``log_var`` ~ TruncN(init_log_var, 0.05)
    (authors: -9 on MNIST, sigma ≈ 0.011; -30 on CIFAR). The means start at the model's own initial values.

    Gradient estimators (``estimator``):

    * ``"shared"`` (the authors'): one weight sample per forward pass, shared by the whole minibatch.
    * ``"local"``: the local reparameterisation trick (Kingma et al. 2015) for Linear/Conv layers: the
      pre-activations are sampled instead, mean f(x; mu) and variance f(x^2; sigma^2) + sigma_b^2 per
      example, which has lower variance. Every selected parameter must then be a weight or bias of a
      Linear/Conv layer. Prediction (``sample_outputs``) always draws whole weight samples.

    ``kl`` may also be a sample-based estimator (``"nn-per-weight"``, ``"nn-full"`` or a
    :class:`~bbh.kl.KLEstimator` such as :class:`~bbh.kl_adversarial.AdversarialKL`, Table 5): it then
    sees ``num_kl_samples`` weight samples per step, the first of which also drives the likelihood.

    Args:
        model: the network.
        likelihood: ``"categorical"`` or a likelihood object.
        prior: a prior object or the scale s of N(0, s^2) (authors: 1).
        params: which parameters are random (default: Linear/Conv weights and biases).
        init_log_var: mean of the initial log-variances.
        estimator: ``"shared"`` or ``"local"``.
        kl: ``"analytic"`` (needs a Normal prior) or a sample-based estimator.
        num_kl_samples: weight samples per step for a sample-based KL (authors: 5).
        kl_options: keyword options of the adversarial estimator (``{"pretrain_steps": 100, "max_weights": None}``,
            :class:`~bbh.kl.adversarial.AdversarialKL`); refused for the others.
    """

    default_lr = {"adam": 1e-3, "rmsprop-tf": 1e-4}

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical", prior: Prior | float = 1.0,
                 params: ParamFilter = None, init_log_var: float = -9.0, estimator: str = "shared",
                 kl: str | KLEstimator = "analytic", num_kl_samples: int = 5,
                 kl_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(model, likelihood, prior)
        estimator = parse_option(BBBEstimator, estimator, "estimator").value
        init_log_var = check_float("init_log_var", init_log_var)
        num_kl_samples = check_int("num_kl_samples", num_kl_samples, 1 if kl == "analytic" else 2)
        self.param_names = select_parameters(model, params)
        named = dict(model.named_parameters())
        self.mu = nn.ParameterList([nn.Parameter(named[n].detach().clone()) for n in self.param_names])
        log_vars = []
        for n in self.param_names:
            t = torch.empty_like(named[n])
            nn.init.trunc_normal_(t, mean=init_log_var, std=0.05, a=init_log_var - 0.1, b=init_log_var + 0.1)
            log_vars.append(nn.Parameter(t))
        self.log_var = nn.ParameterList(log_vars)
        for n in self.param_names:
            named[n].requires_grad_(False)
        self.estimator = estimator
        if kl == "analytic":
            if kl_options:
                raise ValueError(f"kl_options {dict(kl_options)} apply to kl='adversarial' only, not 'analytic'")
            if not hasattr(self.prior, "scale"):
                raise ValueError("kl='analytic' needs a Normal prior with a scale; use a sample-based kl "
                                 "(e.g. 'nn-per-weight') for other priors")
            self.kl_estimator: KLEstimator | None = None
        else:
            self.kl_estimator = make_kl_estimator(kl, options=kl_options)
            if self.kl_estimator.uses_gaussian_layer:
                raise ValueError(f"kl={kl!r} is BbH's semi-implicit bound; Bayes by Backprop's Gaussian has an exact "
                                 f"KL: use kl='analytic'")
        self.num_kl_samples = num_kl_samples
        self._last_samples: dict[str, Tensor] | None = None
        self._local_hooks: list = []
        self._local_active = False
        if estimator == "local":
            self._install_local_hooks(model)

    # ---- posterior --------------------------------------------------------------------------------------
    def std(self) -> list[Tensor]:
        """sigma_i = exp(log_var_i / 2) per parameter tensor."""
        return [torch.exp(0.5 * lv) for lv in self.log_var]

    def sample(self, n: int) -> dict[str, Tensor]:
        """n weight samples ``{name: Tensor[n, *shape]}``, w = mu + sigma * eps."""
        return {name: mu + sd * torch.randn((int(n), *mu.shape), device=mu.device, dtype=mu.dtype)
                for name, mu, sd in zip(self.param_names, self.mu, self.std())}

    def analytic_kl(self) -> Tensor:
        """Σ over all parameters of KL(N(mu, sigma^2) || N(0, s^2)) (:func:`bbh.kl.gaussian_kl`)."""
        scale = float(self.prior.scale)  # type: ignore[attr-defined]
        return sum(gaussian_kl(mu, sd, scale) for mu, sd in zip(self.mu, self.std()))

    # ---- local reparameterisation ---------------------------------------------------------------------
    def _install_local_hooks(self, model: nn.Module) -> None:
        index = {n: i for i, n in enumerate(self.param_names)}
        for mod_name, mod in model.named_modules():
            own = [f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False)]
            mine = [n for n in own if n in index]
            if not mine:
                continue
            if not isinstance(mod, LOCAL_LAYERS) or len(mine) != len(own):
                raise ValueError(f"estimator='local' needs every random parameter to be the weight or bias of a "
                                 f"Linear/Conv layer with all its parameters random; {mod_name or 'the model'} "
                                 f"({type(mod).__name__}) does not qualify; use estimator='shared'")
            w_i = index[f"{mod_name}.weight" if mod_name else "weight"]
            b_name = f"{mod_name}.bias" if mod_name else "bias"
            b_i = index.get(b_name) if mod.bias is not None else None
            self._local_hooks.append(mod.register_forward_hook(self._local_noise_hook(w_i, b_i)))

    def _local_noise_hook(self, w_i: int, b_i: int | None):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            if not self._local_active:
                return output
            x = inputs[0]
            w_var = torch.exp(self.log_var[w_i])
            if isinstance(module, nn.Linear):
                var = F.linear(x * x, w_var)
            else:
                var = module._conv_forward(x * x, w_var, None)
            if b_i is not None:
                b_var = torch.exp(self.log_var[b_i])
                var = var + (b_var if isinstance(module, nn.Linear) else b_var.view(-1, *([1] * (var.dim() - 2))))
            return output + torch.sqrt(var + 1e-16) * torch.randn_like(output)

        return hook

    # ---- the method protocol ----------------------------------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        samples = None
        if self.kl_estimator is not None:
            samples = self.sample(self.num_kl_samples)
        if self.estimator == "local":
            self._local_active = True
            try:
                out = forward_with(self.model, dict(zip(self.param_names, self.mu)), x)
            finally:
                self._local_active = False
        else:
            one = {k: v[0] for k, v in samples.items()} if samples is not None else \
                {k: v[0] for k, v in self.sample(1).items()}
            out = forward_with(self.model, one, x)
        nll = self.mean_nll(out, y)
        if self.kl_estimator is None:
            kl = self.analytic_kl()
        else:
            kl = self.kl_estimator(samples, self.prior)
            if self.kl_estimator.trainable:
                self._last_samples = {k: v.detach() for k, v in samples.items()}
        check_finite("the KL", kl.detach())
        return elbo(nll, kl, num_data=num_data, kl_weight=kl_weight, outputs=out)

    def extra_repr(self) -> str:
        return f"params={len(self.param_names)} tensors, estimator={self.estimator!r}"


__all__ = ["BayesByBackprop"]

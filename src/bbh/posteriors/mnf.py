"""Multiplicative Normalizing Flows (MNF; Louizos & Welling, ICML 2017) as a baseline for any ``nn.Module``.

Every selected ``nn.Linear`` / ``nn.Conv2d`` of the model is replaced **in place** (module surgery on its
parent) by an MNF layer with the posterior

    q(W) = ∫ q(W | z) q(z) dz,   q(W | z) = Π_ij N(W_ij; z_j μ_ij, σ_ij^2)   (dense: z multiplies input j,
                                                                             conv: z multiplies output channel)

where z = f_K(...f_1(z_0)), z_0 ~ q_0(z) = N(m_0, diag(e^{v_0})), and f_k are masked RealNVP steps. The KL of
each layer uses the auxiliary inverse model r(z | W) of the MNF paper (Eq. 11 there), estimated with one z:

    KL_layer = KL(q(W | z) || p(W)) + KL(q(b) || p(b)) + log q(z) - log r(z | W)

Every detail follows the authors' TensorFlow port of the AMLab ``MNF_VBNN`` code (``layers.MNFDenseLayer``,
``layers.MNFConvLayer``, ``base_layers.MaskedNVPFlow/PlanarFlow``; docs/protocol.md §4.4), namely:

* parameters: ``weight_mu`` (initialised from the replaced layer's weight), ``weight_log_std`` ~ TruncN(-9, 0.05)
  (the authors' ``w_log_scale_sq``, used as a log-*std*), ``bias_mu`` (the replaced layer's bias),
  ``bias_log_var`` ~ TruncN(-9, 0.05) (a log-*variance*), ``q0_mean`` ~ TruncN(z_init, 0.05),
  ``q0_log_var`` ~ TruncN(log 0.1, 1e-6), and the r-model vectors ``r_apvar``, ``r_rsr``, ``r_rsri`` ~ TruncN(0, 0.05);
* prior N(0, e^{pvar}) for weights and biases with a fixed pvar = 1.0 (a buffer, not trained): N(0, 2.72), not
  the N(0, 1) of the other methods (docs/protocol.md §8.9);
* forward with the local reparameterisation trick and one z per example, the std clipped at ``thres_var``:
  dense ``mean = (x ⊙ z) μ^T + b``, ``var = x^2 σ^2^T + σ_b^2``; conv ``mean = (conv(x, μ) + b) ⊙ z``,
  ``var = conv(x^2, σ^2) + σ_b^2``; ``out = mean + sqrt(var) ε``, with σ = clip(e^{log_std}, 0, thres) and
  σ_b^2 = clip(e^{bias_log_var}, 0, thres^2). The KL uses the unclipped σ, as the authors;
* log q(z) = -Σ ½ (log 2π + v_0 + 1) - log|det ∂z/∂z_0| (the AMLab code replaces ε_0^2 by its mean 1);
* r(z | W): a = tanh(apvar^T M̃ + sqrt(apvar^2 · Ṽ) ε) over the output units (dense; the conv version has no tanh
  and adds the bias projection), mean_r = rsr · mean(a), log-precision = rsri · mean(a), the Gaussian
  density evaluated after an r-flow of masked RealNVP steps (hidden 100), plus that flow's log-determinant.
  M̃ = z-scaled weight means, Ṽ = σ^2.

Dense layers with ``in_features == 1`` (the toy's first layer) use planar flows for q and r, as the authors.

Deviations, all documented at their option: ``kl_layers="all"`` (default) puts every MNF layer's KL into the
loss, whereas the authors' code only added the **dense** layers' KL (``kl_layers="dense"``; conv layers were
trained by the likelihood alone, docs/protocol.md §4.4 "Important quirk"); ``z_init`` default 1.0 (authors 0.0,
see :class:`MNF`); a floor of 1e-16 on the output variance before the square root (a layer without bias fed an
all-zero input would otherwise give a 0/0 gradient).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.elbo import LossTerms, elbo
from ..core.functional import chunk_sizes
from ..core.likelihoods import Likelihood
from ..core.options import MNFKLLayers, check_float, check_int, choices, parse_option
from .factory import register
from .protocol import WEIGHT_LAYERS, Method, check_finite

_LOG_2PI = math.log(2 * math.pi)
_VAR_FLOOR = 1e-16

LayerFilter = Callable[[str, nn.Module], bool] | Iterable[str] | None
KL_LAYERS = choices(MNFKLLayers)


def _trunc_normal_(t: Tensor, mean: float, std: float) -> Tensor:
    """TF's ``truncated_normal_initializer(mean, std)``: N(mean, std^2) cut at ±2 std."""
    return nn.init.trunc_normal_(t, mean, std, mean - 2 * std, mean + 2 * std)


def _variance_scaling_(t: Tensor, fan_in: int) -> Tensor:
    """TF 1.x ``variance_scaling_initializer()``: truncated normal with std sqrt(1 / fan_in)."""
    return _trunc_normal_(t, 0.0, math.sqrt(1.0 / fan_in))


# ---------------------------------------------------------------------------------------------------- flows
class MaskedRealNVP(nn.Module):
    """``n_flows`` masked RealNVP steps on z [B, D] (MNF paper Eq. 6; AMLab ``MaskedNVPFlow``, no extra layers).

    One step with a mask m ~ Bernoulli(0.5)^{B x D} drawn at every call:

        h = tanh((m ⊙ z) W_h + b_h),  μ = h W_μ + b_μ,  g = sigmoid(h W_g + b_g)  (b_g initialised to 2)
        z <- (1 - m) ⊙ (z ⊙ g + (1 - g) ⊙ μ) + m ⊙ z,     log|det| += Σ_d (1 - m_d) log g_d

    The masked coordinates pass unchanged and condition the others, so the Jacobian is triangular.
    """

    def __init__(self, dim: int, hidden: int, n_flows: int = 2) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or n_flows < 1:
            raise ValueError(f"MaskedRealNVP needs dim, hidden, n_flows >= 1, got {dim}, {hidden}, {n_flows}")
        self.dim = dim
        self.hidden_layers = nn.ModuleList([nn.Linear(dim, hidden) for _ in range(n_flows)])
        self.mean_layers = nn.ModuleList([nn.Linear(hidden, dim) for _ in range(n_flows)])
        self.gate_layers = nn.ModuleList([nn.Linear(hidden, dim) for _ in range(n_flows)])
        with torch.no_grad():
            for h, m, g in zip(self.hidden_layers, self.mean_layers, self.gate_layers):
                _variance_scaling_(h.weight, dim)
                _trunc_normal_(h.bias, 0.0, 0.05)
                _variance_scaling_(m.weight, hidden)
                m.bias.zero_()
                _variance_scaling_(g.weight, hidden)
                g.bias.fill_(2.0)

    def forward(self, z: Tensor, masks: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Transform z [B, D]; returns (z', log|det ∂z'/∂z| [B]). ``masks`` fixes the masks (for tests)."""
        logdet = z.new_zeros(z.shape[0])
        for k, (h_layer, m_layer, g_layer) in enumerate(zip(self.hidden_layers, self.mean_layers, self.gate_layers)):
            mask = (torch.rand_like(z) < 0.5).to(z.dtype) if masks is None else masks[k].to(z)
            h = torch.tanh(h_layer(mask * z))
            mu, gate_logit = m_layer(h), g_layer(h)
            gate = torch.sigmoid(gate_logit)
            logdet = logdet + ((1 - mask) * F.logsigmoid(gate_logit)).sum(-1)
            z = (1 - mask) * (z * gate + (1 - gate) * mu) + mask * z
        return z, logdet


class PlanarFlow(nn.Module):
    """``n_flows`` planar flows (Rezende & Mohamed 2015) on z [B, D]; the MNF q- and r-flows when D = 1.

        z <- z + û tanh(w^T z + b),   log|det| += log|1 + û^T w (1 - tanh^2(w^T z + b))|

    with û = u + (softplus(w^T u) - 1 - w^T u) w / ||w||^2, which keeps the map invertible (w^T û >= -1).
    Init as the AMLab code: w variance-scaling, u ~ TruncN(0, 0.05), b = 0.
    """

    def __init__(self, dim: int, n_flows: int = 2) -> None:
        super().__init__()
        if dim < 1 or n_flows < 1:
            raise ValueError(f"PlanarFlow needs dim, n_flows >= 1, got {dim}, {n_flows}")
        self.w = nn.Parameter(_variance_scaling_(torch.empty(n_flows, dim), dim))
        self.u = nn.Parameter(_trunc_normal_(torch.empty(n_flows, dim), 0.0, 0.05))
        self.b = nn.Parameter(torch.zeros(n_flows))

    def forward(self, z: Tensor, masks: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Transform z [B, D]; returns (z', log|det ∂z'/∂z| [B]). ``masks`` is ignored (no masks)."""
        logdet = z.new_zeros(z.shape[0])
        for w, u, b in zip(self.w, self.u, self.b):
            uw = (u * w).sum()
            u_hat = u + (F.softplus(uw) - 1 - uw) * w / (w * w).sum()
            act = torch.tanh(z @ w + b)  # [B]
            logdet = logdet + torch.log((1 + (1 - act**2) * (w * u_hat).sum()).abs())
            z = z + act.unsqueeze(-1) * u_hat
        return z, logdet


# ---------------------------------------------------------------------------------------------------- layers
class MNFLayer(nn.Module):
    """What MNF dense and conv layers share: q(z) with its flow, the r-model, the prior and the KL pieces.

    Args:
        z_dim: dimension of z (dense: in_features, conv: out_channels).
        prior_dim: rows of the prior log-variance (dense: in_features, conv: in_channels·kh·kw).
        has_bias: whether the layer has a bias.
        thres_var: the clip on the forward std (MNIST 0.5, CIFAR 0.3).
        prior_log_var: pvar of the N(0, e^{pvar}) prior (fixed).
        init_log_std: mean of the TruncN(·, 0.05) init of ``weight_log_std`` and ``bias_log_var`` (authors: -9).
        z_init: mean of the TruncN(·, 0.05) init of ``q0_mean``.
        n_flows, q_hidden, r_hidden: the q- and r-flows (2 steps, hidden 50 and 100).
        planar: planar flows instead of masked RealNVP (dense layers with one input).
    """

    def __init__(self, z_dim: int, prior_dim: int, has_bias: bool, *, thres_var: float, prior_log_var: float,
                 init_log_std: float, z_init: float, n_flows: int, q_hidden: int, r_hidden: int,
                 planar: bool) -> None:
        super().__init__()
        self.thres_var = float(thres_var)
        self.has_bias = bool(has_bias)
        self.init_log_std = float(init_log_std)
        self.q0_mean = nn.Parameter(_trunc_normal_(torch.empty(z_dim), z_init, 0.05))
        self.q0_log_var = nn.Parameter(_trunc_normal_(torch.empty(z_dim), math.log(0.1), 1e-6))
        self.r_apvar = nn.Parameter(_trunc_normal_(torch.empty(z_dim), 0.0, 0.05))
        self.r_rsr = nn.Parameter(_trunc_normal_(torch.empty(z_dim), 0.0, 0.05))
        self.r_rsri = nn.Parameter(_trunc_normal_(torch.empty(z_dim), 0.0, 0.05))
        self.register_buffer("prior_log_var", torch.full((prior_dim,), float(prior_log_var)))
        self.register_buffer("prior_log_var_bias", torch.full((), float(prior_log_var)))
        if planar:
            self.flow_q: nn.Module = PlanarFlow(z_dim, n_flows)
            self.flow_r: nn.Module = PlanarFlow(z_dim, n_flows)
        else:
            self.flow_q = MaskedRealNVP(z_dim, q_hidden, n_flows)
            self.flow_r = MaskedRealNVP(z_dim, r_hidden, n_flows)

    def _init_variational(self, weight: Tensor, bias: Tensor | None) -> None:
        """Means from the replaced layer, log-std / log-var ~ TruncN(init_log_std, 0.05)."""
        self.weight_mu = nn.Parameter(weight.detach().clone())
        self.weight_log_std = nn.Parameter(_trunc_normal_(torch.empty_like(self.weight_mu), self.init_log_std, 0.05))
        if bias is not None:
            self.bias_mu = nn.Parameter(bias.detach().clone())
            self.bias_log_var = nn.Parameter(_trunc_normal_(torch.empty_like(self.bias_mu), self.init_log_std, 0.05))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_log_var", None)

    def sample_z(self, n: int) -> tuple[Tensor, Tensor]:
        """n draws z = f(z_0), z_0 ~ N(q0_mean, e^{q0_log_var}): (z [n, D], log|det ∂z/∂z_0| [n])."""
        eps = torch.randn(n, self.q0_mean.shape[0], device=self.q0_mean.device, dtype=self.q0_mean.dtype)
        return self.flow_q(self.q0_mean + torch.exp(0.5 * self.q0_log_var) * eps)

    def clipped_std(self) -> Tensor:
        """Forward std of the weights: clip(e^{weight_log_std}, 0, thres_var)."""
        return torch.exp(self.weight_log_std).clamp(max=self.thres_var)

    def clipped_bias_var(self) -> Tensor:
        """Forward variance of the bias: clip(e^{bias_log_var}, 0, thres_var^2)."""
        return torch.exp(self.bias_log_var).clamp(max=self.thres_var**2)

    def _log_q(self, logdet: Tensor) -> Tensor:
        """log q(z) = -Σ ½ (log 2π + v_0 + 1) - log|det| (the AMLab approximation with ε_0^2 -> 1)."""
        return -0.5 * (_LOG_2PI + self.q0_log_var + 1).sum() - logdet

    def _log_r(self, z: Tensor, a_mean: Tensor) -> Tensor:
        """log r(z | W) = log N(f_r(z); rsr·ā, e^{-rsri·ā}) + log|det ∂f_r/∂z| for one z [D]."""
        zr, logdet = self.flow_r(z.unsqueeze(0))
        mean, log_prec = self.r_rsr * a_mean, self.r_rsri * a_mean
        return logdet[0] + (-0.5 * torch.exp(log_prec) * (zr[0] - mean) ** 2 - 0.5 * _LOG_2PI + 0.5 * log_prec).sum()

    def _gauss_kl(self, m_tilde: Tensor, log_std: Tensor, prior_log_var: Tensor) -> Tensor:
        """Σ KL(N(m̃, σ^2) || N(0, e^{pvar})) = Σ ½ pvar - log σ + (σ^2 + m̃^2) / (2 e^{pvar}) - ½."""
        return (0.5 * prior_log_var - log_std + (torch.exp(2 * log_std) + m_tilde**2) / (2 * torch.exp(prior_log_var))
                - 0.5).sum()

    def _bias_kl(self, mean: Tensor) -> Tensor:
        """KL of the bias, N(mean, e^{bias_log_var}) against N(0, e^{pvar_bias})."""
        return self._gauss_kl(mean, 0.5 * self.bias_log_var, self.prior_log_var_bias)

    def kl(self) -> Tensor:
        """KL(q(W|z) || p(W)) + KL_bias + log q(z) - log r(z | W) with one fresh z."""
        raise NotImplementedError

    @staticmethod
    def _stochastic(mean: Tensor, var: Tensor) -> Tensor:
        return mean + torch.sqrt(var.clamp(min=_VAR_FLOOR)) * torch.randn_like(mean)


class MNFLinear(MNFLayer):
    """MNF dense layer (authors' ``MNFDenseLayer``): z [B, in_features] multiplies the inputs.

    forward: ``mean = (x ⊙ z) μ^T + b``, ``var = x^2 (σ^2)^T + σ_b^2``, ``out = mean + sqrt(var) ε``.
    Inputs ``[B, ..., in]`` take one z per leading index b.
    """

    def __init__(self, in_features: int, out_features: int, weight: Tensor, bias: Tensor | None,
                 **options: Any) -> None:
        super().__init__(in_features, in_features, bias is not None, planar=in_features == 1, **options)
        self.in_features, self.out_features = in_features, out_features
        self._init_variational(weight, bias)

    @classmethod
    def from_linear(cls, layer: nn.Linear, **options: Any) -> MNFLinear:
        """An MNF layer initialised from ``layer``'s weight and bias, on its device and dtype."""
        new = cls(layer.in_features, layer.out_features, layer.weight, layer.bias, **options)
        return new.to(device=layer.weight.device, dtype=layer.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0] if x.dim() > 1 else 1
        z, _ = self.sample_z(batch)
        z = z.view(batch, *([1] * (x.dim() - 2)), -1) if x.dim() > 1 else z[0]
        mean = F.linear(x * z, self.weight_mu, self.bias_mu)
        var = F.linear(x * x, self.clipped_std() ** 2)
        if self.has_bias:
            var = var + self.clipped_bias_var()
        return self._stochastic(mean, var)

    def kl(self) -> Tensor:
        z, logdet = self.sample_z(1)
        z = z[0]
        m_tilde = self.weight_mu * z  # [out, in]: column j scaled by z_j
        kl_w = self._gauss_kl(m_tilde, self.weight_log_std, self.prior_log_var)
        kl_b = self._bias_kl(self.bias_mu) if self.has_bias else m_tilde.new_zeros(())
        # r(z | W): project W's local-reparameterised sample on apvar, per output unit
        v_tilde = torch.exp(2 * self.weight_log_std)
        mw, vw = m_tilde @ self.r_apvar, v_tilde @ self.r_apvar**2  # [out]
        a = torch.tanh(mw + torch.sqrt(vw) * torch.randn_like(mw))
        return kl_w + kl_b + self._log_q(logdet[0]) - self._log_r(z, a.mean())

    def sample_weight(self) -> Tensor:
        """One weight sample [out, in]: z-scaled mean + clipped std · ε (authors' ``get_weight``)."""
        z, _ = self.sample_z(1)
        return self.weight_mu * z + self.clipped_std() * torch.randn_like(self.weight_mu)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, "
                f"thres_var={self.thres_var}")


class MNFConv2d(MNFLayer):
    """MNF conv layer (authors' ``MNFConvLayer``): z [B, out_channels] multiplies the output channels.

    forward: ``mean = (conv(x, μ) + b) ⊙ z``, ``var = conv(x^2, σ^2) + σ_b^2``, ``out = mean + sqrt(var) ε``
    (z multiplies the bias as well, as in the authors' code; the KL's bias term uses b ⊙ z accordingly).
    Keeps stride, padding (also ``"same"``/``"valid"``) and dilation of the replaced layer; groups = 1 and
    zero padding only.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], weight: Tensor,
                 bias: Tensor | None, stride: tuple[int, int] = (1, 1), padding: tuple[int, int] | str = (0, 0),
                 dilation: tuple[int, int] = (1, 1), **options: Any) -> None:
        super().__init__(out_channels, in_channels * kernel_size[0] * kernel_size[1], bias is not None,
                         planar=False, **options)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, tuple(kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self._init_variational(weight, bias)

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, **options: Any) -> MNFConv2d:
        """An MNF layer initialised from ``layer`` (groups = 1, zero padding), on its device and dtype."""
        if layer.groups != 1:
            raise ValueError(f"MNF supports Conv2d with groups=1 only, got groups={layer.groups}")
        if layer.padding_mode != "zeros":
            raise ValueError(f"MNF supports Conv2d with padding_mode='zeros' only, got {layer.padding_mode!r}")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.weight, layer.bias,
                  stride=layer.stride, padding=layer.padding, dilation=layer.dilation, **options)
        return new.to(device=layer.weight.device, dtype=layer.weight.dtype)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        z, _ = self.sample_z(x.shape[0])
        mean = self._conv(x, self.weight_mu, self.bias_mu) * z[:, :, None, None]
        var = self._conv(x * x, self.clipped_std() ** 2)
        if self.has_bias:
            var = var + self.clipped_bias_var()[:, None, None]
        out = self._stochastic(mean, var)
        return out[0] if unbatched else out

    def kl(self) -> Tensor:
        z, logdet = self.sample_z(1)
        z = z[0]
        mu = self.weight_mu.reshape(self.out_channels, -1).t()  # [in·kh·kw, out]
        log_std = self.weight_log_std.reshape(self.out_channels, -1).t()
        m_tilde = mu * z
        kl_w = self._gauss_kl(m_tilde, log_std, self.prior_log_var.unsqueeze(1))
        v_tilde = torch.exp(2 * log_std)
        mw, vw = m_tilde @ self.r_apvar, v_tilde @ self.r_apvar**2  # [in·kh·kw]
        a = mw + torch.sqrt(vw) * torch.randn_like(mw)  # no tanh in the conv version (authors)
        if self.has_bias:
            m_bias = self.bias_mu * z
            kl_b = self._bias_kl(m_bias)
            mb = (m_bias * self.r_apvar).sum()
            vb = (torch.exp(self.bias_log_var) * self.r_apvar**2).sum()
            a = a + mb + torch.sqrt(vb) * torch.randn((), device=a.device, dtype=a.dtype)
        else:
            kl_b = m_tilde.new_zeros(())
        return kl_w + kl_b + self._log_q(logdet[0]) - self._log_r(z, a.mean())

    def sample_weight(self) -> Tensor:
        """One kernel sample [out, in, kh, kw]: z-scaled mean + clipped std · ε (authors' ``get_weight``)."""
        z, _ = self.sample_z(1)
        return self.weight_mu * z[0, :, None, None, None] + self.clipped_std() * torch.randn_like(self.weight_mu)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.has_bias}, thres_var={self.thres_var}")


# ---------------------------------------------------------------------------------------------------- surgery
def _select_layers(model: nn.Module, layers: LayerFilter) -> list[str]:
    """Names of the Linear/Conv2d modules to replace; errors name what is unsupported or missing."""
    weight_layers = {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    if layers is None:
        chosen = list(weight_layers)
    elif callable(layers):
        chosen = [n for n, m in weight_layers.items() if layers(n, m)]
    else:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        chosen = []
        for pattern in patterns:
            hits = [n for n in weight_layers if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ValueError(f"layer {pattern!r} matches no Linear/Conv layer of {type(model).__name__}; "
                                 f"its weight layers are: {', '.join(weight_layers) or 'none'}")
            chosen.extend(h for h in hits if h not in chosen)
        chosen.sort(key=list(weight_layers).index)
    for name in chosen:
        mod = weight_layers[name]
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"MNF supports nn.Linear and nn.Conv2d layers only; {name!r} is a "
                             f"{type(mod).__name__} (exclude it with layers=...)")
        if name == "":
            raise ValueError(f"the model itself is a {type(mod).__name__}; wrap it (nn.Sequential(layer)) so that "
                             "MNF can replace it inside its parent")
    if not chosen:
        raise ValueError(f"no nn.Linear / nn.Conv2d layers of {type(model).__name__} selected for MNF")
    return chosen


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Point every reference to ``old`` in the module tree (shared layers included) at ``new``."""
    for parent in model.modules():
        for attr, child in list(parent._modules.items()):
            if child is old:
                setattr(parent, attr, new)


# ---------------------------------------------------------------------------------------------------- method
@register("mnf")
class MNF(Method):
    """Multiplicative Normalizing Flows (Louizos & Welling 2017) for any ``nn.Module`` (docs/protocol.md §4.4).

    **The model is modified in place**: each selected ``nn.Linear`` becomes an :class:`MNFLinear` and each
    ``nn.Conv2d`` an :class:`MNFConv2d` (weights and biases initialised from the replaced layer); other modules
    (BatchNorm, ...) stay point estimates trained through the likelihood. The loss is the per-datum negative ELBO
    ``mean NLL + kl_weight · Σ_layers KL_layer / N`` (:func:`bbh.elbo.elbo`, one forward pass with per-example
    z and local reparameterisation); predictions are stochastic passes, also in ``eval()`` mode.

    Args:
        model: the network (modified in place).
        likelihood: ``"categorical"`` or a likelihood object.
        layers: which layers become MNF layers: None (every Linear and Conv2d; any other conv type raises),
            names / glob patterns of modules (``"fc*"``), or a predicate ``f(name, module) -> bool``.
        thres_var: clip on the forward std of the weights (the bias variance is clipped at its square);
            authors: 0.5 on MNIST and the toy, 0.3 on CIFAR. Must be > 0.
        prior_log_var: pvar of the fixed N(0, e^{pvar}) prior of weights and biases. The authors' 1.0 makes it
            N(0, 2.72), **not** N(0, 1) (docs/protocol.md §8.9); pass 0.0 for a standard normal.
        init_log_std: initial log-std of the weights and log-variance of the biases (authors: -9).
        z_init: initial mean of q_0(z). The authors' port (and the AMLab code whenever q-flows are used) start at
            0.0, so the mean output of every layer starts near zero and training first has to grow z; the
            default 1.0 (AMLab's value without q-flows) starts at the replaced network's function and trains
            much faster in the tests (``tests/test_mnf.py``). Pass 0.0 for the authors' setting.
        kl_layers: ``"all"`` (default) adds the KL of every MNF layer to the loss; ``"dense"`` only that of the
            dense layers, as the authors' code did (its conv layers' KL never reached the loss).
        n_flows, q_hidden, r_hidden: flow steps (2) and hidden units of the q-flow (50) and r-flow (100).
    """

    default_lr = {"adam": 1e-3, "rmsprop-tf": 1e-4}

    def __init__(self, model: nn.Module, likelihood: Likelihood | str = "categorical", layers: LayerFilter = None,
                 thres_var: float = 0.5, prior_log_var: float = 1.0, init_log_std: float = -9.0, z_init: float = 1.0,
                 kl_layers: str = "all", n_flows: int = 2, q_hidden: int = 50, r_hidden: int = 100) -> None:
        thres_var = check_float("thres_var (the clip on the weights' std)", thres_var, 0.0, open_low=True)
        prior_log_var = check_float("prior_log_var", prior_log_var)
        init_log_std, z_init = check_float("init_log_std", init_log_std), check_float("z_init", z_init)
        kl_layers = parse_option(MNFKLLayers, kl_layers, "kl_layers").value
        n_flows, q_hidden = check_int("n_flows", n_flows, 1), check_int("q_hidden", q_hidden, 1)
        r_hidden = check_int("r_hidden", r_hidden, 1)
        super().__init__(model, likelihood, prior=math.exp(0.5 * prior_log_var))
        self.thres_var, self.prior_log_var, self.kl_layers = float(thres_var), float(prior_log_var), kl_layers
        options = dict(thres_var=float(thres_var), prior_log_var=float(prior_log_var),
                       init_log_std=float(init_log_std), z_init=float(z_init), n_flows=n_flows,
                       q_hidden=q_hidden, r_hidden=r_hidden)
        names = _select_layers(model, layers)
        modules = dict(model.named_modules())
        for name in names:
            old = modules[name]
            new = (MNFLinear.from_linear(old, **options) if isinstance(old, nn.Linear)
                   else MNFConv2d.from_conv(old, **options))
            _replace(model, old, new)
        self.layer_names: list[str] = names
        """Names (in the model) of the MNF layers, in model order."""
        self.kl_layer_names: list[str] = [n for n in names if kl_layers == "all" or
                                          isinstance(self.model.get_submodule(n), MNFLinear)]
        """The MNF layers whose KL enters the loss."""
        self._record_model()  # the model as MNF left it: what check_model compares with

    def mnf_layers(self) -> dict[str, MNFLayer]:
        """``{name: layer}`` of every MNF layer, in model order."""
        return {n: self.model.get_submodule(n) for n in self.layer_names}  # type: ignore[misc]

    def kl(self) -> Tensor:
        """Σ KL_layer over ``kl_layer_names`` (one z sample per layer; 0 when no layer is counted)."""
        terms = [self.model.get_submodule(n).kl() for n in self.kl_layer_names]
        if not terms:
            return next(self.model.parameters()).new_zeros(())
        return torch.stack(terms).sum()

    def _loss(self, x: Tensor, y: Tensor, *, num_data: int, kl_weight: float = 1.0) -> LossTerms:
        """Per-datum negative ELBO: mean NLL of one stochastic pass + kl_weight · KL / N."""
        outputs = self.model(x)
        kl = self.kl()
        check_finite("the MNF KL", kl.detach())
        return elbo(self.mean_nll(outputs, y), kl, num_data=num_data, kl_weight=kl_weight, outputs=outputs)

    def _sample_outputs(self, x: Tensor, n_samples: int, *, chunk_size: int | None = None) -> Tensor:
        """Outputs of ``n_samples`` stochastic passes, ``[S, B, ...]``: the batch repeated ``chunk_size`` times
        (default all S) and run as one forward. Exact, because every MNF layer draws its z and its local
        reparameterisation noise per example: S copies of an input are S independent passes."""
        outs = [self._per_copy_outputs(x.unsqueeze(0).expand(k, *x.shape)) for k in chunk_sizes(n_samples, chunk_size)]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)

    def _per_copy_outputs(self, xs: Tensor) -> Tensor:
        """Copies ``xs [S, B, ...]`` stacked into one batch of S·B examples (noise is drawn per example)."""
        out = self.model(xs.reshape(xs.shape[0] * xs.shape[1], *xs.shape[2:]))
        return out.view(xs.shape[0], xs.shape[1], *out.shape[1:])

    def weight_samples(self, n: int) -> dict[str, Tensor]:
        """``{"<layer>.weight": Tensor[n, *shape]}``: per draw one ``sample_weight()`` of every MNF layer (a
        fresh z and ε per layer, ``W = μ ⊙ z + clip(σ) ε``). As the authors' ``get_weight``, kernels only:
        biases and the flow / r-model parameters are not included, and the layers' z draws are independent
        (as in the forward pass)."""
        k = chunk_sizes(n)[0]
        return {f"{name}.weight": torch.stack([layer.sample_weight() for _ in range(k)])
                for name, layer in self.mnf_layers().items()}


__all__ = ["MNF", "MNFConv2d", "MNFLayer", "MNFLinear", "MaskedRealNVP", "PlanarFlow"]

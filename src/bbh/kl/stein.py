"""KL(q || p) whose entropy gradient comes from the spectral Stein gradient estimator (SSGE).

For an implicit q (draws w = g_θ(z) with no density) the entropy's gradient needs only the score ∇_w log q(w):

    ∇_θ H[q] = -E_z[ ∇_w log q(w)ᵀ ∂w/∂θ ]    (the term E_q[∇_θ log q] is zero),

so a score estimate s(w) gives the surrogate Ĥ_grad = -(1/n) Σ_i sg(s(w_i))ᵀ w_i, sg = stop-gradient. SSGE (Shi,
Sun & Zhu, ICML 2018, "A Spectral Approach to Gradient Estimation for Implicit Distributions") estimates s from the
n draws themselves: with an RBF kernel k(x, y) = exp(-|x - y|² / (2h²)) and the Gram matrix K = U Λ Uᵀ (top J
eigenpairs, covering ``threshold`` of the trace), the Nyström eigenfunctions ψ_j(x) = (√n / λ_j) Σ_m k(x, x_m) U_mj
expand the score as s(x) = Σ_j β_j ψ_j(x) with β_j = -(1/n) Σ_m ∇ψ_j(x_m) (Stein's identity). At the draws,

    S = (1/h²) U_J Λ_J⁻¹ U_Jᵀ (K X - diag(K 1) X)      (S, X ∈ R^{n×D}).

``whiten`` (default on) measures distances after dividing each coordinate by its standard deviation over the draws
(a diagonal bandwidth), so a narrow coordinate is not invisible next to wide ones; the score is mapped back.

The value this estimator returns is the exact Monte Carlo cross-entropy minus the Kozachenko–Leonenko entropy of
the draws (what ``kl="nn-entropy"`` reports), with the gradient of the entropy replaced by SSGE's: the number is
for logging, the gradient is SSGE's. What SSGE cannot do (measured in docs/fidelity.md): with n draws in D ≫ n
dimensions the kernel sees at most n - 1 directions and its score is shrunk by about n / D, so the push against
collapse weakens with the dimension exactly as for the full-vector nearest-neighbour estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.priors import Prior
from .base import KLEstimator, flatten_samples, pairwise_sq_distances
from .entropy import knn_entropy_full


def ssge_score(x: Tensor, *, threshold: float = 0.98, eta: float = 0.0, whiten: bool = True) -> Tensor:
    """SSGE estimate of ∇ log q at each draw x [n, D] (module docstring), bandwidth h = median pairwise distance.

    ``threshold``: the share of the Gram matrix's trace the kept eigenvalues cover (J, Shi et al. 2018 Sec. 3);
    ``eta``: a ridge added to K before the eigendecomposition. Computed without gradient, in float64.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"SSGE needs draws [n >= 2, D], got {tuple(x.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    with torch.no_grad():
        z = x.detach().to(torch.float64)
        n = z.shape[0]
        scale = z.std(0).clamp_min(1e-12) if whiten else torch.ones(z.shape[1], dtype=z.dtype, device=z.device)
        z = (z - z.mean(0)) / scale
        sq = pairwise_sq_distances(z, z)                                                    # [n, n]
        off = sq[~torch.eye(n, dtype=torch.bool, device=z.device)]
        h2 = float(off.median().clamp_min(1e-12))
        k = torch.exp(-sq / (2.0 * h2)) + eta * torch.eye(n, dtype=z.dtype, device=z.device)
        lam, u = torch.linalg.eigh(k)                                                        # ascending
        lam, u = lam.flip(0), u.flip(1)
        share = lam.clamp_min(0).cumsum(0) / lam.clamp_min(0).sum()
        j = int((share < threshold).sum()) + 1
        lam, u = lam[:j], u[:, :j]
        a = k @ z - k.sum(1, keepdim=True) * z                                              # Σ_m k_mn (x_m - x_n)
        score = (u @ ((u.T @ a) / lam.unsqueeze(1))) / h2
        return (score / scale).to(x.dtype)


class SteinKL(KLEstimator):
    """KL = exact Monte Carlo cross-entropy − entropy, the entropy's gradient from SSGE (``kl="stein"``).

    Needs a prior with ``log_prob``; value and gradient as in the module docstring. ``threshold``, ``eta`` and
    ``whiten`` are :func:`ssge_score`'s.
    """

    def __init__(self, threshold: float = 0.98, eta: float = 0.0, whiten: bool = True) -> None:
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.threshold, self.eta, self.whiten = threshold, eta, whiten

    def forward(self, samples: dict[str, Tensor], prior: Prior) -> Tensor:
        log_prob = getattr(prior, "log_prob", None)
        if not callable(log_prob):
            raise TypeError(f"the Stein KL estimator needs a prior with a log_prob method (e.g. NormalPrior); "
                            f"{type(prior).__name__} has none")
        w = flatten_samples(samples)
        n = w.shape[0]
        if n < 2:
            raise ValueError(f"the Stein entropy gradient needs at least 2 draws, got {n}")
        score = ssge_score(w, threshold=self.threshold, eta=self.eta, whiten=self.whiten)
        surrogate = -(score * w).sum(1).mean()                  # its gradient is SSGE's ∇H; its value is not H
        with torch.no_grad():
            value = knn_entropy_full(w.detach(), k=min(5, n - 1))
        entropy = value + (surrogate - surrogate.detach())
        cross_entropy = -log_prob(w).reshape(n, -1).sum(1).mean()
        return cross_entropy - entropy

    def __repr__(self) -> str:
        return f"SteinKL(threshold={self.threshold}, eta={self.eta}, whiten={self.whiten})"


__all__ = ["SteinKL", "ssge_score"]

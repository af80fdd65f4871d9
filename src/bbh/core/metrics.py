"""Evaluation metrics for classifiers with (posterior-sampled) predictive probabilities.

Every function is pure and takes torch tensors: predictive probabilities ``probs [N, K]`` (rows sum to 1,
e.g. the mean of the posterior samples' softmax outputs), integer labels ``y [N]``, or posterior samples
``sample_probs [S, N, K]``. Scalars come back as Python floats; per-example quantities as tensors.

* accuracy and errors: :func:`accuracy`, :func:`error_rate`, :func:`nll`, :func:`brier_score`;
* calibration: :func:`reliability` (top-label, equal-width bins) and :func:`ece`;
* entropy: :func:`entropy`, the one entropy function of bbh, with its clamp as an explicit argument (the
  authors' 1e-5 by default, 0 for the exact entropy), and the paper's uncertainty number :func:`entropy_auc`,
  the area under the CDF of the entropy divided by the maximum entropy (docs/protocol.md §6.2), bit-faithful to
  the authors' ``calc_ent_auc``, and its standard error over the examples :func:`entropy_auc_se`;
* the posterior decomposition :func:`predictive_entropy` = :func:`expected_entropy` (aleatoric) +
  :func:`mutual_information` (epistemic);
* out-of-distribution detection: :func:`ood_score` and :func:`ood_metrics` (AUROC, AUPR in/out, FPR at 95 % TPR).

Scalar metrics are accumulated in float64 whatever the input dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

PROB_ATOL = 1e-3
"""Rows of ``probs`` must sum to 1 within this absolute tolerance (checked in float64)."""

ENTROPY_CLAMP = 1e-5
"""The authors' clamp in ``calc_entropy``: H = -Σ p log max(p, 1e-5) (docs/protocol.md §6.2)."""

ENTROPY_AUC_BINS = 500
"""``calc_ent_auc`` builds its histogram edges as ``np.arange(0, Hmax, Hmax / 500)``."""

OOD_SCORES = ("entropy", "mutual_information", "max_prob")


# ----------------------------------------------------------------------------------------- validation
def _check_probs(probs: Tensor, name: str = "probs", ndim: int | None = 2) -> None:
    """Probabilities over the last axis: floating, finite, >= 0, rows summing to 1; ``ndim`` dimensions
    (None: any number >= 1, the last one the classes)."""
    layout = {2: "[N, K]", 3: "[S, N, K]", None: "[..., K]"}.get(ndim, f"{ndim}-d")
    if not isinstance(probs, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(probs).__name__}")
    if (probs.dim() < 1) if ndim is None else (probs.dim() != ndim):
        raise ValueError(f"{name} must have shape {layout}, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of probabilities, got dtype {probs.dtype}")
    if probs.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(probs.shape)}")
    p = probs.detach()
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if bool((p < 0).any()):
        raise ValueError(f"{name} contains negative values; expected probabilities")
    dev = (p.double().sum(-1) - 1).abs().max().item()
    if dev > PROB_ATOL:
        raise ValueError(f"the rows of {name} must sum to 1 (largest deviation {dev:.3g} > {PROB_ATOL:g}); "
                         f"pass probabilities (e.g. softmax outputs), not logits")


def _check_labels(y: Tensor, probs: Tensor) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor [N] of class indices, got {type(y).__name__}")
    if y.dim() != 1 or y.shape[0] != probs.shape[0]:
        raise ValueError(f"y must have shape [N] = [{probs.shape[0]}] to match probs {tuple(probs.shape)}, "
                         f"got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
    k = probs.shape[1]
    if bool(((y < 0) | (y >= k)).any()):
        raise ValueError(f"labels must lie in [0, {k - 1}] for K = {k} classes, got min {int(y.min())}, "
                         f"max {int(y.max())}")


def _check_scores(scores: Any, name: str) -> Tensor:
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64)
    if s.dim() != 1 or s.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-d tensor of scores, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


# ----------------------------------------------------------------------------------------- accuracy & co
def accuracy(probs: Tensor, y: Tensor) -> float:
    """Fraction of examples whose most probable class is the label.

    acc = (1/N) Σ_n [argmax_k p_nk = y_n]   (ties: the first maximal class, as ``torch.argmax``/``np.argmax``)
    """
    _check_probs(probs)
    _check_labels(y, probs)
    return (probs.detach().argmax(-1) == y.to(probs.device)).double().mean().item()


def error_rate(probs: Tensor, y: Tensor) -> float:
    """Fraction misclassified by the argmax: 1 - :func:`accuracy` (paper tables: 100 x this, docs/protocol.md §6.1)."""
    _check_probs(probs)
    _check_labels(y, probs)
    return (probs.detach().argmax(-1) != y.to(probs.device)).double().mean().item()


def nll(probs: Tensor, y: Tensor, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the labels.

    NLL = -(1/N) Σ_n log max(p_{n, y_n}, eps)   (the clamp keeps a zero probability finite: -log 1e-12 ≈ 27.6)
    """
    _check_probs(probs)
    _check_labels(y, probs)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    p_y = probs.detach().double().gather(1, y.to(probs.device).long().unsqueeze(1)).squeeze(1)
    return (-torch.log(p_y.clamp_min(eps))).mean().item()


def brier_score(probs: Tensor, y: Tensor) -> float:
    """Multi-class Brier score (Brier 1950), in [0, 2].

    BS = (1/N) Σ_n Σ_k (p_nk - [y_n = k])^2
    """
    _check_probs(probs)
    _check_labels(y, probs)
    p = probs.detach().double()
    onehot = torch.nn.functional.one_hot(y.to(p.device).long(), p.shape[1]).double()
    return ((p - onehot) ** 2).sum(-1).mean().item()


# ----------------------------------------------------------------------------------------- calibration
def reliability(probs: Tensor, y: Tensor, bins: int = 15) -> dict[str, list[float] | list[int]]:
    """Top-label reliability diagram with ``bins`` equal-width confidence bins on [0, 1].

    With confidence c_n = max_k p_nk and edges e_b = b / M (b = 0..M, M = ``bins``), bin b holds

        B_0 = { n : 0 <= c_n <= e_1 },   B_b = { n : e_b < c_n <= e_{b+1} }  (b >= 1),

    i.e. bins are right-closed and the first one is closed on both sides, so a confidence of exactly 1.0
    falls in the last bin and one exactly on an inner edge in the bin below it (the convention of
    Guo et al. 2017's reference code and of ``torch.bucketize``). Per bin:

        confidence_b = mean_{n in B_b} c_n,   accuracy_b = mean_{n in B_b} [argmax_k p_nk = y_n],
        count_b = |B_b|   (empty bins: count 0, confidence and accuracy NaN).

    Returns:
        a dict of lists of length ``bins`` (plain Python numbers, JSON-ready): ``lower``, ``upper`` (the
        edges e_b, e_{b+1}), ``confidence``, ``accuracy`` (floats) and ``count`` (ints).
    """
    _check_probs(probs)
    _check_labels(y, probs)
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    p = probs.detach().double().cpu()
    conf, pred = p.max(-1)
    correct = (pred == y.detach().cpu()).double()
    edges = torch.arange(bins + 1, dtype=torch.float64) / bins      # correctly rounded b / M, e_M = 1 exactly
    index = torch.bucketize(conf, edges[1:-1], right=False)         # #inner edges < c: e_b < c <= e_{b+1}
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, conf)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    nonempty = count > 0
    nan = torch.full((bins,), math.nan, dtype=torch.float64)
    denom = count.clamp_min(1).double()
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "confidence": torch.where(nonempty, conf_sum / denom, nan).tolist(),
        "accuracy": torch.where(nonempty, acc_sum / denom, nan).tolist(),
        "count": count.tolist(),
    }


def ece(probs: Tensor, y: Tensor, bins: int = 15) -> float:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017), top-label, equal-width bins.

    ECE = Σ_b (n_b / N) |accuracy_b - confidence_b|   over the non-empty bins of :func:`reliability`
    (same bin convention: right-closed, first bin closed, confidence 1.0 in the last bin).
    """
    rel = reliability(probs, y, bins)
    n = probs.shape[0]
    return float(sum(c / n * abs(a - f) for c, a, f in zip(rel["count"], rel["accuracy"], rel["confidence"])
                     if c > 0))


# ----------------------------------------------------------------------------------------- entropy
def _entropy(p: Tensor, clamp: float) -> Tensor:
    """The kernel of :func:`entropy`, unchecked: -Σ_k p_k log max(p_k, clamp) over the last axis (xlogy makes
    0 · log 0 = 0 when clamp = 0)."""
    return -torch.xlogy(p, p.clamp_min(clamp)).sum(-1)


def entropy(probs: Tensor, clamp: float = ENTROPY_CLAMP) -> Tensor:
    """Shannon entropy (natural log) over the last axis — bbh's one entropy function.

    H = -Σ_k p_k log max(p_k, clamp)

    ``clamp`` is explicit because two conventions are in use:

    * ``clamp=ENTROPY_CLAMP`` (1e-5, the default) is the authors' ``calc_entropy`` (docs/protocol.md §6.2): every
      class below 1e-5 contributes -p log 1e-5 instead of -p log p, so the value is slightly below the exact
      entropy. The paper's entropy AUC (:func:`entropy_auc`) and the FGSM entropy curves use it, which keeps
      those numbers bit-identical to the authors' code.
    * ``clamp=0`` is the exact entropy with 0 log 0 = 0; the uncertainty decomposition
      (:func:`predictive_entropy`, :func:`expected_entropy`, :func:`mutual_information`,
      :class:`bbh.core.predictive.Predictive`) and the OOD scores use it.

    Args:
        probs: probabilities ``[..., K]`` (e.g. a predictive ``[N, K]`` or posterior samples ``[S, N, K]``);
            each row over the last axis sums to 1.
        clamp: the lower bound applied inside the logarithm, >= 0.

    Returns:
        ``[...]`` (the leading shape of ``probs``) in the dtype of ``probs`` (pass float64 probabilities to
        match the authors' float64 numpy arithmetic).
    """
    _check_probs(probs, ndim=None)
    if not clamp >= 0:
        raise ValueError(f"clamp must be >= 0, got {clamp!r}")
    return _entropy(probs, clamp)


def max_entropy(num_classes: int) -> float:
    """Hmax = log K, computed as the authors do: ``np.sum(-(1/K) * np.log(1/K))`` over K copies.

    Equal to ``math.log(K)`` up to one ulp (K = 10: 2.3025850929940455 vs 2.302585092994046); using the
    authors' value keeps :func:`entropy_auc`'s histogram edges bit-identical to theirs.
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    u = np.ones(num_classes) / num_classes
    return float(np.sum(-1 * u * np.log(u), -1))


def _entropy_bins(entropies: Tensor | np.ndarray, num_classes: int) -> tuple[np.ndarray, float, np.ndarray]:
    """The checked entropies as float64 [N], Hmax = log K and the bin edges of :func:`entropy_auc`."""
    h_max = max_entropy(num_classes)
    h = entropies.detach().cpu().double().numpy() if isinstance(entropies, Tensor) else np.asarray(entropies)
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 1 or h.size == 0:
        raise ValueError(f"entropies must be a non-empty 1-d array [N], got shape {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("entropies contain NaN or infinite values")
    return h, h_max, np.arange(0, h_max, h_max / ENTROPY_AUC_BINS)


def entropy_auc(entropies: Tensor | np.ndarray, num_classes: int) -> float:
    """The paper's "AUC": area under the empirical CDF of the entropy, divided by the maximum entropy.

    Exactly the authors' ``calc_ent_auc`` (docs/protocol.md §6.2), then divided by Hmax (:func:`max_entropy`):

        edges = np.arange(0, Hmax, Hmax / 500)            # 500 edges for K = 5 and 10 (501 for e.g. K = 3, 8:
                                                          # float rounding in arange; reproduced by calling numpy)
        hist  = np.histogram(H, bins=edges, density=True)  # values outside [0, edges[-1]] are dropped first
        CDF_j = Σ_{i<=j} hist_i · width_i
        AUC   = Σ_j width_j · CDF_j,   returned: AUC / Hmax

    High = confident (mass at low entropy); the attainable maximum is 0.998 (all entropies in the first
    bin: 499 bins of width Hmax/500 with CDF 1). Entropies are converted to float64 first (the authors'
    entropies were float64). Note the authors' quirk: entropies above the last edge (0.998 Hmax) are not
    counted as mass at high entropy but dropped, so the CDF is normalised over the remaining ones only.

    All dropped: when no entropy lies in [0, edges[-1]] (e.g. every example at exactly max entropy) the
    authors' code divides 0 by 0 and returns NaN; here the result is 0.0 — no mass below 0.998 Hmax, so
    the CDF over the covered range is 0 everywhere (the limit of the values as the entropies approach Hmax).

    Args:
        entropies: 1-d entropies [N] (natural log), e.g. from :func:`entropy`; finite.
        num_classes: K >= 2, giving Hmax = log K.
    """
    h, h_max, edges = _entropy_bins(entropies, num_classes)
    counts, _ = np.histogram(h, bins=edges)
    if counts.sum() == 0:
        return 0.0
    hist, bin_edges = np.histogram(h, density=True, bins=edges)
    c_hist = np.cumsum(hist * np.diff(bin_edges))
    auc = np.sum(np.diff(bin_edges) * c_hist)
    return float(auc / h_max)


def entropy_auc_se(entropies: Tensor | np.ndarray, num_classes: int) -> float:
    """Standard error of :func:`entropy_auc` over the examples (the noise of the test set's draw).

    :func:`entropy_auc` is exactly a mean over the examples it keeps (entropy in [0, e_J], e_J the last edge):
    an example in bin k, whose left edge is e_k, raises the CDF from bin k on, so it adds
    c = (e_J - e_k) / Hmax, and AUC = (1/n) Σ_i c_i. Hence

        SE = std(c_i, ddof=1) / sqrt(n),   n = the examples kept;

    NaN when fewer than 2 are kept.
    """
    h, h_max, edges = _entropy_bins(entropies, num_classes)
    kept = h[(h >= edges[0]) & (h <= edges[-1])]  # np.histogram's range: the last bin includes its right edge
    if kept.size < 2:
        return math.nan
    bin_index = np.minimum(np.searchsorted(edges, kept, side="right") - 1, edges.size - 2)
    terms = (edges[-1] - edges[bin_index]) / h_max
    return float(terms.std(ddof=1) / math.sqrt(kept.size))


# ----------------------------------------------------------------------------------------- decomposition
def predictive_entropy(sample_probs: Tensor) -> Tensor:
    """Total uncertainty: the exact entropy of the mean prediction, [N].

    H[ p̄ ] = -Σ_k p̄_k log p̄_k,  p̄ = (1/S) Σ_s p_s   (0 log 0 = 0, no clamp)
    """
    _check_probs(sample_probs, "sample_probs", ndim=3)
    return _entropy(sample_probs.mean(0), 0.0)


def expected_entropy(sample_probs: Tensor) -> Tensor:
    """Aleatoric part: the mean over posterior samples of each sample's exact entropy, [N].

    E_s H[p_s] = (1/S) Σ_s ( -Σ_k p_sk log p_sk )
    """
    _check_probs(sample_probs, "sample_probs", ndim=3)
    return _entropy(sample_probs, 0.0).mean(0)


def mutual_information(sample_probs: Tensor) -> Tensor:
    """Epistemic part: I[y; w | x] = H[p̄] - E_s H[p_s] (Houlsby et al. 2011 "BALD"; Depeweg et al. 2018), [N].

    Non-negative by Jensen's inequality; rounding negatives (when all samples agree) are clamped to 0.
    """
    _check_probs(sample_probs, "sample_probs", ndim=3)
    mi = _entropy(sample_probs.mean(0), 0.0) - _entropy(sample_probs, 0.0).mean(0)
    return mi.clamp_min(0.0)


# ----------------------------------------------------------------------------------------- OOD detection
def ood_score(sample_probs_or_mean: Tensor, kind: str = "entropy") -> Tensor:
    """Per-example out-of-distribution score [N], higher = more likely out of distribution.

    ``sample_probs_or_mean`` is posterior samples [S, N, K] or a predictive [N, K] (treated as its mean):

    * ``"entropy"``: predictive entropy H[p̄] (exact, no clamp);
    * ``"mutual_information"``: H[p̄] - E_s H[p_s] (needs samples [S, N, K]);
    * ``"max_prob"``: 1 - max_k p̄_k (ranks like the negated maximum probability).
    """
    if kind not in OOD_SCORES:
        raise ValueError(f"unknown OOD score {kind!r}; expected one of {', '.join(OOD_SCORES)}")
    p = sample_probs_or_mean
    if not isinstance(p, Tensor) or p.dim() not in (2, 3):
        shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
        raise ValueError(f"expected sample probabilities [S, N, K] or mean probabilities [N, K], got {shape}")
    if kind == "mutual_information":
        if p.dim() != 3:
            raise ValueError("the mutual information needs posterior samples [S, N, K], got mean probabilities "
                             f"{tuple(p.shape)}")
        return mutual_information(p)
    if p.dim() == 3:
        _check_probs(p, "sample_probs", ndim=3)
        p = p.mean(0)
    else:
        _check_probs(p)
    if kind == "entropy":
        return _entropy(p, 0.0)
    return 1 - p.max(-1).values


def _average_precision(scores: Tensor, positive: Tensor) -> float:
    """AP = Σ_t (R_t - R_{t-1}) P_t over the distinct scores t in decreasing order (predicted positive:
    score >= t), R_0 = 0 — step-wise, no interpolation, as ``sklearn.metrics.average_precision_score``."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, pos = scores[order], positive[order].double()
    tp, fp = pos.cumsum(0), (1 - pos).cumsum(0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]                   # the last position of each group of tied scores
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return (d_recall * precision).sum().item()


def ood_metrics(scores_in: Tensor, scores_out: Tensor) -> dict[str, float]:
    """Detection of out-of-distribution examples from a score (higher = more OOD, see :func:`ood_score`).

    With n_in in-distribution scores a_i and n_out OOD scores b_j:

    * ``auroc`` — positives = OOD; the Mann-Whitney statistic with ties counted half:
      AUROC = (1 / (n_in n_out)) Σ_ij ( [b_j > a_i] + ½ [b_j = a_i] ), computed from average ranks;
    * ``aupr_out`` — average precision (:func:`_average_precision`, as sklearn's) with OOD positive, score s;
    * ``aupr_in`` — average precision with in-distribution positive and score -s;
    * ``fpr_at_95_tpr`` — threshold t* = the k-th largest OOD score, k = ceil(0.95 n_out), i.e. the largest
      threshold at which at least 95 % of the OOD examples have score >= t*; returned: the fraction of
      in-distribution examples with score >= t*. Tie rule: a score equal to the threshold counts as detected
      (for both sets), so ties at t* can push the TPR above 95 % and count tied in-distribution examples as
      false positives.

    Args:
        scores_in: 1-d scores of in-distribution examples (finite).
        scores_out: 1-d scores of out-of-distribution examples (finite).
    """
    a = _check_scores(scores_in, "scores_in")
    b = _check_scores(scores_out, "scores_out")
    n_in, n_out = a.numel(), b.numel()
    s = torch.cat([a, b])
    is_out = torch.cat([torch.zeros(n_in, dtype=torch.bool), torch.ones(n_out, dtype=torch.bool)])

    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    before = torch.cumsum(counts, 0) - counts                        # examples strictly below each value
    avg_rank = before.double() + (counts.double() + 1) / 2          # 1-based average rank of each value
    u = avg_rank[inverse][is_out].sum().item() - n_out * (n_out + 1) / 2
    auroc = u / (n_in * n_out)

    k = (95 * n_out + 99) // 100                                     # ceil(0.95 n_out), exact in integers
    threshold = torch.sort(b, descending=True).values[k - 1]
    fpr = (a >= threshold).double().mean().item()

    return {
        "auroc": float(auroc),
        "aupr_in": _average_precision(-s, ~is_out),
        "aupr_out": _average_precision(s, is_out),
        "fpr_at_95_tpr": float(fpr),
    }


def gaussian_mixture_log_density(means: Tensor, variances: Tensor, y: Tensor) -> Tensor:
    """Log density of ``y`` under the equal-weight mixture of S Gaussians, one per posterior draw.

    For draws s = 1..S with per-example means μ_s and variances σ_s² (diagonal over the output dimensions)

        log p(y | x) = log (1/S) Σ_s Π_d N(y_d; μ_{s,d}, σ_{s,d}²)
                     = logsumexp_s [Σ_d log N(y_d; μ_{s,d}, σ_{s,d}²)] - log S,

    the test log-likelihood of the UCI regression benchmarks (computed with logsumexp, so it stays finite
    where every component's density underflows).

    Args:
        means: μ, ``[S, B, *D]``.
        variances: σ², ``[S, B, *D]`` (or broadcastable to it), all > 0.
        y: targets ``[B, *D]``.

    Returns:
        The per-example log density ``[B]``, summed over the output dimensions, in float32 or wider.

    Raises:
        ValueError: shapes that do not fit ``[S, B, *D]`` / ``[B, *D]``.
    """
    if means.dim() < 2 or tuple(y.shape) != tuple(means.shape[1:]):
        raise ValueError(f"means must be [S, B, *D] and y [B, *D]; got means {tuple(means.shape)}, y {tuple(y.shape)}")
    dtype = torch.promote_types(means.dtype, torch.float32)
    mu, var, target = means.to(dtype), variances.to(dtype).expand_as(means), y.to(dtype)
    per_dim = -0.5 * ((target - mu) ** 2 / var + var.log() + math.log(2 * math.pi))
    per_draw = per_dim.reshape(*per_dim.shape[:2], -1).sum(-1)  # [S, B]
    return torch.logsumexp(per_draw, dim=0) - math.log(per_draw.shape[0])

"""Tests of :mod:`bbh.evaluation.metrics`: hand-computed values, scikit-learn / independent numpy references, and the
authors' ``calc_entropy`` / ``calc_ent_auc`` copied inline (docs/protocol.md §6.2)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from bbh.core import metrics
from bbh.core.metrics import (
    accuracy,
    brier_score,
    ece,
    entropy,
    entropy_auc,
    error_rate,
    expected_entropy,
    max_entropy,
    mutual_information,
    nll,
    ood_metrics,
    ood_score,
    predictive_entropy,
    reliability,
)

F64 = torch.float64


def _probs(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def _random_probs(n: int, k: int, seed: int, temperature: float = 1.0, shape=()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, n, k, generator=g, dtype=F64) * temperature, -1)


# Four examples, three classes; argmax = [0, 1, 2, 0] (row 4 ties 0/1 -> the first), labels [0, 2, 2, 1].
P4 = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]]
Y4 = [0, 2, 2, 1]


# ----------------------------------------------------------------------------------------- accuracy & co
def test_accuracy_and_error_rate_by_hand():
    p, y = _probs(P4), torch.tensor(Y4)
    assert accuracy(p, y) == 0.5          # rows 1 and 3 right
    assert error_rate(p, y) == 0.5
    assert accuracy(p, torch.tensor([0, 1, 2, 0])) == 1.0  # the tie goes to the first class
    assert error_rate(p.float(), torch.tensor([1, 0, 0, 1], dtype=torch.int32)) == 1.0
    assert isinstance(accuracy(p, y), float) and isinstance(error_rate(p, y), float)


def test_nll_by_hand_and_clamp():
    p, y = _probs(P4), torch.tensor(Y4)
    expected = -(math.log(0.7) + math.log(0.1) + math.log(0.4) + math.log(0.5)) / 4
    assert nll(p, y) == pytest.approx(expected, rel=1e-14)
    # p_y = 0 (row 4, class 2) is clamped at eps.
    y0 = torch.tensor([0, 1, 2, 2])
    expected0 = -(math.log(0.7) + math.log(0.8) + math.log(0.4) + math.log(1e-12)) / 4
    assert nll(p, y0) == pytest.approx(expected0, rel=1e-14)
    assert nll(p, y0, eps=1e-3) == pytest.approx(expected0 - (math.log(1e-3) - math.log(1e-12)) / 4, rel=1e-14)
    assert nll(_probs([[0.0, 1.0]]), torch.tensor([0]), eps=0.0) == math.inf


def test_brier_score_by_hand():
    p, y = _probs(P4), torch.tensor(Y4)
    # rows: 0.09+0.04+0.01, 0.01+0.64+0.81, 0.09+0.09+0.36, 0.25+0.25+0 -> 0.14, 1.46, 0.54, 0.50
    assert brier_score(p, y) == pytest.approx((0.14 + 1.46 + 0.54 + 0.50) / 4, rel=1e-14)
    assert brier_score(_probs([[1.0, 0.0]]), torch.tensor([0])) == 0.0
    assert brier_score(_probs([[1.0, 0.0]]), torch.tensor([1])) == 2.0


# ----------------------------------------------------------------------------------------- calibration
def test_reliability_and_ece_two_bins_by_hand():
    # bins = 2: [0, 0.5] and (0.5, 1]. Confidences 0.5 (wrong), 0.6 (right), 0.9 (wrong), 1.0 (right).
    p = _probs([[0.5, 0.5], [0.6, 0.4], [0.1, 0.9], [1.0, 0.0]])
    y = torch.tensor([1, 0, 0, 0])
    rel = reliability(p, y, bins=2)
    assert rel["lower"] == [0.0, 0.5] and rel["upper"] == [0.5, 1.0]
    assert rel["count"] == [1, 3]                       # 0.5 sits on the edge -> the lower bin; 1.0 -> the last
    assert rel["confidence"][0] == 0.5 and rel["accuracy"][0] == 0.0
    assert rel["confidence"][1] == pytest.approx(2.5 / 3, rel=1e-15)
    assert rel["accuracy"][1] == pytest.approx(2 / 3, rel=1e-15)
    # ECE = 1/4 |0 - 0.5| + 3/4 |2/3 - 2.5/3| = 0.125 + 0.125
    assert ece(p, y, bins=2) == pytest.approx(0.25, rel=1e-14)
    assert all(isinstance(v, float) for v in rel["confidence"]) and all(isinstance(c, int) for c in rel["count"])


def test_reliability_empty_bins_are_nan_with_count_zero():
    p = _probs([[0.5, 0.5], [0.6, 0.4], [0.1, 0.9], [1.0, 0.0]])
    y = torch.tensor([1, 0, 0, 0])
    rel = reliability(p, y, bins=4)                     # edges 0, .25, .5, .75, 1
    assert rel["count"] == [0, 1, 1, 2]
    assert math.isnan(rel["confidence"][0]) and math.isnan(rel["accuracy"][0])
    assert ece(p, y, bins=4) == pytest.approx(0.25 * 0.5 + 0.25 * 0.4 + 0.5 * abs(0.5 - 0.95), rel=1e-14)
    assert ece(p, y, bins=1) == pytest.approx(abs(0.5 - 3.0 / 4), rel=1e-14)  # one bin: |acc - mean conf|


def _numpy_reliability(probs: np.ndarray, y: np.ndarray, bins: int):
    """Independent reference: loop over bins with explicit comparisons, first bin closed, others (lo, hi]."""
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == y).astype(np.float64)
    edges = np.arange(bins + 1) / bins
    out = {"count": [], "confidence": [], "accuracy": []}
    total = 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        mask = (conf >= lo) & (conf <= hi) if b == 0 else (conf > lo) & (conf <= hi)
        n = int(mask.sum())
        out["count"].append(n)
        out["confidence"].append(conf[mask].mean() if n else np.nan)
        out["accuracy"].append(correct[mask].mean() if n else np.nan)
        if n:
            total += n / len(y) * abs(correct[mask].mean() - conf[mask].mean())
    return out, total


@pytest.mark.parametrize("bins", [1, 2, 5, 10, 15])
def test_reliability_matches_an_independent_numpy_implementation(bins):
    g = torch.Generator().manual_seed(bins)
    k = 4
    probs = _random_probs(300, k, seed=bins, temperature=3.0)
    # Rows whose confidence lies exactly on an edge b / bins (and at 1.0): [c, (1 - c) / 3, ...].
    on_edges = [c for c in (np.arange(bins + 1) / bins) if c >= 1 / k]
    edge_rows = torch.tensor([[c] + [(1 - c) / (k - 1)] * (k - 1) for c in on_edges], dtype=F64)
    probs = torch.cat([probs, edge_rows, torch.tensor([[1.0, 0, 0, 0]], dtype=F64)])
    y = torch.randint(0, k, (probs.shape[0],), generator=g)
    rel = reliability(probs, y, bins=bins)
    ref, ref_ece = _numpy_reliability(probs.numpy(), y.numpy(), bins)
    assert rel["count"] == ref["count"] and sum(rel["count"]) == probs.shape[0]
    np.testing.assert_allclose(rel["confidence"], ref["confidence"], rtol=1e-13, equal_nan=True)
    np.testing.assert_allclose(rel["accuracy"], ref["accuracy"], rtol=1e-13, equal_nan=True)
    assert ece(probs, y, bins=bins) == pytest.approx(ref_ece, rel=1e-12, abs=1e-15)
    assert rel["count"][-1] >= 1                        # confidence 1.0 lands in the last bin


def test_ece_of_a_calibrated_constant_predictor_is_zero():
    # 10 examples at confidence 0.7, 7 of them right.
    p = _probs([[0.7, 0.3]] * 10)
    y = torch.tensor([0] * 7 + [1] * 3)
    assert ece(p, y, bins=15) == pytest.approx(0.0, abs=1e-15)


# ----------------------------------------------------------------------------------------- entropy
def _authors_calc_entropy(probs):  # copied from the authors' utils.py (docs/protocol.md §6.2)
    return np.sum(-1 * probs * np.log(np.maximum(probs, 1e-5)), -1)


def test_entropy_by_hand_with_and_without_clamp():
    p = _probs([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [1 - 1e-6, 1e-6, 0.0]])
    exact = entropy(p, clamp=0)
    clamped = entropy(p)
    assert exact[0].item() == pytest.approx(math.log(2), rel=1e-15)
    assert exact[1].item() == pytest.approx(math.log(3), rel=1e-15)
    assert exact[2].item() == 0.0 and clamped[2].item() == 0.0        # 0 log 0 = 0, no NaN
    head = -(1 - 1e-6) * math.log(1 - 1e-6)
    assert exact[3].item() == pytest.approx(head - 1e-6 * math.log(1e-6), rel=1e-13)
    assert clamped[3].item() == pytest.approx(head - 1e-6 * math.log(1e-5), rel=1e-13)
    assert clamped[3] < exact[3]
    assert torch.equal(clamped[:3], exact[:3])           # no class below 1e-5 -> the clamp changes nothing
    assert exact.shape == (4,) and exact.dtype == F64
    assert entropy(p.float()).dtype == torch.float32


def test_entropy_matches_the_authors_calc_entropy():
    probs = torch.cat([_random_probs(200, 10, seed=1, temperature=8.0), _random_probs(200, 10, seed=2)])
    ref = _authors_calc_entropy(probs.numpy())
    np.testing.assert_allclose(entropy(probs).numpy(), ref, rtol=1e-12, atol=1e-15)
    assert (probs < 1e-5).any()                          # the clamp is exercised


def test_entropy_is_the_one_entropy_over_any_leading_shape_and_predictive_uses_it():
    from bbh.core.predictive import Predictive

    samples = _random_probs(30, 4, seed=7, temperature=6.0, shape=(5,))           # [S, N, K]
    samples[0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)                  # an exact zero: 0 log 0 = 0
    per_slice = torch.stack([entropy(s, clamp=0) for s in samples])
    torch.testing.assert_close(entropy(samples, clamp=0), per_slice, rtol=0, atol=0)
    assert entropy(samples, clamp=0)[0, 0] == 0.0
    assert entropy(samples)[0, 0] == 0.0                  # -1 log 1; the zeros contribute -0 log 1e-5 = 0
    pred = Predictive(samples)
    torch.testing.assert_close(pred.entropy, entropy(samples.mean(0), clamp=0), rtol=0, atol=0)
    torch.testing.assert_close(pred.expected_entropy, entropy(samples, clamp=0).mean(0), rtol=0, atol=0)
    torch.testing.assert_close(pred.entropy, predictive_entropy(samples), rtol=0, atol=0)
    torch.testing.assert_close(pred.mutual_information, mutual_information(samples), rtol=0, atol=0)
    assert pred.summary()["entropy"].equal(pred.entropy)
    # the authors' clamp differs from the exact entropy exactly where probabilities fall below 1e-5
    small = ((samples > 0) & (samples < 1e-5)).any(-1)
    assert small.any() and bool((entropy(samples) < entropy(samples, clamp=0))[small].all())
    assert bool((entropy(samples) == entropy(samples, clamp=0))[~small].all())
    with pytest.raises(ValueError, match="sum to 1"):
        entropy(torch.rand(2, 3, 4, dtype=F64))
    with pytest.raises(ValueError, match="clamp"):
        entropy(samples, clamp=-1.0)


def test_max_entropy_is_the_authors_value():
    for k in (2, 3, 5, 10):
        u = np.ones(k) / k
        assert max_entropy(k) == np.sum(-1 * u * np.log(u), -1)
        assert max_entropy(k) == pytest.approx(math.log(k), rel=1e-15)


# ----------------------------------------------------------------------------------------- entropy AUC
def _authors_calc_ent_auc(ent, max_ent):  # copied from the authors' utils.py (docs/protocol.md §6.2)
    hist, bin_edges = np.histogram(ent, density=True, bins=np.arange(0, max_ent, max_ent / 500))
    c_hist = np.cumsum(hist * np.diff(bin_edges))
    return np.sum(np.diff(bin_edges) * c_hist)


@pytest.mark.parametrize("k", [10, 5, 3])
def test_entropy_auc_is_bit_identical_to_the_authors_code(k):
    u = np.ones(k) / k
    max_ent = np.sum(-1 * u * np.log(u), -1)            # the authors' Hmax
    edges = np.arange(0, max_ent, max_ent / 500)
    assert len(edges) == (501 if k == 3 else 500)       # np.arange's float rounding, reproduced by numpy
    rng = np.random.default_rng(k)
    samples = [
        rng.uniform(0, max_ent, 1000),                  # ~0.2 % above the last edge: dropped
        rng.exponential(0.05 * max_ent, 1000),          # confident
        np.concatenate([rng.uniform(0, max_ent, 300), edges[rng.integers(0, len(edges), 50)], [max_ent]]),
        _authors_calc_entropy(_random_probs(500, k, seed=k, temperature=4.0).numpy()),
    ]
    for i, h in enumerate(samples):
        ref = _authors_calc_ent_auc(h, max_ent) / max_ent
        assert entropy_auc(h, k) == ref
        assert entropy_auc(torch.from_numpy(h), k) == ref
        assert 0 <= ref <= 0.998 + 1e-12
        if i != 2:
            # Hmax = log K instead of the authors' sum moves the edges by ~1 ulp: the same up to rounding,
            # except for entropies lying exactly on an edge (sample 2), which can change bin.
            alt = _authors_calc_ent_auc(h, np.log(k)) / np.log(k)
            assert entropy_auc(h, k) == pytest.approx(alt, rel=1e-9)


def test_entropy_auc_from_the_entropy_of_probabilities():
    probs = _random_probs(400, 10, seed=3, temperature=5.0)
    h = entropy(probs)
    ref = _authors_calc_ent_auc(_authors_calc_entropy(probs.numpy()), max_entropy(10)) / max_entropy(10)
    assert entropy_auc(h, 10) == pytest.approx(ref, rel=1e-12)
    assert entropy_auc(h.float(), 10) == pytest.approx(ref, rel=1e-4)   # float32 entropies are accepted


@pytest.mark.parametrize("k", [10, 5])
def test_entropy_auc_edge_cases(k):
    h_max = max_entropy(k)
    # All confident: every entropy in the first bin -> CDF 1 on all 499 bins -> 499/500.
    assert entropy_auc(torch.zeros(100, dtype=F64), k) == pytest.approx(0.998, rel=1e-12)
    assert entropy_auc(entropy(torch.eye(k, dtype=F64)), k) == pytest.approx(0.998, rel=1e-12)
    # All in the last bin (just below 0.998 Hmax): CDF 1 only there -> 1/500.
    assert entropy_auc(torch.full((50,), 0.9975 * h_max, dtype=F64), k) == pytest.approx(0.002, rel=1e-9)
    # All at maximum entropy: all dropped (above the last edge). The authors' code gives NaN; we give 0.
    h_top = entropy(torch.full((20, k), 1 / k, dtype=F64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(_authors_calc_ent_auc(h_top.numpy(), h_max))
    assert entropy_auc(h_top, k) == 0.0
    # A single example below the last edge carries the whole (renormalised) CDF: the authors' quirk.
    h_mix = torch.cat([h_top, torch.zeros(1, dtype=F64)])
    assert entropy_auc(h_mix, k) == pytest.approx(0.998, rel=1e-12)



@pytest.mark.parametrize("k", [10, 5, 3])
def test_entropy_auc_se_is_the_standard_error_of_the_mean_the_auc_is(k):
    """entropy_auc is the mean over the kept examples of (e_J - e_bin) / Hmax; its SE is their std / sqrt(n)."""
    h_max = max_entropy(k)
    edges = np.arange(0, h_max, h_max / 500)
    rng = np.random.default_rng(k)
    h = np.concatenate([rng.uniform(0, h_max, 400), edges[rng.integers(0, len(edges), 20)], [edges[-1], h_max]])
    kept = h[h <= edges[-1]]                                              # h_max itself is dropped
    left = np.array([edges[edges <= v].max() if v < edges[-1] else edges[-2] for v in kept])
    terms = (edges[-1] - left) / h_max
    assert terms.mean() == pytest.approx(entropy_auc(h, k), abs=1e-12)
    assert metrics.entropy_auc_se(h, k) == pytest.approx(terms.std(ddof=1) / math.sqrt(kept.size), rel=1e-12)
    assert metrics.entropy_auc_se(np.zeros(50), k) == 0.0                 # all in the first bin: no spread
    assert math.isnan(metrics.entropy_auc_se(np.array([0.1]), k))          # one example: no SE


def test_set_metrics_store_the_entropy_auc_se():
    from bbh.evaluation.api import set_metrics

    mean = _random_probs(300, 5, seed=1, temperature=2.0)
    summary = {"mean": mean, "entropy": entropy(mean, clamp=0), "expected_entropy": entropy(mean, clamp=0),
               "mutual_information": torch.zeros(300, dtype=F64)}
    out = set_metrics(summary, None, 5)
    assert out.entropy_auc_se == metrics.entropy_auc_se(entropy(mean), 5) > 0
    assert out.to_dict()["entropy_auc_se"] == out.entropy_auc_se

# ----------------------------------------------------------------------------------------- decomposition
def test_mutual_information_is_zero_when_samples_agree():
    p = _random_probs(7, 5, seed=4)
    samples = p.unsqueeze(0).expand(6, -1, -1).clone()
    mi = mutual_information(samples)
    assert (mi >= 0).all() and mi.max() <= 1e-15          # zero up to the rounding of the mean over samples
    assert torch.equal(mutual_information(torch.stack([p, p])), torch.zeros(7, dtype=F64))   # (p + p) / 2 = p
    torch.testing.assert_close(predictive_entropy(samples), entropy(p, clamp=0), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(expected_entropy(samples), entropy(p, clamp=0), rtol=1e-14, atol=1e-15)


def test_decomposition_by_hand_when_samples_disagree():
    samples = torch.tensor([[[1.0, 0.0], [0.9, 0.1]], [[0.0, 1.0], [0.1, 0.9]]], dtype=F64)   # S=2, N=2, K=2
    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    torch.testing.assert_close(predictive_entropy(samples), torch.tensor([math.log(2), math.log(2)], dtype=F64))
    torch.testing.assert_close(expected_entropy(samples), torch.tensor([0.0, h09], dtype=F64))
    torch.testing.assert_close(mutual_information(samples), torch.tensor([math.log(2), math.log(2) - h09],
                                                                         dtype=F64))


def test_decomposition_adds_up_on_random_samples():
    samples = _random_probs(50, 10, seed=5, temperature=3.0, shape=(8,))
    pred, exp, mi = predictive_entropy(samples), expected_entropy(samples), mutual_information(samples)
    assert pred.shape == exp.shape == mi.shape == (50,)
    assert (mi > 0).all()
    torch.testing.assert_close(pred, exp + mi, rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------------------- OOD
def test_ood_metrics_by_hand():
    r = ood_metrics(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))
    assert r["auroc"] == 0.875                           # pairs: 1, 1, 1/2 (tie), 1
    # OOD positive, thresholds 2, 1: P = 1, 2/3; R = 1/2, 1 -> AP = 1/2 + 1/2 * 2/3
    assert r["aupr_out"] == pytest.approx(0.5 + 1 / 3, rel=1e-15)
    # in positive, score -s, thresholds 0, -1: P = 1, 2/3; R = 1/2, 1
    assert r["aupr_in"] == pytest.approx(0.5 + 1 / 3, rel=1e-15)
    assert r["fpr_at_95_tpr"] == 0.5                     # k = ceil(1.9) = 2: threshold 1, in-score 1 counts
    perfect = ood_metrics(torch.zeros(3), torch.ones(4))
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr_at_95_tpr": 0.0}
    worst = ood_metrics(torch.ones(3), torch.zeros(4))
    assert worst["auroc"] == 0.0 and worst["fpr_at_95_tpr"] == 1.0


def test_fpr_at_95_tpr_constructed():
    out = torch.arange(1, 21, dtype=F64)                # n_out = 20: 19 of them (95 %) are >= 2
    r = ood_metrics(torch.tensor([0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 10.0, 30.0]), out)
    assert r["fpr_at_95_tpr"] == 5 / 8                   # 2.0 (tie: counted), 2.5, 3, 10, 30
    out100 = torch.arange(100, dtype=F64)              # k = 95 -> threshold 5
    assert ood_metrics(torch.arange(10, dtype=F64), out100)["fpr_at_95_tpr"] == 0.5
    out10 = torch.arange(10, dtype=F64)                 # k = ceil(9.5) = 10 -> threshold = min = 0
    assert ood_metrics(torch.tensor([-1.0, 0.0, 5.0]), out10)["fpr_at_95_tpr"] == 2 / 3
    # Ties at the threshold: TPR goes above 95 % and every tied in-distribution example counts.
    out_tied = torch.tensor([1.0] * 10 + [5.0] * 10)
    assert ood_metrics(torch.tensor([1.0, 1.0, 0.5, 0.0]), out_tied)["fpr_at_95_tpr"] == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ood_metrics_match_scikit_learn_with_ties(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n_in, n_out = int(rng.integers(5, 300)), int(rng.integers(5, 300))
    if seed % 2:   # heavily tied integer scores
        s_in, s_out = rng.integers(0, 6, n_in).astype(float), rng.integers(2, 8, n_out).astype(float)
    else:          # continuous with a block of exact ties across the two sets
        s_in = np.concatenate([rng.normal(0, 1, n_in), [0.5] * 7])
        s_out = np.concatenate([rng.normal(1, 1, n_out), [0.5] * 5])
    r = ood_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out))
    labels = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
    s = np.concatenate([s_in, s_out])
    assert r["auroc"] == pytest.approx(skm.roc_auc_score(labels, s), rel=1e-12)
    assert r["aupr_out"] == pytest.approx(skm.average_precision_score(labels, s), rel=1e-12)
    assert r["aupr_in"] == pytest.approx(skm.average_precision_score(1 - labels, -s), rel=1e-12)
    # FPR at 95 % TPR from the definition, threshold by brute force over the observed OOD scores.
    thresholds = [t for t in np.unique(s_out) if (s_out >= t).mean() >= 0.95]
    t_star = max(thresholds)
    assert r["fpr_at_95_tpr"] == (s_in >= t_star).mean()
    assert all(isinstance(v, float) for v in r.values())


def test_ood_score_kinds():
    confident = torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 3, dtype=F64)
    uniform = torch.full((3, 4), 0.25, dtype=F64)
    mean = torch.stack([confident[0], uniform[0]])                 # [N=2, K]
    disagree = torch.eye(4, dtype=F64)[:3].unsqueeze(1)             # 3 one-hot samples that disagree
    samples = torch.stack([confident, uniform], 1)                 # [S=3, N=2, K], samples agree
    for kind in ("entropy", "max_prob"):
        s = ood_score(mean, kind)
        assert s.shape == (2,) and s[1] > s[0]
        torch.testing.assert_close(ood_score(samples, kind), s)    # samples -> scored through their mean
    torch.testing.assert_close(ood_score(mean, "entropy"), entropy(mean, clamp=0))
    torch.testing.assert_close(ood_score(mean, "max_prob"), torch.tensor([0.03, 0.75], dtype=F64))
    mi = ood_score(torch.cat([samples, torch.cat([disagree, disagree], 1)], 0), "mutual_information")
    assert mi.shape == (2,) and (mi > 0).all()
    assert ood_score(samples, "mutual_information").abs().max() == 0   # agreeing samples: no epistemic part


# ----------------------------------------------------------------------------------------- validation
def test_input_validation():
    p, y = _probs(P4), torch.tensor(Y4)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        accuracy(p[0], y)
    with pytest.raises(ValueError, match="must have shape \\[N\\]"):
        nll(p, y[:3])
    with pytest.raises(ValueError, match="integer class indices"):
        brier_score(p, y.double())
    with pytest.raises(ValueError, match="must lie in"):
        error_rate(p, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="sum to 1"):
        ece(torch.rand(4, 3, dtype=F64) + 0.5, y)

    with pytest.raises(ValueError, match="negative"):
        entropy(_probs([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="NaN"):
        entropy(_probs([[math.nan, 1.0]]))
    with pytest.raises(ValueError, match="floating-point"):
        entropy(torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="empty"):
        entropy(torch.zeros(0, 3, dtype=F64))
    with pytest.raises(TypeError):
        accuracy(P4, y)
    with pytest.raises(ValueError, match="bins"):
        reliability(p, y, bins=0)
    with pytest.raises(ValueError, match="clamp"):
        entropy(p, clamp=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        entropy_auc(torch.zeros(3), 1)
    with pytest.raises(ValueError, match="1-d"):
        entropy_auc(torch.zeros(3, 2), 10)
    with pytest.raises(ValueError, match="1-d"):
        entropy_auc(np.zeros(0), 10)
    with pytest.raises(ValueError, match="NaN"):
        entropy_auc(np.array([0.1, np.nan]), 10)
    with pytest.raises(ValueError, match=r"\[S, N, K\]"):
        mutual_information(p)
    with pytest.raises(ValueError, match=r"\[S, N, K\]"):
        predictive_entropy(p)
    with pytest.raises(ValueError, match=r"\[S, N, K\]"):
        ood_score(p, "mutual_information")
    with pytest.raises(ValueError, match="unknown OOD score"):
        ood_score(p, "energy")
    with pytest.raises(ValueError, match="scores_in"):
        ood_metrics(torch.zeros(0), torch.ones(3))
    with pytest.raises(ValueError, match="scores_out"):
        ood_metrics(torch.zeros(3), torch.ones(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics(torch.tensor([0.0, math.inf]), torch.ones(3))


def test_module_constants():
    assert metrics.ENTROPY_CLAMP == 1e-5 and metrics.ENTROPY_AUC_BINS == 500
    assert set(metrics.OOD_SCORES) == {"entropy", "mutual_information", "max_prob"}

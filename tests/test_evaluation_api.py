"""``bbh.evaluate`` on a tiny 3-class problem: the numbers against ``method.predict`` by hand, OOD, attacks, the
RNG and mode contracts, data forms, and strict-JSON results."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import bbh
from bbh.evaluation import AttackSpec, EvaluationResults, SetMetrics, metrics
from bbh.evaluation.api import json_safe

CENTRES = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return CENTRES[y] + 0.8 * torch.randn(n, 2, generator=g), y


def _far(n: int, seed: int) -> torch.Tensor:
    """Inputs far from every training blob: 8-12 below the origin, where the network extrapolates the boundary
    between classes 0 and 1. (ReLU networks are confident far out along most directions — Hein et al. 2019 —
    so a ring around the data would not test the scores' orientation.)"""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(n, generator=g), -8 - 4 * torch.rand(n, generator=g)], -1)


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    m = bbh.create("bbh", bbh.models.MLP(2, 3, hidden=(16,)), hidden=(8,))
    bbh.Trainer(m, lr=1e-2, steps=150, progress=False, seed=0).fit(_blobs(300, 0))
    return m


@pytest.fixture(scope="module")
def data():
    x, y = _blobs(64, 1)
    return x, y, _far(48, 2)


def _ece_by_hand(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    conf, pred = probs.double().max(-1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            acc = (pred[inside] == y[inside]).double().mean().item()
            total += inside.sum().item() / len(y) * abs(acc - conf[inside].mean().item())
    return total


def test_test_metrics_equal_the_values_by_hand_from_method_predict(method, data):
    x, y, x_ood = data
    res = bbh.evaluate(method, test=(x, y), ood={"noise": x_ood}, n_samples=20, seed=5, batch_size=64)
    torch.manual_seed(5)  # the same draws: one batch of 64, seeded as the evaluation
    pred = method.predict(x, 20)
    mean = pred.mean.double()
    assert isinstance(res, EvaluationResults) and isinstance(res.test, SetMetrics)
    assert res.num_classes == 3 and res.samples == 20 and res.test.n == 64
    assert res.test.error_percent == pytest.approx(100 * (mean.argmax(-1) != y).double().mean().item(), abs=1e-12)
    assert res.test.nll == pytest.approx(-mean.gather(1, y[:, None]).log().mean().item(), rel=1e-6)
    assert res.test.brier == pytest.approx(((mean - torch.eye(3, dtype=mean.dtype)[y]) ** 2).sum(-1).mean().item(),
                                           rel=1e-6)
    assert res.test.ece == pytest.approx(_ece_by_hand(mean, y), abs=1e-6)
    h = -(mean * mean.log()).sum(-1)
    assert res.test.mean_entropy == pytest.approx(h.mean().item() / math.log(3), rel=1e-5)
    torch.testing.assert_close(res.predictions["test"]["mean"], pred.mean)
    assert sum(res.test.reliability["count"]) == 64
    assert res.test.error_percent < 10  # the blobs are learnt


def test_ood_far_away_inputs_are_detected_and_unlabelled_metrics(method, data):
    x, y, x_ood = data
    res = bbh.evaluate(method, test=(x, y), ood={"noise": x_ood, "blobs": x[:20]}, n_samples=20, seed=0)
    noise = res.ood["noise"]
    assert set(noise.detection) == {"entropy", "mutual_information", "max_prob"}
    assert noise.detection["entropy"]["auroc"] > 0.8 and noise.detection["mutual_information"]["auroc"] > 0.8
    assert res.ood["blobs"].detection["entropy"]["auroc"] < 0.8  # test inputs are not told apart from the test set
    test, far = res.predictions["test"], res.predictions["noise"]
    assert noise.detection["entropy"] == metrics.ood_metrics(test["entropy"], far["entropy"])
    assert noise.detection["max_prob"] == metrics.ood_metrics(-test["mean"].max(-1).values, -far["mean"].max(-1).values)
    assert noise.metrics.n == 48 and noise.metrics.error_percent is None and noise.metrics.reliability is None
    assert noise.metrics.mean_mutual_information > res.test.mean_mutual_information
    for m in noise.detection["entropy"].values():
        assert 0.0 <= m <= 1.0
    # a single OOD set is named "ood"
    single = bbh.evaluate(method, test=(x, y), ood=x_ood, n_samples=5, seed=0)
    assert list(single.ood) == ["ood"]


def test_number_of_classes_comes_from_the_outputs():
    torch.manual_seed(1)
    five = bbh.create("map", bbh.models.MLP(2, 5, hidden=(8,)))
    x = torch.randn(10, 2)
    res = bbh.evaluate(five, test=(x, torch.randint(0, 5, (10,))), n_samples=3)
    assert res.num_classes == 5 and res.samples == 1  # MAP: one draw whatever n_samples is
    assert res.predictions["test"]["mean"].shape == (10, 5)


def test_rng_state_and_training_mode_are_restored(method, data):
    x, y, x_ood = data
    seen = []

    def progress(step: str) -> None:
        seen.append((step, method.training, method.model.training))

    for seed in (3, None):
        for mode in (True, False):
            method.train(mode)
            before = torch.get_rng_state()
            bbh.evaluate(method, test=(x, y), ood=x_ood, attacks={"fgsm": [0.0, 0.1]}, n_samples=4, seed=seed,
                         progress=progress)
            # with a seed the caller's RNG is untouched; without one the draws come from (and advance) it
            assert torch.equal(torch.get_rng_state(), before) is (seed is not None)
            assert method.training is mode and all(m.training is mode for m in method.modules())
    assert {s for s, _, _ in seen} == {"test", "ood:ood", "attack:fgsm"}
    assert not any(a or b for _, a, b in seen)  # eval mode throughout
    method.eval()


def test_same_seed_same_numbers_and_different_seed_different(method, data):
    x, y, x_ood = data
    kw = dict(test=(x, y), ood={"noise": x_ood}, attacks={"fgsm": [0.0, 0.2]}, n_samples=8)
    a = bbh.evaluate(method, seed=11, **kw).to_dict()
    b = bbh.evaluate(method, seed=11, **kw).to_dict()
    c = bbh.evaluate(method, seed=12, **kw).to_dict()
    assert a == b
    assert a["test"]["nll"] != c["test"]["nll"]


def test_dataloader_and_tensor_pair_give_identical_results(method, data):
    x, y, x_ood = data
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    ood_loader = DataLoader(TensorDataset(x_ood), batch_size=16)
    kw = dict(attacks={"fgsm": [0.0, 0.3]}, n_samples=6, seed=2, batch_size=16)
    from_loader = bbh.evaluate(method, test=loader, ood={"noise": ood_loader}, **kw)
    from_tensors = bbh.evaluate(method, test=(x, y), ood={"noise": x_ood}, **kw)
    assert from_loader.to_dict() == from_tensors.to_dict()
    # a transform is applied to every batch: halved inputs, doubled again, give the same numbers
    halved = bbh.evaluate(method, test=(x / 2, y), ood={"noise": x_ood / 2}, transform=lambda t: t * 2, **kw)
    assert halved.to_dict() == from_tensors.to_dict()


def test_fgsm_curve_starts_at_the_clean_accuracy_of_the_attacked_images(method, data):
    x, y, _ = data
    res = bbh.evaluate(method, test=(x, y), attacks=AttackSpec(epsilons=(0.0, 0.5, 2.0), images=20), n_samples=10,
                       seed=0)
    curve = res.adversarial["fgsm"]
    assert [p.epsilon for p in curve.points] == [0.0, 0.5, 2.0]
    assert curve.spec.samples == 10 and curve.spec.gradient == "authors"
    clean = (res.predictions["test"]["mean"][:20].argmax(-1) == y[:20]).double().mean().item()
    assert curve.points[0].accuracy == clean
    clean_entropy = metrics.entropy(res.predictions["test"]["mean"][:20]).double().mean().item() / math.log(3)
    assert curve.points[0].entropy == pytest.approx(clean_entropy, rel=1e-12)  # the clean predictions, reused
    assert curve.points[-1].accuracy < clean
    assert set(curve.rows()[0]) == {"epsilon", "accuracy", "entropy", "entropy_auc"}
    # the dict form with the paper's grid by default, and PGD
    res = bbh.evaluate(method, test=(x[:8], y[:8]), attacks={"fgsm": None, "pgd": [0.0, 0.5]}, n_samples=4, seed=0)
    assert [p.epsilon for p in res.adversarial["fgsm"].points] == list(bbh.evaluation.attacks.PAPER_EPSILONS)
    assert res.adversarial["pgd"].spec.samples == 4 and len(res.adversarial["pgd"].points) == 2


def test_to_dict_is_strict_json(method, data):
    x, y, x_ood = data
    res = bbh.evaluate(method, test=(x, y), ood={"noise": x_ood}, attacks={"fgsm": [0.0, 0.1]}, n_samples=4, seed=0)
    d = res.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    conf = d["test"]["reliability"]["confidence"]
    assert None in conf  # empty bins: NaN in the metrics, null in JSON
    assert "predictions" not in d and d["num_classes"] == 3
    assert json_safe({"a": (float("nan"), float("inf"), 1.5, torch.tensor(2.0))}) == {"a": [None, None, 1.5, 2.0]}


def test_errors(method, data):
    x, y, x_ood = data
    with pytest.raises(ValueError, match="labelled"):
        bbh.evaluate(method, test=x, attacks="fgsm", n_samples=2)
    with pytest.raises(ValueError, match="'test'"):
        bbh.evaluate(method, test=(x, y), ood={"test": x_ood}, n_samples=2)
    with pytest.raises(ValueError, match="n_samples"):
        bbh.evaluate(method, test=(x, y), n_samples=0)
    with pytest.raises(ValueError, match="unknown attack"):
        bbh.evaluate(method, test=(x, y), attacks={"cw": None}, n_samples=2)
    with pytest.raises(TypeError, match="iterable of batches"):
        bbh.evaluate(method, test=3, n_samples=2)
    unlabelled = bbh.evaluate(method, test=x, n_samples=2)
    assert unlabelled.test.error_percent is None and unlabelled.test.entropy_auc >= 0

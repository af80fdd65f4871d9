"""Tests of the training objective (:func:`bbh.elbo.elbo`) and the KL annealing schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import bbh
from bbh.core.elbo import ConstantWeight, LinearAnneal, LossTerms, ToyAnneal, as_schedule, elbo

F64 = torch.float64


# ----------------------------------------------------------------------------------------- elbo()
def test_elbo_arithmetic():
    nll = torch.tensor(0.75, dtype=F64)
    kl = torch.tensor(1200.0, dtype=F64)
    terms = elbo(nll, kl, num_data=600, kl_weight=0.25)
    assert isinstance(terms, LossTerms)
    # total = nll + w * kl / N = 0.75 + 0.25 * 1200 / 600 = 1.25
    assert terms.total.item() == pytest.approx(1.25, rel=1e-15)
    assert terms.nll is nll and terms.kl is kl and terms.kl_weight == 0.25
    assert terms.as_floats() == {"loss": 1.25, "nll": 0.75, "kl": 1200.0, "kl_weight": 0.25}
    # The default weight is 1 (the plain ELBO).
    assert elbo(nll, kl, num_data=600).total.item() == pytest.approx(0.75 + 2.0, rel=1e-15)
    # Weight 0 drops the KL.
    assert elbo(nll, kl, num_data=600, kl_weight=0.0).total.item() == pytest.approx(0.75, rel=1e-15)


def test_elbo_accepts_a_float_kl_and_keeps_dtype_and_gradients():
    nll = torch.tensor(2.0, dtype=F64, requires_grad=True)
    terms = elbo(nll, 0.0, num_data=10)
    assert terms.kl.dtype == F64 and terms.kl.item() == 0.0
    assert terms.total.item() == 2.0
    kl = torch.tensor(30.0, dtype=F64, requires_grad=True)
    terms = elbo(nll, kl, num_data=10, kl_weight=0.5)
    terms.total.backward()
    assert nll.grad.item() == 1.0
    assert kl.grad.item() == pytest.approx(0.5 / 10)  # d total / d kl = w / N


def test_elbo_extras_are_logged():
    terms = elbo(torch.tensor(1.0), torch.tensor(2.0), num_data=4)
    terms.extras["disc_loss"] = 0.3
    assert terms.as_floats()["disc_loss"] == 0.3


@pytest.mark.parametrize("num_data", [0, -5, 2.5, 10.0, True, None, "100"])
def test_elbo_rejects_bad_num_data(num_data):
    with pytest.raises(ValueError, match="num_data must be a positive int"):
        elbo(torch.tensor(1.0), torch.tensor(1.0), num_data=num_data)


@pytest.mark.parametrize("weight", [-1e-3, -1.0, math.inf, math.nan])
def test_elbo_rejects_bad_kl_weight(weight):
    with pytest.raises(ValueError, match="kl_weight must be finite and >= 0"):
        elbo(torch.tensor(1.0), torch.tensor(1.0), num_data=10, kl_weight=weight)


# ----------------------------------------------------------------------------------------- batch-size invariance
N_DATA = 20


def _data(n: int = N_DATA, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=F64), torch.randint(0, 4, (n,), generator=g)


def _map_method() -> bbh.MAP:
    torch.manual_seed(0)
    model = bbh.models.MLP(3, 4, hidden=(6,)).double()
    method = bbh.create("map", model, prior_scale=0.5)
    # Make the penalty (the "KL" of MAP) large enough that a wrong scaling of it would be visible.
    assert method.penalty().item() > 1.0
    return method


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


@pytest.mark.parametrize("kl_weight", [1.0, 0.3])
@pytest.mark.parametrize("batch_size", [1, 7, N_DATA])
def test_size_weighted_minibatch_losses_sum_to_full_batch_loss(batch_size, kl_weight):
    """sum_b (B_b / N) * loss_b = loss_full: loss_b = mean_b NLL + w KL / N and sum_b B_b / N = 1."""
    method = _map_method()
    x, y = _data()
    full = method.loss(x, y, num_data=N_DATA, kl_weight=kl_weight)
    parts = [(sl.stop - sl.start, method.loss(x[sl], y[sl], num_data=N_DATA, kl_weight=kl_weight))
             for sl in _batches(N_DATA, batch_size)]
    if batch_size == 7:
        assert [b for b, _ in parts] == [7, 7, 6]  # really uneven
    weighted = sum(b / N_DATA * t.total for b, t in parts)
    torch.testing.assert_close(weighted, full.total, rtol=1e-12, atol=1e-12)
    # Every minibatch sees the whole KL / N, not a share of it.
    for _, t in parts:
        torch.testing.assert_close(t.kl, full.kl)
    # N * loss is the negative ELBO of the data set: sum_i -log p(y_i | x_i) + w * KL.
    nll_sum = -method.likelihood.log_prob(method.model(x), y).sum()
    torch.testing.assert_close(N_DATA * full.total, nll_sum + kl_weight * full.kl, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 5, 10, N_DATA])
def test_plain_mean_over_equal_minibatches_equals_full_batch_loss(batch_size):
    method = _map_method()
    x, y = _data()
    full = method.loss(x, y, num_data=N_DATA).total
    losses = [method.loss(x[sl], y[sl], num_data=N_DATA).total for sl in _batches(N_DATA, batch_size)]
    torch.testing.assert_close(torch.stack(losses).mean(), full, rtol=1e-12, atol=1e-12)


def test_expected_minibatch_loss_is_independent_of_batch_size():
    """E over uniformly drawn size-B minibatches of loss_B = loss_full, for every B (exact enumeration)."""
    n = 6
    method = _map_method()
    x, y = _data(n, seed=1)
    full = method.loss(x, y, num_data=n, kl_weight=1.0).total
    expectations = []
    for b in range(1, n + 1):
        losses = [method.loss(x[list(idx)], y[list(idx)], num_data=n).total
                  for idx in itertools.combinations(range(n), b)]
        expectations.append(torch.stack(losses).mean())
    for e in expectations:
        torch.testing.assert_close(e, full, rtol=1e-12, atol=1e-12)
    # Control: scaling the KL by B / N instead of 1 / N (a common mistake) would make it depend on B.
    kl = method.penalty().detach()
    nll_full = method.mean_nll(method.model(x), y).detach()
    wrong = [nll_full + kl * b / n**2 for b in (1, n)]
    assert abs(float(wrong[0] - wrong[1])) > 1e-2


@pytest.mark.parametrize("likelihood_samples", ["one", "average", "mixture"])
def test_bbh_loss_is_batch_size_invariant_for_fixed_draws(likelihood_samples):
    """BbH's loss decomposes over the batch the same way once its random draws are held fixed."""
    torch.manual_seed(0)
    model = bbh.models.MLP(3, 4, hidden=(5,)).double()
    method = bbh.create("bbh", model, hidden=(8, 8), draws_per_step=3, likelihood_samples=likelihood_samples)
    method.double()
    x, y = _data()

    def loss(sl: slice) -> torch.Tensor:
        torch.manual_seed(42)  # same z and the same prior samples for the KL estimate on every call
        return method.loss(x[sl], y[sl], num_data=N_DATA, kl_weight=0.7).total

    full = loss(slice(0, N_DATA))
    for batch_size in (1, 7, N_DATA):
        weighted = sum((sl.stop - sl.start) / N_DATA * loss(sl) for sl in _batches(N_DATA, batch_size))
        torch.testing.assert_close(weighted, full, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------- schedules
def test_linear_anneal_in_epochs_matches_the_authors_mnist_schedule():
    # docs/protocol.md §3: s = 5, L = 15 epochs, B = 550 batches per epoch: ramp over iterations 2750 -> 11000.
    sched = LinearAnneal(5, 15, unit="epoch")
    spe = 550
    assert sched(0, spe) == 0.0
    assert sched(2749, spe) == 0.0
    assert sched(2750, spe) == 0.0
    assert sched(2751, spe) == pytest.approx(1 / 8250)
    assert sched(2750 + 8250 // 2, spe) == pytest.approx(0.5)  # midpoint 6875
    assert sched(10999, spe) == pytest.approx(1 - 1 / 8250)
    assert sched(10999, spe) < 1.0
    assert sched(11000, spe) == 1.0
    assert sched(11001, spe) == 1.0
    assert sched(10**7, spe) == 1.0
    # Linear in between: equal increments for equal steps.
    steps = list(range(2750, 11001, 275))
    values = [sched(t, spe) for t in steps]
    diffs = [b - a for a, b in zip(values, values[1:])]
    assert all(d == pytest.approx(275 / 8250, rel=1e-9) for d in diffs)
    # The CIFAR schedule (s = 20, B = 250): 5000 -> 8750.
    cifar = LinearAnneal(20, 15)
    assert cifar(4999, 250) == 0.0 and cifar(5000 + 1875, 250) == pytest.approx(0.5) and cifar(8750, 250) == 1.0


def test_linear_anneal_in_steps():
    sched = LinearAnneal(10, 20, unit="step")
    assert sched(0) == 0.0 and sched(10) == 0.0
    assert sched(15) == pytest.approx(0.25)
    assert sched(20) == pytest.approx(0.5)
    assert sched(30) == 1.0 and sched(31) == 1.0
    # steps_per_epoch is ignored in step units
    assert sched(20, 550) == pytest.approx(0.5)
    # start 0: ramps from the first step
    assert LinearAnneal(0, 4, unit="step")(1) == pytest.approx(0.25)


@pytest.mark.parametrize("spe", [None, 0])
def test_linear_anneal_in_epochs_needs_steps_per_epoch(spe):
    with pytest.raises(ValueError, match="steps_per_epoch"):
        LinearAnneal(5, 15, unit="epoch")(100, spe)


@pytest.mark.parametrize("kwargs, match", [
    (dict(unit="epochs"), "unknown unit 'epochs'"),
    (dict(unit="iteration"), "expected 'epoch' or 'step'"),
    (dict(start=-1), "start >= 0"),
    (dict(length=0), "length > 0"),
    (dict(length=-3), "length > 0"),
])
def test_linear_anneal_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearAnneal(**kwargs)


def test_toy_anneal_matches_the_authors_notebook():
    # clip(10 / (i + 1) - 1, 0, 1): 1 for i <= 4, then 0.667, 0.4286, 0.25, 0.111, 0 from i = 9 (docs/protocol.md §1.4)
    sched = ToyAnneal()
    assert [sched(i) for i in range(5)] == [1.0] * 5
    expected = {5: 2 / 3, 6: 3 / 7, 7: 0.25, 8: 1 / 9}
    for i, v in expected.items():
        assert sched(i) == pytest.approx(v, abs=1e-12)
    assert round(sched(5), 3) == 0.667 and round(sched(6), 4) == 0.4286 and round(sched(8), 3) == 0.111
    assert all(sched(i) == 0.0 for i in range(9, 300))
    # The older notebook's offset 2: 1 for i <= 2, 0.5 at i = 3, 0 from i = 4.
    old = ToyAnneal(offset=2)
    assert [old(i) for i in range(6)] == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.0, 0.0])
    assert "offset=1" in repr(sched)


def test_constant_weight():
    assert ConstantWeight()(0) == 1.0 and ConstantWeight(0.3)(10**6, 550) == 0.3
    with pytest.raises(ValueError):
        ConstantWeight(-0.1)
    with pytest.raises(ValueError):
        ConstantWeight(math.nan)


def test_as_schedule():
    s = as_schedule(None)
    assert isinstance(s, ConstantWeight) and s(0) == 1.0 and s(12345, 7) == 1.0
    s = as_schedule(0.25)
    assert isinstance(s, ConstantWeight) and s(99) == 0.25
    s = as_schedule(2)
    assert isinstance(s, ConstantWeight) and s(0) == 2.0 and isinstance(s(0), float)
    anneal = LinearAnneal(1, 2)
    assert as_schedule(anneal) is anneal

    def fn(step, steps_per_epoch=None):
        return 0.5

    assert as_schedule(fn) is fn
    for bad in (True, "linear", [1.0]):
        with pytest.raises(TypeError, match="kl_anneal"):
            as_schedule(bad)
    with pytest.raises(ValueError):
        as_schedule(-1.0)


def test_trainer_feeds_steps_per_epoch_to_the_schedule():
    """With 4 batches per epoch, LinearAnneal(1, 2) in epochs ramps over steps 4 -> 12."""
    torch.manual_seed(0)
    model = bbh.models.MLP(3, 4, hidden=(4,)).double()
    method = bbh.create("map", model)
    x, y = _data(16)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)
    trainer = bbh.Trainer(method, epochs=4, kl_anneal=LinearAnneal(1, 2), device="cpu", progress=False, seed=0)
    history = trainer.fit(loader)
    # per-epoch mean of kl_weight: epoch 0 steps 0..3 -> 0; epoch 1 steps 4..7 -> (0 + 1 + 2 + 3) / 8 / 4;
    # epoch 2 steps 8..11 -> (4 + 5 + 6 + 7) / 8 / 4; epoch 3 -> 1
    assert [h["kl_weight"] for h in history] == pytest.approx([0.0, 0.1875, 0.6875, 1.0])


def test_schedule_codec_round_trips_and_fills_the_papers_defaults():
    """One codec (bbh.elbo) reads every schedule written as data: TOML configs and checkpoints."""
    from bbh.core.elbo import scale_schedule_spec, schedule_from_spec, schedule_to_spec

    for schedule in (ConstantWeight(0.3), LinearAnneal(2, 7, unit="step"), ToyAnneal(0.5)):
        back = schedule_from_spec(schedule_to_spec(schedule))
        assert type(back) is type(schedule) and repr(back) == repr(schedule)
    assert schedule_from_spec(None) is None and schedule_from_spec("none") is None
    assert schedule_from_spec(schedule_to_spec(None)) is None
    default = schedule_from_spec({"kind": "linear"})  # the paper's 5 and 15 epochs, stated once
    assert (default.start, default.length, default.unit) == (5.0, 15.0, "epoch")
    assert schedule_from_spec(0.5)(123) == 0.5
    for bad in ("linear", {"kind": "cosine"}, {"kind": "linear", "begin": 3}, True, {"kind": "custom", "repr": "f"}):
        with pytest.raises(ValueError):
            schedule_from_spec(bad)
    assert scale_schedule_spec({"kind": "linear", "start": 4, "length": 10, "unit": "step"}, 0.5) == {
        "kind": "linear", "start": 2.0, "length": 5.0, "unit": "step"}
    assert scale_schedule_spec(0.25, 0.1) == 0.25

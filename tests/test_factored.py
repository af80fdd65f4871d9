"""Factored (low-rank) gradients: collected only inside an optimizer's own ``factored_backward()``, and the
optimizers' block-wise update from factors equals the materialised one."""

from __future__ import annotations

import pytest
import torch

import bbh
from bbh.backends import factored
from bbh.backends.factored import FactorCollector, collecting, offer_factors
from bbh.training.optim import Adam, RMSPropTF, clip_grad_norm_, grad_norm, has_factors, make_optimizer


def _pair(shape=(37, 6)):
    w = torch.randn(*shape)
    return torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())


@pytest.mark.parametrize("opt", ["adam", "rmsprop-tf"])
@pytest.mark.parametrize("with_dense", [False, True])
def test_factored_update_equals_the_materialised_one(opt, with_dense):
    a, b = _pair()
    if opt == "adam":
        ref, fac = torch.optim.Adam([a], lr=1e-2), Adam([b], lr=1e-2, block_bytes=7 * 6 * 4)  # 7-row blocks
    else:
        ref, fac = RMSPropTF([a], lr=1e-2), RMSPropTF([b], lr=1e-2, block_bytes=7 * 6 * 4)
    for _ in range(4):
        parts = [(torch.randn(37, 5), torch.randn(5, 6)) for _ in range(2)]  # two backward passes accumulate
        dense = torch.randn(37, 6) if with_dense else None
        a.grad = sum(left @ right for left, right in parts) + (0 if dense is None else dense)
        b.grad = None if dense is None else dense.clone()
        for left, right in parts:
            fac.collector.add(b, left, right)
        assert has_factors(fac)
        ref.step()
        fac.step()
        assert not has_factors(fac)  # the step consumed them
        ref.zero_grad()
        fac.zero_grad()
        assert b.grad is None
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def _method(seed: int = 0, hidden=(8, 16)) -> bbh.Method:
    torch.manual_seed(seed)
    return bbh.create("bbh", bbh.models.MLP(3, 3, hidden=(8,)), hidden=hidden)


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    return x, (x @ torch.randn(3, 3, generator=g)).argmax(1)


def _heads(method):
    return [h.weight for h in method.hypernet.heads]


@pytest.mark.parametrize("opt", ["adam", "rmsprop-tf"])
def test_factored_and_dense_training_agree(opt):
    x, y = _data()

    def run(use_factors: bool):
        method = _method()
        optimizer = make_optimizer(opt, method.trainable_parameters(), lr=1e-3, factored=use_factors)
        for step in range(5):
            torch.manual_seed(100 + step)
            loss = method.loss(x, y, num_data=64).total
            with optimizer.factored_backward():
                loss.backward()
            assert all((w.grad is None) == use_factors for w in _heads(method))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return torch.cat([p.detach().flatten() for p in method.trainable_parameters()])

    assert torch.allclose(run(True), run(False), atol=1e-5)


def test_trainer_with_and_without_factored_grads_agree():
    x, y = _data()

    def run(use_factors: bool):
        method = _method()
        bbh.Trainer(method, steps=5, seed=1, progress=False, factored_grads=use_factors).fit((x, y))
        return torch.cat([p.detach().flatten() for p in method.trainable_parameters()])

    assert torch.allclose(run(True), run(False), atol=1e-5)


def test_plain_backward_gives_dense_head_gradients_and_stores_nothing_on_parameters():
    method = _method(hidden=(8,))
    trainer = bbh.Trainer(method, steps=1, progress=False)  # builds bbh's factored optimizer
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    method.loss(x, y, num_data=4).total.backward()
    heads = _heads(method)
    assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in heads)
    assert not has_factors(trainer.optimizer)
    for p in method.parameters():
        assert not [a for a in vars(p) if a.startswith("_bbh")], vars(p)


def test_factored_backward_collects_into_the_optimizer_and_zero_grad_drops_it():
    method = _method(hidden=(8,))
    optimizer = make_optimizer("adam", method.trainable_parameters())
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    with optimizer.factored_backward():
        method.loss(x, y, num_data=4).total.backward()
    heads = _heads(method)
    assert all(w.grad is None and optimizer.collector.get(w) for w in heads)
    assert all(p.grad is not None for p in method.trainable_parameters() if all(p is not w for w in heads))
    assert factored.active() is None  # the context restored "no collector"
    optimizer.zero_grad()
    assert not has_factors(optimizer) and len(optimizer.collector) == 0


def test_factors_accumulate_over_backward_passes_with_dense_ones():
    # factored backward + plain backward + factored backward before one step == three dense backward passes
    x, y = _data()

    def run(use_factors: bool):
        method = _method()
        optimizer = make_optimizer("adam", method.trainable_parameters(), lr=1e-2)
        for i, factored_pass in enumerate((True, False, True)):
            torch.manual_seed(7 + i)
            loss = method.loss(x, y, num_data=64).total
            if factored_pass and use_factors:
                with optimizer.factored_backward():
                    loss.backward()
            else:
                loss.backward()
        norm = grad_norm(optimizer)
        if use_factors:
            assert has_factors(optimizer) and all(w.grad is not None for w in _heads(method))
        optimizer.step()
        return norm, torch.cat([p.detach().flatten() for p in method.trainable_parameters()])

    (norm_f, params_f), (norm_d, params_d) = run(True), run(False)
    torch.testing.assert_close(norm_f, norm_d, rtol=1e-5, atol=0)
    assert torch.allclose(params_f, params_d, atol=1e-6)


def test_clip_grad_norm_counts_and_scales_dense_and_factored_parts():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(50, 7))
    other = torch.nn.Parameter(torch.randn(4))
    opt = Adam([w, other], lr=1e-2)
    parts = [(torch.randn(8, 50).t(), torch.randn(8, 7)), (torch.randn(50, 3), torch.randn(3, 7))]
    w.grad, other.grad = torch.randn(50, 7), torch.randn(4)
    for left, right in parts:
        opt.collector.add(w, left, right)
    full = w.grad + sum(left @ right for left, right in parts)
    expected = torch.cat([full.flatten(), other.grad]).norm()
    torch.testing.assert_close(grad_norm(opt), expected, rtol=1e-5, atol=0)
    norm = clip_grad_norm_(opt, 1.0)
    torch.testing.assert_close(norm, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_norm(opt), torch.tensor(1.0), rtol=1e-4, atol=0)
    coef = 1.0 / (expected + 1e-6)
    formed = w.grad + sum(left @ right for left, right in opt.collector.get(w))
    torch.testing.assert_close(formed, full * coef, rtol=1e-5, atol=1e-6)
    # below the threshold nothing changes
    before = grad_norm(opt)
    assert clip_grad_norm_(opt, 10.0) == pytest.approx(float(before), rel=1e-5)
    torch.testing.assert_close(grad_norm(opt), before)


def test_collecting_restores_the_previous_collector_also_on_errors():
    outer, inner = FactorCollector(), FactorCollector()
    with collecting(outer):
        with pytest.raises(KeyError):
            with collecting(inner):
                assert factored.active() is inner
                raise KeyError("boom")
        assert factored.active() is outer
    assert factored.active() is None


def test_offer_factors_outside_a_collector_or_for_unwanted_parameters():
    w = torch.nn.Parameter(torch.randn(5, 3))
    left, right = torch.randn(5, 2), torch.randn(2, 3)
    assert not offer_factors(w, left, right)  # no collector: dense
    collector = FactorCollector([torch.nn.Parameter(torch.randn(5, 3))])
    with collecting(collector):
        assert not offer_factors(w, left, right)  # not wanted: dense
    assert not collector
    with pytest.raises(ValueError, match="do not give a gradient"):
        FactorCollector([w]).add(w, torch.randn(4, 2), right)


def test_autograd_grad_and_backward_inputs_inside_factored_backward():
    method = _method(hidden=(8,))
    optimizer = make_optimizer("adam", method.trainable_parameters())
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    head = _heads(method)[0]
    trunk = method.hypernet.trunks[0].weights[0]
    torch.manual_seed(3)
    loss = method.loss(x, y, num_data=4).total
    torch.manual_seed(3)
    (dense,) = torch.autograd.grad(method.loss(x, y, num_data=4).total, [head])
    with optimizer.factored_backward():
        (captured,) = torch.autograd.grad(loss, [head], retain_graph=True)  # asked for: the dense gradient
        torch.testing.assert_close(captured, dense)
        torch.autograd.grad(loss, [trunk], retain_graph=True)  # the heads' dW is not needed: nothing kept
        loss.backward(inputs=[trunk], retain_graph=True)
    assert not has_factors(optimizer)
    assert all(p.grad is None for p in method.parameters() if p is not trunk) and trunk.grad is not None


def test_double_backward_inside_factored_backward_gets_dense_gradients():
    method = _method(hidden=(8,))
    optimizer = make_optimizer("adam", method.trainable_parameters())
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    with optimizer.factored_backward():
        grads = torch.autograd.grad(method.loss(x, y, num_data=4).total, _heads(method), create_graph=True)
    assert all(g is not None and g.requires_grad for g in grads)
    assert not has_factors(optimizer)


def test_optimizer_pickles_without_its_factors():
    import pickle

    method = _method(hidden=(8,))
    optimizer = make_optimizer("rmsprop-tf", method.trainable_parameters(), factored=False)
    clone = pickle.loads(pickle.dumps(optimizer))
    assert clone.factored is False and clone.block_bytes == optimizer.block_bytes and not has_factors(clone)

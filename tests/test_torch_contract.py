"""bbh keeps PyTorch's contract: once bbh's Trainer / optimizer exist for a method, a hand-written loop with
torch's own optimizer, clipping and scheduler still sees a dense, finite ``.grad`` on every trainable
parameter after ``loss.backward()``, nothing is stored on parameters, memory does not grow, and
``torch.autograd.grad`` has no side effect. bbh's factored gradients are an opt-in of bbh's optimizer for
its own backward pass (``with optimizer.factored_backward(): loss.backward()``) and give the same norm,
clipping and step as the dense path."""

from __future__ import annotations

import copy
import gc
import warnings

import pytest
import torch

import bbh
from bbh.training.optim import clip_grad_norm_, factored_backward, grad_norm, has_factors, make_optimizer


def _method(name: str = "bbh", seed: int = 0) -> bbh.Method:
    torch.manual_seed(seed)
    model = bbh.models.MLP(3, 3, hidden=(8,))
    return bbh.create("bbh", model, hidden=(8, 16)) if name == "bbh" else bbh.create(name, model)


def _data(n: int = 64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return x, (x @ torch.randn(3, 3, generator=g)).argmax(1)


def _heads(method) -> list[torch.nn.Parameter]:
    return [h.weight for h in method.hypernet.heads]


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # some module objects warn when inspected (torch.distributed.reduce_op)
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


def _bbh_attributes(p: torch.Tensor) -> dict[str, object]:
    """Every ``_bbh*`` attribute of ``p`` that holds something."""
    return {a: getattr(p, a) for a in dir(p) if a.startswith("_bbh") and getattr(p, a, None) not in (None, False, [])}


def _warm_bbh_machinery(method, x, y):
    """Build a Trainer and a factored optimizer and run a step of each, as a user might before switching loops."""
    trainer = bbh.Trainer(method, steps=1, progress=False)
    trainer.loss_step(x, y, num_data=len(x), steps_per_epoch=1)
    opt = make_optimizer("adam", method.trainable_parameters(), lr=1e-3)
    with factored_backward(opt):
        method.loss(x, y, num_data=len(x)).total.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return trainer, opt


@pytest.mark.parametrize("name", ["bbh", "map"])
def test_hand_written_torch_loop_after_bbh_optimizers_exist(name):
    method = _method(name)
    x, y = _data()
    _warm_bbh_machinery(method, x, y)
    params = method.trainable_parameters()
    heads = _heads(method) if name == "bbh" else []
    assert heads or name != "bbh"
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    nlls, live = [], {}
    for step in range(100):
        opt.zero_grad(set_to_none=True)
        terms = method.loss(x, y, num_data=len(x))
        terms.total.backward()
        for p in params:
            assert p.grad is not None and p.grad.shape == p.shape and torch.isfinite(p.grad).all(), step
        for p in method.parameters():
            assert not _bbh_attributes(p), _bbh_attributes(p)
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        nlls.append(float(terms.nll.detach()))
        if step in (9, 99):
            del terms
            live[step] = _live_tensors()
    assert live[99] <= live[9], live
    assert sum(nlls[-10:]) < 0.8 * sum(nlls[:10]), (nlls[:10], nlls[-10:])


def test_head_gradient_of_a_plain_backward_is_the_true_gradient():
    # the NLL (smooth in the generated weights, which are linear in the head weights; the nearest-neighbour KL
    # is not smooth) against a central finite difference along the gradient, same noise draw
    method = _method()
    x, y = _data()
    _warm_bbh_machinery(method, x, y)
    head = _heads(method)[0]
    torch.manual_seed(5)
    method.loss(x, y, num_data=64).nll.backward()
    grad = head.grad.clone()
    w0 = head.detach().clone()
    eps = 1e-2
    direction = grad / grad.norm()
    with torch.no_grad():
        head.add_(direction, alpha=eps)
        torch.manual_seed(5)
        up = float(method.loss(x, y, num_data=64).nll)
        head.copy_(w0).sub_(direction, alpha=eps)
        torch.manual_seed(5)
        down = float(method.loss(x, y, num_data=64).nll)
        head.copy_(w0)
    assert (up - down) / (2 * eps) == pytest.approx(float(grad.norm()), rel=0.05)


def test_autograd_grad_has_no_side_effect():
    method = _method()
    x, y = _data()
    _, opt = _warm_bbh_machinery(method, x, y)
    trunk = method.hypernet.trunks[0].weights[0]
    (g,) = torch.autograd.grad(method.loss(x, y, num_data=64).total, [trunk])
    assert torch.isfinite(g).all()
    assert all(p.grad is None for p in method.parameters())
    assert not has_factors(opt) and len(opt.collector) == 0
    with opt.factored_backward():  # also inside bbh's opt-in: only what was asked for is computed
        (g,) = torch.autograd.grad(method.loss(x, y, num_data=64).total, [trunk])
    assert all(p.grad is None for p in method.parameters())
    assert not has_factors(opt) and len(opt.collector) == 0


def _twins(optimizer: str = "adam", lr: float = 1e-2):
    """Two identical methods with a factored and a dense bbh optimizer."""
    fac, dense = _method(seed=0), _method(seed=0)
    for a, b in zip(fac.trainable_parameters(), dense.trainable_parameters()):
        assert torch.equal(a, b)
    opt_f = make_optimizer(optimizer, fac.trainable_parameters(), lr=lr, factored=True)
    opt_d = make_optimizer(optimizer, dense.trainable_parameters(), lr=lr, factored=False)
    return fac, dense, opt_f, opt_d


def _flat(method) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in method.trainable_parameters()])


def _sync(fac, dense, opt_f, opt_d) -> None:
    """Start the dense twin's step from exactly the factored twin's parameters and optimizer state: the
    nearest-neighbour KL's gradient (~1 / distance between samples) amplifies rounding differences, so
    each step is compared from a common state rather than along two drifting trajectories."""
    dense.load_state_dict(fac.state_dict())
    opt_d.load_state_dict(copy.deepcopy(opt_f.state_dict()))  # load_state_dict alone would alias the moments


def _states(opt) -> list[torch.Tensor]:
    """The optimizer's state tensors in parameter order."""
    params = [p for group in opt.param_groups for p in group["params"]]
    return [opt.state[p][k] for p in params for k in sorted(opt.state.get(p, {}))]


def _twin_losses(fac, dense, opt_f, opt_d, x, y, seed):
    """Re-synchronise the twins, then their losses on the same posterior draws."""
    _sync(fac, dense, opt_f, opt_d)
    torch.manual_seed(seed)
    loss_f = fac.loss(x, y, num_data=64).total
    torch.manual_seed(seed)
    return loss_f, dense.loss(x, y, num_data=64).total


def test_clip_grad_norm_with_factors_equals_the_dense_path():
    fac, dense, opt_f, opt_d = _twins()
    x, y = _data()
    for step in range(3):
        loss_f, loss_d = _twin_losses(fac, dense, opt_f, opt_d, x, y, 10 + step)
        torch.testing.assert_close(loss_f, loss_d)
        with opt_f.factored_backward():
            loss_f.backward()
        with opt_d.factored_backward():  # factored=False: a no-op context
            loss_d.backward()
        assert has_factors(opt_f) and all(w.grad is None for w in _heads(fac))
        assert not has_factors(opt_d) and all(w.grad is not None for w in _heads(dense))
        torch_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in dense.trainable_parameters()]))
        max_norm = float(torch_norm) / 4  # clipping is active
        norm_f = clip_grad_norm_(opt_f, max_norm)
        norm_d = clip_grad_norm_(opt_d, max_norm)
        torch.testing.assert_close(norm_d, torch_norm)
        torch.testing.assert_close(norm_f, norm_d, rtol=1e-5, atol=0)
        torch.testing.assert_close(grad_norm(opt_f), grad_norm(opt_d), rtol=1e-5, atol=0)
        assert float(grad_norm(opt_d)) == pytest.approx(max_norm, rel=1e-4)
        opt_f.step()
        opt_d.step()
        opt_f.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        torch.testing.assert_close(_flat(fac), _flat(dense), rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop-tf"])
def test_factored_step_equals_the_dense_step(optimizer):
    fac, dense, opt_f, opt_d = _twins(optimizer, lr=1e-2)
    x, y = _data()
    before = _flat(fac)
    for step in range(3):
        loss_f, loss_d = _twin_losses(fac, dense, opt_f, opt_d, x, y, 20 + step)
        with opt_f.factored_backward():
            loss_f.backward()
        loss_d.backward()
        assert len(opt_f.collector) == len(_heads(fac))
        opt_f.step()
        opt_d.step()
        assert not has_factors(opt_f)
        opt_f.zero_grad(set_to_none=True)
        opt_d.zero_grad(set_to_none=True)
        torch.testing.assert_close(_flat(fac), _flat(dense), rtol=0, atol=1e-6)
        for a, b in zip(_states(opt_f), _states(opt_d), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(_flat(fac), before)  # the parameters did move


def test_factored_backward_captures_only_its_own_heads():
    mine, other = _method(seed=0), _method(seed=1)
    opt = make_optimizer("adam", mine.trainable_parameters())
    other_opt = make_optimizer("adam", other.trainable_parameters())
    x, y = _data()
    with opt.factored_backward():
        (mine.loss(x, y, num_data=64).total + other.loss(x, y, num_data=64).total).backward()
    assert all(w.grad is None and opt.collector.get(w) for w in _heads(mine))
    assert all(w.grad is not None and not opt.collector.get(w) for w in _heads(other))
    assert all(p.grad is not None for p in other.trainable_parameters())
    assert len(opt.collector) == len(_heads(mine)) and not has_factors(other_opt)


def test_factored_backward_of_a_torch_optimizer_is_a_no_op():
    method = _method()
    opt = torch.optim.AdamW(method.trainable_parameters(), lr=1e-3)
    x, y = _data()
    with factored_backward(opt):
        method.loss(x, y, num_data=64).total.backward()
    assert all(p.grad is not None for p in method.trainable_parameters())
    norm = grad_norm(opt)
    assert torch.equal(clip_grad_norm_(opt, 1e9), norm)

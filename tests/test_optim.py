"""Tests of :mod:`bbh.training.optim`: RMSProp with TensorFlow 1 semantics and the optimizer factory."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from bbh.core.options import OptimizerName
from bbh.training.optim import DEFAULT_LR, RMSPropTF, make_optimizer

F64 = torch.float64


def _rmsprop_tf(params, chunk: int | None = None, **kwargs) -> RMSPropTF:
    """RMSPropTF whose CPU path updates ``chunk`` elements at a time.

    The chunk is set through whichever knob this version exposes: ``chunk_size`` (elements) or
    ``block_bytes`` (bytes, chunk = block_bytes // element_size).
    """
    params = list(params)
    if chunk is not None:
        names = inspect.signature(RMSPropTF).parameters
        if "block_bytes" in names:
            first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
            kwargs["block_bytes"] = chunk * first.element_size()
        else:
            kwargs["chunk_size"] = chunk
    return RMSPropTF(params, **kwargs)


def _tf1_rmsprop_reference(w0: torch.Tensor, grads: list[torch.Tensor], lr: float, decay: float = 0.9,
                           eps: float = 1e-5, v0: float = 1.0) -> torch.Tensor:
    """tf.train.RMSPropOptimizer (momentum 0, not centered), written out step by step in float64:

        v_0 = 1;  v <- decay * v + (1 - decay) * g^2;  w <- w - lr * g / sqrt(v + eps)
    """
    w = w0.detach().clone().double()
    v = torch.full_like(w, v0)
    for g in grads:
        g = g.double()
        v = decay * v + (1 - decay) * g * g
        w = w - lr * g / torch.sqrt(v + eps)
    return w


def _run(opt_factory, param: nn.Parameter, grads: list[torch.Tensor]) -> torch.Tensor:
    opt = opt_factory([param])
    for g in grads:
        param.grad = g.clone()
        opt.step()
    return param.detach().clone()


def _grads(shape, steps: int, seed: int, dtype=F64, scale: float = 3.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) * scale for _ in range(steps)]


@pytest.mark.parametrize("shape, chunk", [
    ((50,), 1 << 16),       # one chunk
    ((50,), 7),             # 8 chunks, the last one of 1 element (50 = 7 * 7 + 1)
    ((6, 9), 5),            # 2-d, 54 = 10 * 5 + 4
    ((3, 4, 5), 60),        # chunk == numel
    ((3, 4, 5), 1),         # one element per chunk
])
def test_rmsprop_tf_matches_tf1_reference(shape, chunk):
    g = torch.Generator().manual_seed(sum(shape) + chunk)
    w0 = torch.randn(shape, generator=g, dtype=F64)
    grads = _grads(shape, steps=6, seed=chunk)
    lr = 0.05
    param = nn.Parameter(w0.clone())
    got = _run(lambda ps: _rmsprop_tf(ps, chunk, lr=lr), param, grads)
    expected = _tf1_rmsprop_reference(w0, grads, lr)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # The parameter really moved (several lr-sized steps).
    assert (got - w0).abs().max() > lr


def test_rmsprop_tf_non_default_hyperparameters():
    w0 = torch.randn(23, dtype=F64, generator=torch.Generator().manual_seed(0))
    grads = _grads((23,), steps=5, seed=1)
    param = nn.Parameter(w0.clone())
    got = _run(lambda ps: _rmsprop_tf(ps, 4, lr=0.01, decay=0.5, eps=0.1, initial_accumulator=0.2),
               param, grads)
    expected = _tf1_rmsprop_reference(w0, grads, lr=0.01, decay=0.5, eps=0.1, v0=0.2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [1 << 16, 3])
def test_rmsprop_tf_non_contiguous_parameter(chunk):
    base = torch.randn(7, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    param = nn.Parameter(base.t())  # a transposed view: shape [5, 7], not contiguous
    assert not param.is_contiguous()
    w0 = param.detach().clone()
    grads = _grads((5, 7), steps=4, seed=3)
    got = _run(lambda ps: _rmsprop_tf(ps, chunk, lr=0.02), param, grads)
    torch.testing.assert_close(got, _tf1_rmsprop_reference(w0, grads, 0.02), rtol=1e-12, atol=1e-12)
    # Non-contiguous gradient on a contiguous parameter.
    param2 = nn.Parameter(w0.clone())
    opt = _rmsprop_tf([param2], chunk, lr=0.02)
    for g in grads:
        param2.grad = g.t().contiguous().t()
        assert not param2.grad.is_contiguous()
        opt.step()
    torch.testing.assert_close(param2.detach(), _tf1_rmsprop_reference(w0, grads, 0.02), rtol=1e-12, atol=1e-12)


def test_rmsprop_tf_float32_with_autograd_gradients():
    torch.manual_seed(0)
    model = nn.Linear(40, 3)
    x, y = torch.randn(16, 40), torch.randn(16, 3)
    w0 = model.weight.detach().clone()
    opt = _rmsprop_tf(model.parameters(), 16, lr=1e-3)
    grads = []
    for _ in range(3):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads.append(model.weight.grad.detach().clone())
        opt.step()
    torch.testing.assert_close(model.weight.detach().double(), _tf1_rmsprop_reference(w0, grads, 1e-3),
                               rtol=1e-5, atol=1e-6)


def test_rmsprop_tf_state_and_param_groups():
    a = nn.Parameter(torch.zeros(4, dtype=F64))
    b = nn.Parameter(torch.zeros(4, dtype=F64))
    c = nn.Parameter(torch.zeros(4, dtype=F64))  # never gets a gradient
    opt = RMSPropTF([{"params": [a]}, {"params": [b, c], "lr": 0.5}], lr=0.1)
    g = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=F64)
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    torch.testing.assert_close(a.detach(), _tf1_rmsprop_reference(torch.zeros(4, dtype=F64), [g], 0.1))
    torch.testing.assert_close(b.detach(), _tf1_rmsprop_reference(torch.zeros(4, dtype=F64), [g], 0.5))
    assert torch.equal(c.detach(), torch.zeros(4, dtype=F64)) and c not in opt.state
    # the accumulator after one step: 0.9 * 1 + 0.1 * g^2
    torch.testing.assert_close(opt.state[a]["square_avg"], 0.9 + 0.1 * g**2)
    # state survives a state_dict round trip
    opt2 = RMSPropTF([{"params": [a]}, {"params": [b, c], "lr": 0.5}], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    torch.testing.assert_close(opt2.state[a]["square_avg"], opt.state[a]["square_avg"])


def test_rmsprop_tf_closure_and_errors():
    p = nn.Parameter(torch.ones(3))
    opt = RMSPropTF([p])

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 3.0
    assert (p.detach() < 1).all()
    sparse = nn.Parameter(torch.ones(3))
    sparse.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([1.0]), (3,), check_invariants=True)
    with pytest.raises(RuntimeError, match="sparse"):
        RMSPropTF([sparse]).step()
    for kwargs in (dict(lr=0.0), dict(lr=-1.0), dict(decay=1.0), dict(decay=-0.1), dict(eps=-1e-3),
                   dict(initial_accumulator=-1.0)):
        with pytest.raises(ValueError, match="invalid RMSPropTF settings"):
            RMSPropTF([nn.Parameter(torch.ones(1))], **kwargs)


def test_rmsprop_tf_first_step_differs_from_torch_rmsprop_defaults():
    lr = 1e-3
    w0 = torch.zeros(6, dtype=F64)
    g = torch.tensor([1e-3, -1e-2, 0.1, -0.5, 1.0, 4.0], dtype=F64)
    tf_step = _run(lambda ps: RMSPropTF(ps, lr=lr), nn.Parameter(w0.clone()), [g]) - w0
    torch_step = _run(lambda ps: torch.optim.RMSprop(ps, lr=lr), nn.Parameter(w0.clone()), [g]) - w0
    # TF1: v = 0.9 + 0.1 g^2, so small gradients give steps of ~lr * g / sqrt(0.9) (gradient-sized).
    torch.testing.assert_close(tf_step, -lr * g / torch.sqrt(0.9 + 0.1 * g**2 + 1e-5))
    # torch: v = 0.01 g^2 (alpha 0.99, v0 = 0), eps outside the root: steps of ~10 lr sign(g).
    torch.testing.assert_close(torch_step, -lr * g / (0.1 * g.abs() + 1e-8))
    assert (torch_step.abs() > 9 * lr).all()
    ratio = (torch_step / tf_step).abs()
    assert ratio.min() > 2 and ratio[0] > 1000  # for g = 1e-3 the two first steps differ by ~10^4


# ----------------------------------------------------------------------------------------- make_optimizer
def _params(dtype=torch.float32) -> list[nn.Parameter]:
    torch.manual_seed(0)
    return list(nn.Linear(4, 3).to(dtype).parameters())


def test_default_learning_rates_are_the_authors():
    assert DEFAULT_LR[OptimizerName.ADAM] == 1e-3
    assert DEFAULT_LR[OptimizerName.RMSPROP_TF] == 1e-4


def _fused_adam_available() -> bool:
    try:
        torch.optim.Adam([nn.Parameter(torch.zeros(2))], fused=True)
    except (RuntimeError, ValueError):
        return False
    return hasattr(torch, "_fused_adam_")


@pytest.mark.parametrize("name", ["adam", "Adam", OptimizerName.ADAM])
def test_make_optimizer_adam(name, monkeypatch):
    params = _params()
    opt = make_optimizer(name, params)
    # torch's Adam or bbh's own Adam (which also takes factored gradients); either way an Adam
    assert isinstance(opt, torch.optim.Optimizer) and type(opt).__name__ == "Adam"
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["eps"] == 1e-8
    assert tuple(opt.defaults["betas"]) == (0.9, 0.999)
    assert [p for g in opt.param_groups for p in g["params"]] == params
    # Fused where possible: the step goes through torch's fused Adam kernel.
    if _fused_adam_available():
        calls = []
        fused = torch._fused_adam_

        def spy(*args, **kwargs):
            calls.append(1)
            return fused(*args, **kwargs)

        monkeypatch.setattr(torch, "_fused_adam_", spy)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        assert calls, "make_optimizer('adam') did not use the fused Adam kernel on CPU float32 parameters"
    opt = make_optimizer(name, params, lr=0.02, eps=1e-5)
    assert opt.defaults["lr"] == 0.02 and opt.defaults["eps"] == 1e-5


def test_make_optimizer_adam_steps_like_plain_adam():
    params = _params(F64)
    ref_params = [nn.Parameter(p.detach().clone()) for p in params]
    opt, ref = make_optimizer("adam", params, lr=0.01), torch.optim.Adam(ref_params, lr=0.01)
    for step in range(3):
        for p, r in zip(params, ref_params):
            g = torch.randn(p.shape, dtype=F64, generator=torch.Generator().manual_seed(step))
            p.grad, r.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["rmsprop-tf", "RMSPROP-TF", OptimizerName.RMSPROP_TF])
def test_make_optimizer_rmsprop_tf(name):
    params = _params()
    opt = make_optimizer(name, params)
    assert isinstance(opt, RMSPropTF)
    assert {k: opt.defaults[k] for k in ("lr", "decay", "eps", "initial_accumulator")} == {
        "lr": 1e-4, "decay": 0.9, "eps": 1e-5, "initial_accumulator": 1.0}
    opt = make_optimizer(name, params, lr=3e-3, eps=1e-7)
    assert opt.defaults["lr"] == 3e-3 and opt.defaults["eps"] == 1e-7


@pytest.mark.parametrize("bad", ["sgd", "rmsprop", "adamw", ""])
def test_make_optimizer_rejects_unknown_names(bad):
    with pytest.raises(ValueError) as info:
        make_optimizer(bad, _params())
    msg = str(info.value)
    assert f"unknown optimizer {bad!r}" in msg
    assert "'adam'" in msg and "'rmsprop-tf'" in msg


def test_make_optimizer_needs_parameters():
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer("adam", [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rmsprop_tf_on_cuda_matches_reference():
    w0 = torch.randn(1000, dtype=F64, generator=torch.Generator().manual_seed(0))
    grads = _grads((1000,), steps=4, seed=1)
    param = nn.Parameter(w0.clone().cuda())
    opt = _rmsprop_tf([param], 7, lr=0.01)  # the chunk size is a CPU-only setting
    for g in grads:
        param.grad = g.cuda()
        opt.step()
    torch.testing.assert_close(param.detach().cpu(), _tf1_rmsprop_reference(w0, grads, 0.01), rtol=1e-12, atol=1e-12)
    adam_params = [nn.Parameter(torch.zeros(3, device="cuda"))]
    ref_params = [nn.Parameter(torch.zeros(3, device="cuda"))]
    adam, ref = make_optimizer("adam", adam_params), torch.optim.Adam(ref_params, lr=1e-3)
    for _ in range(3):
        adam_params[0].grad = torch.tensor([1.0, -2.0, 0.5], device="cuda")
        ref_params[0].grad = adam_params[0].grad.clone()
        adam.step()
        ref.step()
    torch.testing.assert_close(adam_params[0].detach(), ref_params[0].detach())


# ------------------------------------------------------------------------- factored backward and clipping
def test_make_optimizer_factored_flag_controls_factored_backward():
    from bbh.backends import factored

    for name in ("adam", "rmsprop-tf"):
        on, off = make_optimizer(name, _params()), make_optimizer(name, _params(), factored=False)
        assert on.factored and not off.factored
        with on.factored_backward():
            assert factored.active() is on.collector
        with off.factored_backward():
            assert factored.active() is None
        assert factored.active() is None


def test_factored_backward_helper_is_a_no_op_for_torch_optimizers():
    from bbh.backends import factored
    from bbh.training.optim import factored_backward

    opt = torch.optim.SGD(_params(), lr=0.1)
    with factored_backward(opt):
        assert factored.active() is None
    bbh_opt = make_optimizer("adam", _params())
    with factored_backward(bbh_opt):
        assert factored.active() is bbh_opt.collector


@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop-tf"])
def test_clip_grad_norm_without_factors_is_torchs(kind):
    from bbh.training.optim import clip_grad_norm_, grad_norm

    ours, ref = _params(), _params()
    for seed, (p, r) in enumerate(zip(ours, ref)):
        p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 10
        r.grad = p.grad.clone()
    opt = torch.optim.SGD(ours, lr=0.1) if kind == "sgd" else make_optimizer(kind, ours)
    torch.testing.assert_close(grad_norm(opt), torch.linalg.vector_norm(torch.stack([r.grad.norm() for r in ref])))
    expected = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert torch.equal(clip_grad_norm_(opt, 1.0), expected)
    for p, r in zip(ours, ref):
        assert torch.equal(p.grad, r.grad)


def test_zero_grad_drops_collected_factors():
    from bbh.training.optim import has_factors

    w = nn.Parameter(torch.randn(6, 4))
    opt = make_optimizer("adam", [w])
    opt.collector.add(w, torch.randn(6, 2), torch.randn(2, 4))
    assert has_factors(opt)
    opt.zero_grad(set_to_none=False)
    assert not has_factors(opt)
    before = w.detach().clone()
    opt.step()
    assert torch.equal(w.detach(), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["adam", "rmsprop-tf"])
def test_factored_backward_on_cuda_matches_dense(name):
    # CUDA backward runs on autograd's device threads: they must see the collector of the calling thread
    import bbh

    def run(use_factors: bool):
        torch.manual_seed(0)
        method = bbh.create("bbh", bbh.models.MLP(3, 3, hidden=(8,)), hidden=(8, 16)).cuda()
        opt = make_optimizer(name, method.trainable_parameters(), lr=1e-3, factored=use_factors)
        x, y = torch.randn(32, 3, device="cuda"), torch.randint(0, 3, (32,), device="cuda")
        torch.manual_seed(1)
        with opt.factored_backward():
            method.loss(x, y, num_data=32).total.backward()
        heads = [h.weight for h in method.hypernet.heads]
        assert all((w.grad is None) == use_factors for w in heads)
        assert len(opt.collector) == (len(heads) if use_factors else 0)
        opt.step()
        return torch.cat([p.detach().flatten() for p in method.trainable_parameters()])

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=1e-6)

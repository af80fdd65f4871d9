"""Tests of :mod:`bbh.backends.native` and its seam :mod:`bbh.backends.ops`: the C kernels against their PyTorch
definitions, argument checks that survive ``python -O``, the fallbacks, that only the seam calls the kernels,
and a training run that must not depend on which path computed it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import bbh
from bbh.backends import native, ops
from bbh.kl.nearest import DISTANCE_EPS, _per_weight_value_and_grad, nn_kl_per_weight_reference
from bbh.training.optim import Adam, RMSPropTF, make_optimizer

needs_kernels = pytest.mark.skipif(native.kernels() is None, reason="no C compiler: the kernels cannot be built")
"""Only tests that run the built kernels skip without a compiler; the fallback tests mock one and run everywhere."""


@pytest.fixture
def threads():
    """Three threads (more than this machine's cores) so that every kernel runs over several row ranges."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


@needs_kernels
@pytest.mark.parametrize("rows, cols, m", [(1001, 512, 5), (257, 37, 1), (300, 20, 9)])
def test_head_forward_matches_addmm(threads, rows, cols, m):
    # cols 37 and 20 exercise the tail after the 16-wide vector loop; m = 9 two passes of up to 8 rows
    torch.manual_seed(0)
    w, h, b = torch.randn(rows, cols), torch.randn(m, cols), torch.randn(rows)
    expected = torch.addmm(b.unsqueeze(1), w, h.t()).t()
    # sums of up to 512 products of unit normals (|y| ~ 20): float32 rounding allows ~1e-5 absolute
    torch.testing.assert_close(native.head_forward(w, h, b), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(native.head_forward(w, h, None), expected - b, rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("transposed", [False, True])
def test_head_input_grad_matches_matmul(threads, transposed):
    torch.manual_seed(1)
    w = torch.randn(999, 40)
    dy = torch.randn(999, 5).t() if transposed else torch.randn(5, 999)
    torch.testing.assert_close(native.head_input_grad(dy, w), dy @ w, rtol=1e-4, atol=1e-4)


def _factor_pairs(rows: int, cols: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # a transposed view (as the head's backward hands over) and a contiguous one
    return [(torch.randn(5, rows, generator=g).t(), torch.randn(5, cols, generator=g)),
            (torch.randn(rows, 3, generator=g), torch.randn(3, cols, generator=g))]


@needs_kernels
@pytest.mark.parametrize("with_dense", [False, True])
def test_factored_adam_matches_torch_adam(threads, with_dense):
    torch.manual_seed(2)
    rows, cols = 700, 45
    w0 = torch.randn(rows, cols)
    ours, ref = w0.clone(), w0.clone().requires_grad_()
    m, v = torch.zeros_like(w0), torch.zeros_like(w0)
    opt = torch.optim.Adam([ref], lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    for step in range(1, 4):
        factors = _factor_pairs(rows, cols, step)
        dense = torch.randn(rows, cols) if with_dense else None
        native.factored_adam_(ours, m, v, factors, dense, step=step, lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6)
        ref.grad = sum(left @ right for left, right in factors) + (0 if dense is None else dense)
        opt.step()
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m, opt.state[ref]["exp_avg"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v, opt.state[ref]["exp_avg_sq"], rtol=1e-5, atol=1e-6)


@needs_kernels
def test_factored_rmsprop_tf_matches_reference(threads):
    torch.manual_seed(3)
    rows, cols = 500, 33
    ours = torch.randn(rows, cols)
    ref, v_ours, v_ref = ours.clone(), torch.ones(rows, cols), torch.ones(rows, cols)
    for step in range(3):
        factors = _factor_pairs(rows, cols, 10 + step)
        native.factored_rmsprop_tf_(ours, v_ours, factors, None, lr=1e-3, decay=0.9, eps=1e-5)
        ops.rmsprop_tf_update_(ref, sum(left @ right for left, right in factors), v_ref, lr=1e-3, decay=0.9, eps=1e-5)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v_ours, v_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, m, d, scale", [(5, 5, 1000 * 16 + 7, 0.1), (2, 1, 23, 1.0), (9, 3, 5000, 1e-5),
                                            (5, 5, 40_000, 30.0)])
@needs_kernels
def test_nn_kl_per_weight_matches_pytorch(threads, n, m, d, scale):
    # scale 1e-5 puts posterior samples within the 1e-4 distance guard; 30 stresses the log polynomial
    torch.manual_seed(4)
    q, p = torch.randn(n, d) * scale, torch.randn(m, d)
    value, grad = native.nn_kl_per_weight(q, p, DISTANCE_EPS)
    ref_value, ref_grad = _per_weight_value_and_grad(q, p)
    torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4 * ref_grad.abs().max().item())


@needs_kernels
def test_nn_kl_per_weight_gradient_matches_autograd_reference():
    torch.manual_seed(5)
    q = (torch.randn(5, 3000) * 0.3).requires_grad_()
    p = torch.randn(5, 3000)
    assert native.usable(q, p, min_elements=0)
    bbh.kl.nearest.nn_kl_per_weight(q, p).backward()
    q_ref = q.detach().clone().requires_grad_()
    nn_kl_per_weight_reference(q_ref, p).backward()
    torch.testing.assert_close(q.grad, q_ref.grad, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_usable_only_for_large_cpu_float32():
    big = torch.zeros(native.MIN_ELEMENTS)
    assert native.usable(big)
    assert not native.usable(torch.zeros(10))
    assert native.usable(torch.zeros(10), min_elements=0)
    assert not native.usable(big.double())
    previous = native.set_enabled(False)
    try:
        assert not native.usable(big)
    finally:
        native.set_enabled(previous)


def _fresh_state(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("BBH_CACHE_DIR", str(tmp_path))


def test_missing_compiler_warns_once_and_falls_back(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(UserWarning, match="no C compiler"):
        assert native.kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.kernels() is None and not native.usable(torch.zeros(native.MIN_ELEMENTS))


def test_failing_compiler_falls_back(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    monkeypatch.setattr(native, "_compiler", lambda: "/bin/false")
    with pytest.warns(UserWarning, match="native CPU kernels are unavailable"):
        assert native.kernels() is None
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("*tmp*"))  # no half-written library


@needs_kernels
def test_build_is_cached(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path)
    assert native.kernels() is not None
    built = list(tmp_path.glob("kernels-*.so"))
    assert len(built) == 1
    _fresh_state(monkeypatch, tmp_path)

    def no_compiling(*args, **kwargs):
        raise AssertionError("the cached library should have been reused")

    monkeypatch.setattr(native.subprocess, "run", no_compiling)
    assert native.kernels() is not None


def _train(enabled: bool, optimizer: str, steps: int) -> dict[str, torch.Tensor]:
    """``steps`` factored training steps (the Trainer's step: backward inside ``factored_backward``)."""
    previous = native.set_enabled(enabled)
    try:
        torch.manual_seed(0)
        model = bbh.models.MLP(20, 3, hidden=(30,))
        method = bbh.create("bbh", model, hidden=(8, 16))
        opt = make_optimizer(optimizer, method.trainable_parameters(), lr=1e-3)
        x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
        for _ in range(steps):
            loss = method.loss(x, y, num_data=64).total
            with opt.factored_backward():
                loss.backward()
            assert len(opt.collector) == len(method.hypernet.heads)  # the factored update runs
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {k: v.detach().clone() for k, v in method.state_dict().items()}
    finally:
        native.set_enabled(previous)


@needs_kernels
@pytest.mark.parametrize("optimizer, steps", [("adam", 4), ("rmsprop-tf", 1)])
def test_training_does_not_depend_on_the_path(monkeypatch, optimizer, steps):
    # Rounding differences may flip a nearest neighbour of the KL estimator, a discontinuity that
    # RMSProp-TF's barely normalised first steps amplify (measured: 6e-3 after 4 steps, with the forward
    # as the only difference); one step of it, or Adam's bounded steps, agree to rounding.
    monkeypatch.setattr(native, "MIN_ELEMENTS", 0)  # every head, KL and update through the kernels
    with_kernels, without = _train(True, optimizer, steps), _train(False, optimizer, steps)
    for name in without:
        torch.testing.assert_close(with_kernels[name], without[name], rtol=1e-4, atol=1e-5, msg=name)


@needs_kernels
def test_factored_parameters_still_need_their_factors():
    # guard: the optimizers' native branch must only run for parameters with factors or a gradient
    w = torch.nn.Parameter(torch.randn(600, 500))
    for opt in (Adam([w]), RMSPropTF([w])):
        before = w.detach().clone()
        with opt.factored_backward():
            pass
        opt.step()  # no gradient, no factors: nothing moves
        assert torch.equal(w.detach(), before)


@pytest.mark.parametrize("call, error, match", [
    (lambda: native.head_forward(torch.randn(300, 8), torch.randn(5, 9), None), ValueError, "does not match"),
    (lambda: native.head_forward(torch.randn(300, 8), torch.randn(5, 8), torch.randn(299)), ValueError, "bias"),
    (lambda: native.head_forward(torch.randn(300, 8).double(), torch.randn(5, 8).double(), None), TypeError,
     "float32"),
    (lambda: native.head_input_grad(torch.randn(5, 301), torch.randn(300, 8)), ValueError, "does not match"),
    (lambda: native.factored_adam_(torch.randn(30, 8), torch.zeros(30, 8), torch.zeros(30, 8),
                                   [(torch.randn(30, 2), torch.randn(2, 9))], None, step=1.0, lr=1e-3, beta1=0.9,
                                   beta2=0.999, eps=1e-8), ValueError, "do not give"),
    (lambda: native.factored_adam_(torch.randn(30, 8), torch.zeros(8, 30).t(), torch.zeros(30, 8),
                                   [(torch.randn(30, 2), torch.randn(2, 8))], None, step=1.0, lr=1e-3, beta1=0.9,
                                   beta2=0.999, eps=1e-8), ValueError, "contiguous"),
    (lambda: native.factored_rmsprop_tf_(torch.randn(30, 8), torch.ones(30, 8), [], None, lr=1e-3, decay=0.9,
                                         eps=1e-5), ValueError, "no gradient factors"),
    (lambda: native.factored_rmsprop_tf_(torch.randn(30, 8), torch.ones(30, 8),
                                         [(torch.randn(30, 2), torch.randn(2, 8))], torch.randn(30, 7), lr=1e-3,
                                         decay=0.9, eps=1e-5), ValueError, "dense"),
    (lambda: native.nn_kl_per_weight(torch.randn(5, 10), torch.randn(5, 11), 1e-8), ValueError, "same D"),
    (lambda: native.nn_kl_per_weight(torch.randn(5, 10).half(), torch.randn(5, 10), 1e-8), TypeError, "CPU float32"),
])
@needs_kernels
def test_kernels_check_their_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


@needs_kernels
def test_argument_checks_survive_python_O():
    # ``assert`` statements vanish under -O; these checks must not (they guard raw pointers handed to C)
    code = ("import torch; from bbh.backends import native\n"
            "try:\n    native.head_input_grad(torch.randn(5, 301), torch.randn(300, 8))\n"
            "except ValueError:\n    print('checked')\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "checked", out.stderr[-2000:]


def test_importing_bbh_sets_no_environment_variable():
    # a library must not change its host process; the bbh command line sets THP_MEM_ALLOC_ENABLE for itself
    code = "import os, bbh; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == "None", out.stderr[-2000:]


def test_kernels_unavailable_raise_runtime_error():
    previous = native.set_enabled(False)
    try:
        with pytest.raises(RuntimeError, match="not available"):
            native.head_forward(torch.randn(300, 8), torch.randn(5, 8), None)
    finally:
        native.set_enabled(previous)


def test_only_the_seam_calls_the_kernels():
    # bbh/__init__ re-exports the module; every computation goes through bbh.backends.ops
    src = Path(bbh.__file__).parent
    offenders = []
    for path in src.rglob("*.py"):
        if path.parent.name == "backends" or path == src / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name == "native" for a in node.names):
                offenders.append(f"{path.relative_to(src)}: from {node.module} import native")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").endswith("backends.native"):
                offenders.append(f"{path.relative_to(src)}: from {node.module} import ...")
            elif isinstance(node, ast.Import) and any(a.name.endswith("backends.native") for a in node.names):
                offenders.append(f"{path.relative_to(src)}: import {node.names[0].name}")
    assert not offenders, offenders


@needs_kernels
@pytest.mark.parametrize("enabled", [True, False])
def test_seam_dispatch_matches_pytorch(monkeypatch, enabled, threads):
    monkeypatch.setattr(native, "MIN_ELEMENTS", 0)
    previous = native.set_enabled(enabled)
    calls = []

    def spy(name, real):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return wrapper

    for name in ("head_forward", "head_input_grad", "factored_adam_", "factored_rmsprop_tf_", "nn_kl_per_weight"):
        monkeypatch.setattr(native, name, spy(name, getattr(native, name)))
    try:
        torch.manual_seed(9)
        w, h, b, dy = torch.randn(700, 40), torch.randn(5, 40), torch.randn(700), torch.randn(5, 700)
        torch.testing.assert_close(ops.head_forward(w, h, b), torch.addmm(b.unsqueeze(1), w, h.t()).t(),
                                   rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ops.head_input_grad(dy, w), dy @ w, rtol=1e-4, atol=1e-4)
        factors = _factor_pairs(700, 40, 1)
        p1, m, v = w.clone(), torch.zeros_like(w), torch.zeros_like(w)
        ops.factored_adam_(p1, m, v, factors, None, step=torch.tensor(1.0), lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)
        ref = w.clone().requires_grad_()
        ref.grad = sum(left @ right for left, right in factors)
        torch.optim.Adam([ref], lr=1e-2).step()
        torch.testing.assert_close(p1, ref.detach(), rtol=1e-5, atol=1e-6)
        p2, sq = w.clone(), torch.ones_like(w)
        ops.factored_rmsprop_tf_(p2, sq, factors, None, lr=1e-3, decay=0.9, eps=1e-5)
        p3, sq3 = w.clone(), torch.ones_like(w)
        ops.rmsprop_tf_update_(p3, ref.grad, sq3, lr=1e-3, decay=0.9, eps=1e-5)
        torch.testing.assert_close(p2, p3, rtol=1e-5, atol=1e-6)
        q, p = torch.randn(5, 300), torch.randn(5, 300)
        value, grad = ops.nn_kl_per_weight(q, p, DISTANCE_EPS, _per_weight_value_and_grad)
        ref_value, ref_grad = _per_weight_value_and_grad(q, p)
        torch.testing.assert_close(value, ref_value, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4)
    finally:
        native.set_enabled(previous)
    expected = ["head_forward", "head_input_grad", "factored_adam_", "factored_rmsprop_tf_", "nn_kl_per_weight"]
    assert calls == (expected if enabled else [])

"""Factored (low-rank) gradients: the optimizers' block-wise update equals the materialised one."""

from __future__ import annotations

import pytest
import torch

import bbh
from bbh.training.optim import Adam, RMSPropTF, add_grad_factors, enable_factored_grads, mark_factorable


def _pair(shape=(37, 6)):
    w = torch.randn(*shape)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    mark_factorable(b)
    enable_factored_grads([b])
    return a, b


@pytest.mark.parametrize("opt", ["adam", "rmsprop-tf"])
def test_factored_update_equals_the_materialised_one(opt):
    a, b = _pair()
    if opt == "adam":
        ref, fac = torch.optim.Adam([a], lr=1e-2), Adam([b], lr=1e-2, block_bytes=7 * 6 * 4)  # 7-row blocks
    else:
        ref, fac = RMSPropTF([a], lr=1e-2), RMSPropTF([b], lr=1e-2, block_bytes=7 * 6 * 4)
    for _ in range(4):
        parts = [(torch.randn(37, 5), torch.randn(5, 6)) for _ in range(2)]  # two backward passes accumulate
        a.grad = sum(left @ right for left, right in parts)
        for left, right in parts:
            add_grad_factors(b, left, right)
        ref.step()
        fac.step()
        ref.zero_grad()
        fac.zero_grad()
        assert b.grad is None
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_trainer_with_and_without_factored_grads_agree():
    x = torch.randn(64, 3)
    y = torch.randint(0, 3, (64,))

    def run(factored: bool):
        torch.manual_seed(0)
        method = bbh.create("bbh", bbh.models.MLP(3, 3, hidden=(8,)), hidden=(8, 16))
        bbh.Trainer(method, steps=5, seed=1, progress=False, factored_grads=factored).fit((x, y))
        return torch.cat([p.detach().flatten() for p in method.trainable_parameters()])

    assert torch.allclose(run(True), run(False), atol=1e-5)


def test_factored_head_weights_get_no_dense_gradient():
    method = bbh.create("bbh", bbh.models.MLP(3, 3, hidden=(8,)), hidden=(8,))
    trainer = bbh.Trainer(method, steps=1, progress=False)
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    method.loss(x, y, num_data=4).total.backward()
    heads = [h.weight for h in method.posterior.heads]
    assert all(w.grad is None and w._bbh_grad_factors for w in heads)
    trainer.optimizer.zero_grad()
    assert all(not w._bbh_grad_factors for w in heads)

"""The one door: every method behind the same protocol, in a plain PyTorch loop, through persistence, and
no consumer that names a concrete method class."""

from __future__ import annotations

import ast
import gc
import io
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import bbh

SRC = Path(bbh.__file__).resolve().parent

METHODS = {
    "map": {},
    "mc-dropout": {},
    "ensemble": {"members": 3},
    "bbb": {},
    "mnf": {},
    "bbh": {"hidden": (8, 16)},
}


def dropout_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def blobs(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    y = torch.arange(n) % 3
    return centres[y] + 0.7 * torch.randn(n, 4, generator=g), y


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on torch's deprecated module aliases warns
        warnings.simplefilter("ignore", FutureWarning)
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("name", list(METHODS))
def test_a_hand_written_torch_loop_trains_every_method(name):
    """AdamW + clip_grad_norm_ + a cosine schedule, as a user would write it, after a bbh Trainer was built for
    the same method (it must not leave anything switched on): true finite .grad everywhere, no memory growth."""
    torch.manual_seed(0)
    method = bbh.create(name, dropout_mlp(), **METHODS[name])
    bbh.Trainer(method, steps=1, progress=False, device="cpu").fit(blobs(16))  # a bbh step first
    x, y = blobs()
    params = method.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    losses, counts = [], {}
    method.train()
    for step in range(100):
        opt.zero_grad(set_to_none=True)
        terms = method.loss(x, y, num_data=len(x), kl_weight=0.1)
        terms.total.backward()
        for p in params:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: a parameter has no finite .grad"
            assert not any(k.startswith("_bbh") and v for k, v in vars(p).items()), "state left on a Parameter"
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        method.post_step()
        losses.append(float(terms.nll.detach()))
        if step in (10, 99):
            counts[step] = live_tensors()
    assert counts[99] <= counts[10] + 5, f"{name}: live tensors grew {counts[10]} -> {counts[99]}"
    assert sum(losses[-10:]) < sum(losses[:10]), f"{name}: the loss did not go down"


def test_mc_dropout_uses_the_models_own_dropout_layers_and_keeps_them_on_in_eval_mode():
    model = dropout_mlp()
    method = bbh.create("mc-dropout", model)
    assert method.sites == ["2"] and method.rate == pytest.approx(0.3) and method.own_layers
    x, _ = blobs(8)
    method.eval()
    a, b = method.sample_outputs(x, 4), method.sample_outputs(x, 4)
    assert not torch.allclose(a, b), "dropout must stay on at prediction time"
    assert not torch.allclose(a[0], a[1]), "each draw has its own masks"
    method.remove_hooks()
    assert torch.equal(model(x), model(x)), "without the hooks the model is deterministic in eval mode"
    with pytest.raises(ValueError, match="no dropout layers"):
        bbh.create("mc-dropout", nn.Sequential(nn.Linear(4, 3)))
    assert bbh.create("mc-dropout", dropout_mlp(), rate=0.1).rates == {"2": 0.1}


@pytest.mark.parametrize("name,options", [*METHODS.items(), ("bbh", {"hidden": (8,), "kl": "adversarial"}),
                                          ("bbb", {"estimator": "local"})])
def test_state_dict_round_trips_through_weights_only_load(name, options):
    """Every method's state_dict is tensors only: torch.load(weights_only=True) into a freshly built method
    gives the same outputs under the same seed."""
    torch.manual_seed(1)
    method = bbh.create(name, dropout_mlp(), **options)
    bbh.Trainer(method, steps=3, progress=False, device="cpu").fit(blobs(24))
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(2)  # a different initialisation: everything must come from the state
    fresh = bbh.create(name, dropout_mlp(), **options)
    fresh.load_state_dict(state)
    x, _ = blobs(10, seed=3)
    method.eval()
    fresh.eval()
    torch.manual_seed(5)
    a = method.sample_outputs(x, 4)
    torch.manual_seed(5)
    b = fresh.sample_outputs(x, 4)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(METHODS))
def test_declared_capabilities(name):
    method = bbh.create(name, dropout_mlp(), **METHODS[name])
    x, y = blobs(6)
    draws = method.draws(5)
    assert method.sample_outputs(x, 5, chunk_size=2).shape == (draws, 6, 3)
    assert draws == (method.fixed_draws or 5)
    assert method.per_copy_outputs(x.expand(draws, *x.shape)).shape == (draws, 6, 3)
    terms = method.loss(x, y, num_data=6)
    assert terms.outputs is not None and terms.outputs.shape == (6, 3) and not terms.outputs.requires_grad
    weights = method.weight_samples(4)
    assert (weights is None) == (name in ("map", "mc-dropout"))
    if weights is not None:
        assert all(t.shape[0] == (method.fixed_draws or 4) for t in weights.values())
    pred = method.predict(x, 5)
    assert pred.sample_probs.shape == (draws, 6, 3)


def test_predict_switches_to_eval_mode_and_restores_the_callers_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    method = bbh.create("map", model)
    method.train()
    x, _ = blobs(16)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    first, second = method.predict(x, 3).mean, method.predict(x, 3).mean
    assert torch.equal(first, second), "MAP's prediction must not depend on the model's own dropout"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items()), "predict changed a buffer"
    assert method.training and all(m.training for m in method.modules())


CONSUMERS = ["evaluation/attacks.py", "evaluation/probes.py", "evaluation/api.py", "core/predictive.py",
             "reports/posterior_plots.py", "reports/runs.py", "training/trainer.py", "experiments/run.py"]
CONCRETE = {"MAP", "MCDropout", "DeepEnsemble", "BayesByBackprop", "BayesByHypernet", "MNF", "HypernetPosterior"}


@pytest.mark.parametrize("rel", CONSUMERS)
def test_consumers_never_name_a_concrete_method_class(rel):
    tree = ast.parse((SRC / rel).read_text())
    named = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not named & CONCRETE, f"{rel} names {sorted(named & CONCRETE)}"

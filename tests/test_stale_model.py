"""A model changed after ``bbh.create`` (issue 25, item 6 g).

A layer replaced, appended or deleted after the method was built made layer-wise BbH predict from the stale
hypernet (or train the new layer as a point estimate) and rank1 raise a bare size error or KeyError; now every
method says in one line what changed and to rebuild it. ``model.double()`` without the method got advice
(``x.double()``) that then failed; now the advice is to convert the method as a whole, and following it works.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bbh
from bbh.posteriors import protocol

NAMES = ["map", "mc-dropout", "ensemble", "bbb", "mnf", "bbh", "bbh-rank1", "bbh-sliced"]
def changed(name: str, what: str) -> str:
    """The one line, with what changed (MNF's own layers have other parameter names: any list)."""
    return CHANGED.replace(r"\(.*\)", r"\(.*\)" if name == "mnf" else what)


CHANGED = r"^MLP changed since this \w+ was built on it \(.*\): the method still describes the old parameters; " \
          r"rebuild it with bbh.create\(...\) on the changed model$"


def make(name: str, model: nn.Module) -> bbh.Method:
    options: dict[str, object] = {"map": {}, "mc-dropout": {"sites": ["net.1"]}, "ensemble": {"members": 2, "seed": 0},
                                  "bbb": {}, "mnf": {}, "bbh": {"hidden": (8,)},
                                  "bbh-rank1": {"hidden": (8,), "layout": "rank1"},
                                  "bbh-sliced": {"hidden": (8,), "layout": "sliced"}}[name]
    return bbh.create(name.removesuffix("-rank1").removesuffix("-sliced"), model, **options)


def mlp() -> bbh.models.MLP:
    return bbh.models.MLP(2, 3, hidden=(8,))  # net: Linear(2, 8), ReLU, Linear(8, 3)


X, Y = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])


def every_entry_refuses(method: bbh.Method, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        method.loss(X, Y, num_data=6)
    with pytest.raises(ValueError, match=match):
        method.sample_outputs(X, 2)
    with pytest.raises(ValueError, match=match):
        method.predict(X, 2)
    with pytest.raises(ValueError, match=match):
        bbh.Trainer(method, steps=1, progress=False).fit((X, Y))


@pytest.mark.parametrize("name", NAMES)
def test_a_fresh_method_passes(name):
    method = make(name, mlp())
    method.check_model()
    assert torch.isfinite(method.loss(X, Y, num_data=6).total)


@pytest.mark.parametrize("name", NAMES)
def test_a_replaced_layer_is_named_with_old_and_new_shapes(name):
    model = mlp()
    method = make(name, model)
    method.loss(X, Y, num_data=6)
    model.net[2] = nn.Linear(8, 5)
    every_entry_refuses(method, changed(name, r"\(`net.2.weight` is \[5, 8\] \(was \[3, 8\]\); `net.2.bias` is "
                                              r"\[5\] \(was \[3\]\)\)"))
    rebuilt = make(name, model)  # the advice works
    assert rebuilt.sample_outputs(X, 2).shape[-1] == 5


@pytest.mark.parametrize("name", NAMES)
def test_an_appended_or_deleted_layer_is_named(name):
    model = mlp()
    method = make(name, model)
    method.loss(X, Y, num_data=6)
    model.net.append(nn.Linear(3, 3))
    every_entry_refuses(method, changed(name, r"\(`net.3.weight` \[3, 3\] is new; `net.3.bias` \[3\] is new\)"))
    del model.net[3]  # back as it was: fine again
    method.loss(X, Y, num_data=6)
    del model.net[2]  # a deletion registers nothing: found by the module tables' sizes
    every_entry_refuses(method, changed(name, r"\(`net.2.weight` \[3, 8\] is gone; `net.2.bias` \[3\] is gone\)"))


def test_the_parameters_are_walked_only_when_something_was_registered_or_deleted(monkeypatch):
    """The per-step cost: two dtype / device comparisons, no walk over the parameters."""
    walks = []
    shapes = protocol._parameter_shapes
    monkeypatch.setattr(protocol, "_parameter_shapes", lambda model: walks.append(1) or shapes(model))
    model = mlp()
    method = make("bbh", model)
    for _ in range(5):
        method.loss(X, Y, num_data=6)
    assert len(walks) == 2  # at construction and at the first check
    nn.Linear(2, 2)  # a module registered anywhere: one walk more
    method.loss(X, Y, num_data=6)
    method.loss(X, Y, num_data=6)
    assert len(walks) == 3


@pytest.mark.parametrize("name", ["bbh", "bbh-rank1", "bbb", "ensemble"])
def test_model_double_alone_gives_advice_that_works(name):
    """The method's own parameters (hypernet, variational parameters, members) stayed float32; the old advice,
    x.double(), then failed inside the forward pass."""
    model = mlp()
    method = make(name, model)
    model.double()
    message = (r"^MLP is torch.float64 but \w+'s own parameters \(`[\w.]+`\) are torch.float32: convert the method "
               r"as a whole, method.to\(torch.float64\), not its model alone \(then give it inputs of that dtype\)$")
    with pytest.raises(ValueError, match=message):
        method.loss(X, Y, num_data=6)
    with pytest.raises(ValueError, match=message):
        method.loss(X.double(), Y, num_data=6)
    method.to(torch.float64)  # the advice
    with pytest.raises(ValueError, match=r"got torch.float32: convert them with x.double\(\)$"):
        method.loss(X, Y, num_data=6)
    assert method.loss(X.double(), Y, num_data=6).total.dtype == torch.float64
    assert method.predict(X.double(), 2).sample_probs.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", ["bbh", "ensemble"])
def test_model_cuda_alone_gives_advice_that_works(name):
    model = mlp()
    method = make(name, model)
    model.cuda()
    with pytest.raises(ValueError, match=r"^MLP is on cuda:0 but \w+'s own parameters \(`[\w.]+`\) are on cpu: move "
                                         r"the method as a whole, method.to\('cuda:0'\), not its model alone$"):
        method.loss(X.cuda(), Y.cuda(), num_data=6)
    method.to("cuda:0")
    assert torch.isfinite(method.loss(X.cuda(), Y.cuda(), num_data=6).total)

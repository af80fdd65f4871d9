"""Every string option is an enum of bbh.core.options: a wrong value fails at construction, listing the enum's
values, and any letter case of a right one is accepted, whichever class takes it."""

from __future__ import annotations

from enum import Enum

import pytest
import torch

import bbh
from bbh.core import options
from bbh.core.likelihoods import as_likelihood
from bbh.kl import make_kl_estimator
from bbh.models import MLP, ResNet32


def _listed(enum: type[Enum]) -> str:
    return ", ".join(repr(m.value) for m in enum)


BUILDERS = {
    "bbb estimator": (options.BBBEstimator, lambda v: bbh.create("bbb", MLP(2, 3, hidden=(4,)), estimator=v)),
    "mnf kl_layers": (options.MNFKLLayers, lambda v: bbh.create("mnf", MLP(2, 3, hidden=(4,)), kl_layers=v)),
    "likelihood": (options.LikelihoodName, as_likelihood),
    "kl": (options.KLName, lambda v: make_kl_estimator(v)),
    "resnet norm": (options.NormKind, lambda v: ResNet32(norm=v)),
    "resnet variant": (options.ResNetVariant, lambda v: ResNet32(variant=v)),
}


@pytest.mark.parametrize("what", sorted(BUILDERS))
def test_a_wrong_value_lists_the_enums_values(what):
    enum, build = BUILDERS[what]
    with pytest.raises(ValueError) as err:
        build("no-such-option")
    assert _listed(enum) in str(err.value)


@pytest.mark.parametrize("what", ["bbb estimator", "mnf kl_layers", "likelihood", "kl", "resnet norm"])
def test_any_letter_case_of_a_right_value_is_accepted(what):
    enum, build = BUILDERS[what]
    value = list(enum)[-1].value
    torch.manual_seed(0)
    build(value.upper())  # no error


def test_the_laplace_options_are_enums():
    from bbh.posteriors import laplace

    assert laplace.STRUCTURES == options.choices(options.LaplaceStructure)
    assert laplace.PREDICTIVES == options.choices(options.LaplacePredictive)

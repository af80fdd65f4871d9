"""Inputs and options checked at the method boundary (issue "first contact", item 2).

Every finding of the issue is reproduced with its setup: wrong input shapes (LeNet-5 fed ``[1, 40, 16, 16]`` and
``[40, 16, 16]``, an MLP fed ``[4, 256]``), float64 inputs, labels out of range, NaN inputs with a BatchNorm model
(whose running statistics must stay clean), ``predict`` on NaN inputs, and option values of the wrong type.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import bbh
from bbh.core.options import check_float, check_int, check_sizes
from bbh.posteriors.protocol import NonFiniteInputError, find_input_layer

NAMES = ["map", "mc-dropout", "ensemble", "bbb", "mnf", "bbh"]
OPTIONS = {"map": {}, "mc-dropout": {}, "ensemble": {"members": 2, "seed": 0}, "bbb": {}, "mnf": {},
           "bbh": {"hidden": (8,)}}
LENET_SHAPE = r"LeNet5 expects inputs of shape \[B, 1, H, W\] \(its first layer `c1` is Conv2d with 1 input channel\)"


def make(name: str, model: nn.Module, sites: list[str] | None = None) -> bbh.Method:
    options = dict(OPTIONS[name])
    if name == "mc-dropout" and sites is not None:
        options["sites"] = sites
    return bbh.create(name, model, **options)


def conv_bn_net(classes: int = 3) -> nn.Sequential:
    """A conv net with BatchNorm and no input checks of its own (PyTorch's raw errors without bbh's)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, classes))


def labels(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def state(method: bbh.Method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def assert_unchanged(method: bbh.Method, before: dict[str, torch.Tensor]) -> None:
    after = method.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"changed by a call that raised: {changed}"


# ---------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", NAMES)
def test_lenet_with_a_wrong_input_shape_names_expected_and_found_shapes(name):
    method = make(name, bbh.models.LeNet5())
    y = labels(0)
    with pytest.raises(ValueError, match=LENET_SHAPE + r"; got \[1, 40, 16, 16\]"):
        method.loss(torch.rand(1, 40, 16, 16), y, num_data=10)
    with pytest.raises(ValueError, match=LENET_SHAPE + r"; got \[40, 16, 16\]"):
        method.loss(torch.rand(40, 16, 16), torch.zeros(40, dtype=torch.long), num_data=10)
    with pytest.raises(ValueError, match=LENET_SHAPE + r"; got \[40, 16, 16\]"):  # not [S * 40, ...]
        method.sample_outputs(torch.rand(40, 16, 16), 3)
    with pytest.raises(ValueError, match=LENET_SHAPE + r"; got \[40, 16, 16\]"):
        method.predict(torch.rand(40, 16, 16), 3)
    # LeNet-5's own forms still work: flat pixels (which the model reshapes) and images
    assert method.sample_outputs(torch.rand(2, 784), 2).shape == (method.draws(2), 2, 10)
    assert method.sample_outputs(torch.rand(2, 1, 28, 28), 2).shape == (method.draws(2), 2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_a_model_without_checks_of_its_own_gets_bbhs_message_and_keeps_its_buffers(name):
    """PyTorch's own error here is "expected input[1, 40, 16, 16] to have 1 channels, but got 40"."""
    method = make(name, conv_bn_net(), sites=["2"])
    before = state(method)
    with pytest.raises(ValueError, match=r"^Sequential expects inputs of shape \[B, 1, H, W\] \(its first layer `0` is "
                                         r"Conv2d with 1 input channel\); got \[40, 16, 16\]$"):
        method.loss(torch.rand(40, 16, 16), torch.zeros(40, dtype=torch.long), num_data=10)
    with pytest.raises(ValueError, match=r"expects inputs of shape \[S, B, 1, H, W\].*got \[2, 5, 3, 8, 8\]"):
        method.per_copy_outputs(torch.rand(2, 5, 3, 8, 8))
    assert_unchanged(method, before)


@pytest.mark.parametrize("name", NAMES)
def test_mlp_fed_the_wrong_number_of_features(name):
    """PyTorch's own error here is "mat1 and mat2 shapes cannot be multiplied"."""
    method = make(name, bbh.models.MLP(784, 10, hidden=(32,)), sites=["net.1"])
    message = (r"MLP expects inputs of shape \[B, 784\] \(its first layer `net.0` is Linear with 784 input features\); "
               r"got \[4, 256\]")
    with pytest.raises(ValueError, match=message):
        method.loss(torch.rand(4, 256), torch.zeros(4, dtype=torch.long), num_data=10)
    with pytest.raises(ValueError, match=message):
        method.sample_outputs(torch.rand(4, 256), 2)
    plain = make(name, nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)), sites=["1"])
    with pytest.raises(ValueError, match=r"^Sequential expects inputs of shape \[B, 784\] .*; got \[4, 256\]$"):
        plain.sample_outputs(torch.rand(4, 256), 2)


def test_inputs_a_model_adapts_itself_are_accepted_after_one_dry_run():
    class Raw(nn.Module):
        """Takes uint8 images [B, H, W] and adds the channel and the scaling itself."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x.unsqueeze(1).float() / 255).flatten(1))

    class Features(nn.Module):
        """Feeds [x, x^2] to its first layer."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([x, x**2], dim=-1))

    raw = bbh.create("bbb", Raw())
    x = torch.randint(0, 256, (5, 8, 8), dtype=torch.uint8)
    assert raw.sample_outputs(x, 2).shape == (2, 5, 3)
    assert raw._inputs_seen == {((8, 8), torch.uint8, False)}  # remembered: no second dry run
    assert raw.sample_outputs(x, 2).shape == (2, 5, 3)
    feats = bbh.create("bbh", Features(), hidden=(4,))
    assert feats.sample_outputs(torch.rand(5, 1), 2).shape == (2, 5, 3)
    assert find_input_layer(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))) is None  # integer inputs: unchecked
    emb = bbh.create("map", nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)))
    assert emb.sample_outputs(torch.tensor([1, 2, 3])).shape == (1, 3, 2)


# ---------------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("name", NAMES)
def test_float64_and_uint8_inputs_say_how_to_convert(name):
    """PyTorch's own error here is "Input type (double) and bias type (float) should be the same"."""
    method = make(name, bbh.models.LeNet5())
    before = state(method)
    with pytest.raises(ValueError, match=r"^LeNet5 expects inputs of dtype torch.float32 \(the dtype of its "
                                         r"parameters\); got torch.float64: convert them with x.float\(\)$"):
        method.loss(torch.rand(4, 1, 28, 28, dtype=torch.float64), torch.zeros(4, dtype=torch.long), num_data=10)
    with pytest.raises(ValueError, match=r"got torch.uint8: convert them with x.float\(\)"):
        method.sample_outputs(torch.zeros(4, 784, dtype=torch.uint8), 2)
    assert_unchanged(method, before)


def test_dtype_follows_the_model_and_autocast():
    method = bbh.create("map", bbh.models.MLP(4, 3)).double()
    with pytest.raises(ValueError, match=r"dtype torch.float64 .*got torch.float32: convert them with x.double\(\)"):
        method.sample_outputs(torch.rand(2, 4))
    assert method.sample_outputs(torch.rand(2, 4, dtype=torch.float64)).dtype == torch.float64
    method = bbh.create("map", bbh.models.MLP(4, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        method.loss(torch.rand(5, 4).bfloat16(), torch.zeros(5, dtype=torch.long), num_data=5)
    with pytest.raises(ValueError, match="got torch.bfloat16"):
        method.loss(torch.rand(5, 4).bfloat16(), torch.zeros(5, dtype=torch.long), num_data=5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        method.sample_outputs(np.zeros((2, 4), dtype=np.float32))


# ---------------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("name", NAMES)
def test_labels_outside_the_classes_give_the_range_and_the_values_found(name):
    """PyTorch's own error here is "index 5 is out of bounds for dimension 1 with size 3"."""
    method = make(name, conv_bn_net(3), sites=["2"])
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"^labels must be class indices in \[0, 3\); found -1 and 5$"):
        method.loss(x, labels(0, 5, -1, 2), num_data=10)
    with pytest.raises(ValueError, match=r"^labels must be class indices in \[0, 3\); found 5$"):
        method.loss(x, labels(0, 5, 1, 2), num_data=10)
    with pytest.raises(ValueError, match=r"^labels must be class indices in \[0, 3\); found -1$"):
        method.loss(x, labels(0, -1, 1, 2), num_data=10)
    before = state(method)
    with pytest.raises(ValueError, match=r"integer class labels, got dtype torch.float32 \(convert with y.long\(\)\)"):
        method.loss(x, torch.zeros(4), num_data=10)
    with pytest.raises(ValueError, match=r"same batch dimensions \[B\]: x is \[4, 1, 8, 8\], y is \[3\]"):
        method.loss(x, labels(0, 1, 2), num_data=10)
    assert_unchanged(method, before)  # label types and counts are checked before the forward pass
    assert torch.isfinite(method.loss(x, labels(0, 1, 2, 2), num_data=10).total)


def test_categorical_log_prob_checks_the_range_itself():
    likelihood = bbh.likelihoods.Categorical()
    with pytest.raises(ValueError, match=r"in \[0, 3\); found -1 and 5"):
        likelihood.log_prob(torch.zeros(2, 4, 3), labels(-1, 5, 0, 0))
    assert likelihood.log_prob(torch.zeros(2, 4, 3), labels(0, 1, 2, 0)).shape == (2, 4)
    assert likelihood.log_prob(torch.zeros(0, 3), labels()).shape == (0,)


def test_targets_on_another_device_are_named():
    method = bbh.create("map", bbh.models.MLP(4, 3))
    with pytest.raises(ValueError, match="y is on meta but x is on cpu"):
        method.loss(torch.rand(2, 4), torch.zeros(2, dtype=torch.long, device="meta"), num_data=2)


# ---------------------------------------------------------------------------------------------------- NaN
@pytest.mark.parametrize("name", NAMES)
def test_nan_inputs_raise_before_the_forward_and_leave_batchnorm_clean(name):
    method = make(name, conv_bn_net(), sites=["2"])
    method.train()
    x, y = torch.rand(6, 1, 8, 8), labels(0, 1, 2, 0, 1, 2)
    x[1, 0, 2, 2] = float("nan")
    x[4, 0, 0, 0] = float("inf")
    before = state(method)
    message = (r"^x holds 2 non-finite values \(1 NaN, 1 inf\) among its 384 entries, in batch examples 1, 4; "
               r"the data must be finite \(nothing was computed\)$")
    with pytest.raises(NonFiniteInputError, match=message):
        method.loss(x, y, num_data=10)
    with pytest.raises(ValueError, match=message):  # a ValueError too
        method.sample_outputs(x, 2)
    with pytest.raises(NonFiniteInputError, match=message):
        method.predict(x, 2)
    with pytest.raises(NonFiniteInputError, match=r"x holds \d+ non-finite .* batch examples \(0, 1\), \(0, 4\)"):
        method.per_copy_outputs(x.unsqueeze(0).expand(method.draws(2), *x.shape))
    assert_unchanged(method, before)
    assert all(torch.isfinite(b).all() for b in method.buffers())
    clean = method.loss(torch.nan_to_num(x, nan=0.5, posinf=0.5), y, num_data=10)
    assert torch.isfinite(clean.total)


def test_huge_finite_inputs_whose_sum_overflows_are_accepted():
    method = bbh.create("map", bbh.models.MLP(4, 3))
    method.check_inputs(torch.full((8, 4), 3e38), torch.zeros(8, dtype=torch.long))  # the fast sum is inf


def test_nan_regression_targets_are_named():
    method = bbh.create("bbb", bbh.models.MLP(1, 1), likelihood=bbh.likelihoods.Gaussian(1.0))
    y = torch.zeros(3, 1)
    y[2] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"^y holds 1 non-finite value \(1 NaN, 0 inf\) among its 3 entries, "
                                                  r"in batch example 2"):
        method.loss(torch.rand(3, 1), y, num_data=3)


def test_the_trainer_blames_the_data_not_the_learning_rate():
    x = torch.randn(32, 4)
    y = torch.arange(32) % 3
    bad = x.clone()
    bad[5, 1] = float("nan")
    method = bbh.create("map", bbh.models.MLP(4, 3))
    with pytest.raises(bbh.NonFiniteLossError, match="non-finite value at step 0: x holds 1 non-finite value") as info:
        bbh.Trainer(method, steps=1, progress=False).fit((bad, y))
    assert "learning rate" not in str(info.value)
    with torch.no_grad():  # finite data, non-finite parameters: the learning-rate hint applies
        method.model.net[0].weight[0, 0] = float("inf")
    with pytest.raises(bbh.NonFiniteLossError, match="non-finite loss with finite data: lower the learning rate"):
        bbh.Trainer(method, steps=1, progress=False).fit((x, y))


# ---------------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("options, message", [
    ({"noise_dim": "1"}, "noise_dim must be an int >= 1, got '1'"),
    ({"noise_dim": 1.5}, "noise_dim must be an int >= 1, got 1.5"),
    ({"noise_dim": True}, "noise_dim must be an int >= 1, got True"),
    ({"noise_dim": 0}, "noise_dim must be an int >= 1, got 0"),
    ({"draws_per_step": "5"}, "draws_per_step must be an int >= 2, got '5'"),
    ({"draws_per_step": 1}, "draws_per_step must be an int >= 2, got 1"),
    ({"num_prior_samples": 0}, "num_prior_samples must be an int >= 1, got 0"),
    ({"num_chunks": "130", "layout": "single"}, "num_chunks must be an int >= 1, got '130'"),
    ({"num_chunks": 0}, "num_chunks must be an int >= 1, got 0"),
    ({"hidden": 64}, r"hidden must be a sequence of layer sizes such as \(64, 256, 512\), got 64"),
    ({"hidden": "64"}, r"hidden must be a sequence of layer sizes such as \(64, 256, 512\), got '64'"),
    ({"hidden": ()}, r"hidden must be a sequence of layer sizes such as \(64, 256, 512\), got \(\)"),
    ({"hidden": (8, 0)}, r"hidden must be .*, got \(8, 0\) \(every size must be an int >= 1\)"),
    ({"hidden": (8.0,)}, r"hidden must be .*, got \(8.0,\) \(every size must be an int >= 1\)"),
])
def test_bbh_option_types(options, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        bbh.create("bbh", bbh.models.MLP(2, 3), **{"hidden": (8,), **options})


@pytest.mark.parametrize("name, options, message", [
    ("ensemble", {"members": "3"}, "members must be an int >= 1, got '3'"),
    ("ensemble", {"members": 2.0}, "members must be an int >= 1, got 2.0"),
    ("ensemble", {"members": 0}, "members must be an int >= 1, got 0"),
    ("ensemble", {"alpha": 1.5}, r"alpha must be a number in \[0, 1\], got 1.5"),
    ("ensemble", {"vectorize": 1}, "vectorize must be 'auto', True or False, got 1"),
    ("mc-dropout", {"rate": "0.5", "sites": ["net.1"]}, r"dropout rate must be a number in \(0, 1\), got '0.5'"),
    ("mc-dropout", {"rate": 1.0, "sites": ["net.1"]}, r"dropout rate must be a number in \(0, 1\), got 1.0"),
    ("mc-dropout", {"rate": True, "sites": ["net.1"]}, r"dropout rate must be a number in \(0, 1\), got True"),
    ("bbb", {"num_kl_samples": 2.0}, "num_kl_samples must be an int >= 1, got 2.0"),
    ("bbb", {"num_kl_samples": 1, "kl": "nn-per-weight"}, "num_kl_samples must be an int >= 2, got 1"),
    ("bbb", {"init_log_var": "-9"}, "init_log_var must be a finite number, got '-9'"),
    ("mnf", {"n_flows": 2.0}, "n_flows must be an int >= 1, got 2.0"),
    ("mnf", {"z_init": math.nan}, "z_init must be a finite number, got nan"),
    ("map", {"prior_scale": "1"}, "prior_scale must be a number > 0, got '1'"),
])
def test_baseline_option_types(name, options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        bbh.create(name, bbh.models.MLP(2, 3), **options)


def test_valid_options_of_any_integer_type_are_accepted():
    method = bbh.create("bbh", bbh.models.MLP(2, 3), noise_dim=np.int64(2), hidden=[np.int32(8)], draws_per_step=3)
    assert method.hypernet.noise_dim == 2 and type(method.hypernet.noise_dim) is int and method.draws_per_step == 3
    assert bbh.create("ensemble", bbh.models.MLP(2, 3), members=np.int64(2)).num_members == 2
    assert bbh.create("mc-dropout", bbh.models.MLP(2, 3), sites=["net.1"], rate=np.float32(0.25)).rate == 0.25


def test_option_helpers():
    assert check_int("n", 3, 1) == 3 and check_int("n", torch.tensor(4)) == 4 and check_int("n", -2) == -2
    for bad in ("1", 1.0, True, None, [1]):
        with pytest.raises(ValueError, match="n must be an int, got"):
            check_int("n", bad)
    assert check_float("r", 1, 0, 1) == 1.0
    with pytest.raises(ValueError, match=r"r must be a number in \(0, 1\], got 0"):
        check_float("r", 0, 0, 1, open_low=True)
    with pytest.raises(ValueError, match="r must be a number <= 1, got inf"):
        check_float("r", math.inf, high=1)
    assert check_sizes("hidden", [1, 2]) == (1, 2)
    with pytest.raises(ValueError, match=r"such as \(4,\), got 4"):
        check_sizes("hidden", 4, "(4,)")

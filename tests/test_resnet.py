"""ResNet-32 (docs/protocol.md §1.2, 1.3, 4.2): exact parameter counts, spatial sizes, the parameter-free shortcut,
TF padding, the three normalisation modes, the MC-Dropout sites, input checks, and one training step plus
prediction of every bbh method on the authors' network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bbh
from bbh.models import ResNet32
from bbh.models.resnet import InitConv2d, Shortcut
from bbh.posteriors.protocol import select_parameters

NORM_TYPES = (nn.BatchNorm2d, nn.InstanceNorm2d)


def numel(model: nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def generated(model: nn.Module) -> dict[str, int]:
    """{name: numel} of the parameters BbH / BbB make random (Linear/Conv weights and biases)."""
    named = dict(model.named_parameters())
    return {n: named[n].numel() for n in select_parameters(model)}


def norm_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters())


# ------------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("norm", ["running", "batch", "instance"])
def test_paper_variant_parameter_counts(norm):
    model = ResNet32(norm=norm)
    gen = generated(model)
    assert len(gen) == 64
    assert sum(gen.values()) == 462_693 == 231 * 2003
    parts = {"stem.": 448, "stage1.": 23_200, "stage2.": 87_872, "stage3.": 350_848, "fc.": 325}
    for prefix, count in parts.items():
        assert sum(v for n, v in gen.items() if n.startswith(prefix)) == count, prefix
    assert norm_params(model) == 2_144
    assert numel(model) == 462_693 + 2_144
    with_final = ResNet32(norm=norm, final_norm=True)
    assert norm_params(with_final) == 2_272
    assert sum(generated(with_final).values()) == 462_693
    weight_layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weight_layers) == 32 and all(m.bias is not None for m in weight_layers)


def test_standard_variant_parameter_count():
    # He et al. ResNet-32: convs without bias 432 + 23,040 + 87,552 + 350,208 = 461,232; norms 2 x (16 + 10 x 16
    # + 10 x 32 + 10 x 64) = 2,272; dense 64 x 10 + 10 = 650  ->  464,154 (the "0.46M" of their Table 6).
    model = ResNet32(num_classes=10, variant="standard")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31 and all(c.bias is None for c in convs)
    assert sum(c.weight.numel() for c in convs) == 461_232
    assert norm_params(model) == 2_272
    assert numel(model, "fc.") == 650
    assert numel(model) == 464_154
    assert numel(ResNet32(num_classes=5, variant="standard")) == 464_154 - 325


# ------------------------------------------------------------------------------------------ shapes
def spatial_sizes(model: nn.Module, x: torch.Tensor, names: tuple[str, ...] = ("stem", "stage1", "stage2", "stage3")
                  ) -> dict[str, tuple[int, ...]]:
    """The output shapes (without the batch) of the named submodules on ``x``; checks the logits' shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda mod, inp, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:]))) for n in names]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    assert out.shape == (x.shape[0], model.num_classes)
    return shapes


def test_paper_variant_spatial_sizes():
    shapes = spatial_sizes(ResNet32(), torch.randn(2, 3, 24, 24))
    assert shapes == {"stem": (16, 24, 24), "stage1": (16, 12, 12), "stage2": (32, 6, 6), "stage3": (64, 3, 3)}


def test_standard_variant_spatial_sizes():
    shapes = spatial_sizes(ResNet32(10, variant="standard"), torch.randn(2, 3, 32, 32))
    assert shapes == {"stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16), "stage3": (64, 8, 8)}


@pytest.mark.parametrize("variant, bad, expected", [
    ("paper", (2, 3, 32, 32), r"\[B, 3, 24, 24\], got \(2, 3, 32, 32\)"),
    ("paper", (3, 24, 24), r"\[B, 3, 24, 24\], got \(3, 24, 24\)"),
    ("paper", (2, 1, 24, 24), r"\[B, 3, 24, 24\]"),
    ("standard", (2, 3, 24, 24), r"\[B, 3, 32, 32\], got \(2, 3, 24, 24\)"),
])
def test_wrong_input_shape_is_a_clear_error(variant, bad, expected):
    with pytest.raises(ValueError, match=rf"ResNet32\(variant='{variant}'\) expects images {expected}"):
        ResNet32(variant=variant)(torch.randn(*bad))


@pytest.mark.parametrize("option, value", [("variant", "resnet"), ("norm", "group"), ("norm", "batchnorm"),
                                           ("dropout_placement", "2018"), ("padding", "same"), ("init", "glorot")])
def test_unknown_option_values_list_the_valid_ones(option, value):
    from bbh.models import resnet
    valid = {"variant": resnet.VARIANTS, "norm": resnet.NORMS, "dropout_placement": resnet.DROPOUT_PLACEMENTS,
             "padding": resnet.PADDINGS, "init": resnet.INITS}[option]
    with pytest.raises(ValueError, match=rf"unknown {option} '{value}'; expected one of") as err:
        ResNet32(**{option: value})
    assert all(repr(v) in str(err.value) for v in valid)


def test_final_norm_only_in_the_paper_variant():
    assert isinstance(ResNet32(final_norm=True, norm="instance").final_norm, nn.InstanceNorm2d)
    assert ResNet32().final_norm is None
    with pytest.raises(ValueError, match="final_norm=True applies to the pre-activation paper variant only"):
        ResNet32(variant="standard", final_norm=True)


# ------------------------------------------------------------------------------------------ shortcut and padding
def test_shortcut_avgpool_and_symmetric_channel_padding():
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    out = Shortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 2, 2)
    assert torch.all(out[:, :8] == 0) and torch.all(out[:, 24:] == 0)
    # average of each 2x2 block, by hand: x[..., 2i:2i+2, 2j:2j+2].mean()
    blocks = [[x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(2, 3)) for j in range(2)] for i in range(2)]
    manual = torch.stack([torch.stack(row, -1) for row in blocks], -2)
    assert torch.equal(out[:, 8:24], manual)
    assert out[0, 8, 0, 0] == (0 + 1 + 4 + 5) / 4
    # odd channel growth: floor before, ceil after; stride 1 leaves the pixels alone
    y = torch.randn(1, 3, 5, 5)
    odd = Shortcut(3, 6, 1)(y)
    assert torch.all(odd[:, :1] == 0) and torch.equal(odd[:, 1:4], y) and torch.all(odd[:, 4:] == 0)
    assert torch.equal(Shortcut(16, 16, 1)(x), x)
    # He et al.'s option A keeps every second pixel instead
    sub = Shortcut(16, 32, 2, mode="subsample")(x)
    assert torch.equal(sub[:, 8:24], x[:, :, ::2, ::2])


def test_unit_adds_the_shortcut_of_the_raw_input():
    model = ResNet32()
    unit = model.stage2[0]
    with torch.no_grad():  # a zero residual branch: the unit is its shortcut of the un-normalised x
        unit.conv2.weight.zero_()
        unit.conv2.bias.zero_()
    x = torch.randn(3, 16, 12, 12) * 5 + 2
    expected = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, 8, 8))
    assert torch.allclose(unit(x), expected)
    assert [type(u.shortcut).__name__ for u in model.stage1] == ["Shortcut"] * 5
    assert [u.shortcut.stride for s in (model.stage1, model.stage2, model.stage3) for u in s] == [2, 1, 1, 1, 1] * 3


def test_tf_padding_shifts_the_sampling_grid_of_strided_convs():
    torch.manual_seed(1)
    tf_unit = ResNet32(padding="tf").stage1[0]
    torch_unit = ResNet32(padding="torch").stage1[0]
    assert ResNet32().padding == "tf" and ResNet32(variant="standard").padding == "torch"
    torch_unit.conv1.load_state_dict(tf_unit.conv1.state_dict())
    x = torch.randn(2, 16, 24, 24)
    tf_out = tf_unit._conv1(x)
    assert tf_out.shape == (2, 16, 12, 12)
    # TF SAME pads 0 before / 1 after: output (i, j) sees input rows 2i..2i+2, PyTorch's padding=1 sees 2i-1..2i+1.
    # So away from the top/left border the TF conv of x is the PyTorch conv of x shifted up-left by one pixel.
    shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
    assert torch.allclose(tf_out[..., 1:, 1:], torch_unit._conv1(shifted)[..., 1:, 1:], atol=1e-5)
    assert not torch.allclose(tf_out, torch_unit._conv1(x), atol=1e-3)
    impulse = torch.zeros(1, 16, 24, 24)
    impulse[..., 2, 2] = 1.0  # biases are zero: only convs whose window covers pixel (2, 2) respond at (0, 0)
    with torch.no_grad():
        assert tf_unit._conv1(impulse)[..., 0, 0].abs().sum() > 0
        assert torch_unit._conv1(impulse)[..., 0, 0].abs().sum() == 0


def test_initialisation_schemes_survive_reinitialisation():
    model = ResNet32()  # paper: TF variance scaling, zero biases
    w = model.stage3[1].conv1.weight.detach()
    bound = 2 / (64 * 9) ** 0.5
    assert float(w.abs().max()) <= bound and 0.8 * bound / 2 < float(w.std()) < 0.95 * bound / 2
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in layers)
    ensemble = bbh.create("ensemble", model, members=2, seed=3)  # re-initialises members via reset_parameters
    member_conv = ensemble.members[1].stage3[1].conv1
    assert isinstance(member_conv, InitConv2d) and not torch.equal(member_conv.weight, w)
    assert float(member_conv.weight.detach().abs().max()) <= bound and float(member_conv.bias.detach().abs().max()) == 0
    torch_init = ResNet32(init="torch")
    assert float(torch_init.stem.bias.detach().abs().max()) > 0  # PyTorch's default uniform bias


# ------------------------------------------------------------------------------------------ normalisation modes
def test_running_norm_uses_running_statistics_in_eval():
    model = ResNet32(norm="running")
    bn = model.stage1[0].norm1
    assert isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)  # TF's epsilon 1e-3, decay 0.99
    std_bn = ResNet32(variant="standard").stage1[0].norm1
    assert (std_bn.eps, std_bn.momentum) == (1e-5, 0.1)
    x = torch.randn(8, 3, 24, 24)
    stem_out = model.stem(x).detach()
    model.train()
    model(x)
    assert torch.allclose(bn.running_mean, 0.01 * stem_out.mean(dim=(0, 2, 3)), atol=1e-6)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x)[:2], model(x[:2]), atol=1e-5)  # no dependence on the rest of the batch
        z = torch.randn(4, 16, 24, 24) * 2 + 1
        manual = (z - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-3)
        assert torch.allclose(bn(z), manual, atol=1e-5)
        before = model(x[:2])
        bn.running_mean.fill_(3.0)  # the eval output follows the running statistics
        assert not torch.allclose(model(x[:2]), before, atol=1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_norm_uses_the_batch_statistics_also_in_eval(mode):
    model = ResNet32(norm="batch")
    bn = model.stage2[3].norm2
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_mean is None and not bn.track_running_stats
    model.train(mode == "train")
    x = torch.randn(6, 3, 24, 24)
    other = torch.cat([x[:1], torch.randn(5, 3, 24, 24) * 3 + 1])
    with torch.no_grad():
        a, b = model(x)[0], model(other)[0]
    assert not torch.allclose(a, b, atol=1e-4)  # example 0's output depends on its batch companions
    with torch.no_grad():
        model.train(mode != "train")
        assert torch.allclose(model(x)[0], a, atol=1e-5)  # the same computation in train and eval


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_instance_norm_is_per_example(mode):
    model = ResNet32(norm="instance", final_norm=True)
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    assert len(norms) == 31 and all(isinstance(m, nn.InstanceNorm2d) and m.affine and not m.track_running_stats
                                    and m.eps == 1e-3 for m in norms)
    model.train(mode == "train")
    x = torch.randn(6, 3, 24, 24)
    other = torch.cat([x[:1], torch.randn(5, 3, 24, 24) * 3 + 1])
    with torch.no_grad():
        alone = model(x[:1])[0]
        assert torch.allclose(model(x)[0], alone, atol=1e-5)
        assert torch.allclose(model(other)[0], alone, atol=1e-5)


# ------------------------------------------------------------------------------------------ dropout sites
def test_dropout_sites_of_the_2018_code():
    model = ResNet32()
    sites = model.dropout_sites
    assert len(sites) == 31 == len(set(sites))
    assert sites[:3] == ("stem_drop", "stage1.0.drop1", "stage1.0.drop2") and sites[-1] == "stage3.4.drop2"
    assert all(type(model.get_submodule(s)) is nn.Identity for s in sites)
    one = ResNet32(dropout_placement="one-per-unit")
    assert len(one.dropout_sites) == 15 and all(s.endswith(".drop_mid") for s in one.dropout_sites)
    assert all(type(one.get_submodule(s)) is nn.Identity for s in one.dropout_sites)


@pytest.mark.parametrize("placement, sites", [("every-conv", 31), ("one-per-unit", 15)])
def test_mc_dropout_hooks_every_declared_site(placement, sites):
    model = ResNet32(norm="instance", dropout_placement=placement)
    calls: list[str] = []
    for s in model.dropout_sites:
        model.get_submodule(s).register_forward_hook(lambda m, i, o, s=s: calls.append(s))
    method = bbh.create("mc-dropout", model)
    assert method.sites == list(model.dropout_sites)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        out = method.sample_outputs(x, 2)
    assert len(calls) == sites and not torch.allclose(out[0], out[1])


# ------------------------------------------------------------------------------------------ every method
# The authors' pairing: MAP / Dropout / Ensemble have the final norm; their BbH used batch statistics,
# the others per-example ones. "running" (the default) is checked for every method as well.
METHODS = {
    "map": dict(),
    "mc-dropout": dict(),
    "ensemble": dict(members=2),
    "bbb": dict(),
    "mnf": dict(),
    "bbh": dict(hidden=(8, 16)),
}
AUTHORS_NORM = {"map": "instance", "mc-dropout": "instance", "ensemble": "instance", "bbb": "instance",
                "mnf": "instance", "bbh": "batch"}


@pytest.mark.parametrize("norm", ["authors", "running"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_predicts_on_the_paper_resnet(name, norm):
    torch.manual_seed(0)
    norm = AUTHORS_NORM[name] if norm == "authors" else norm
    model = ResNet32(norm=norm, final_norm=name in ("map", "mc-dropout", "ensemble"))
    method = bbh.create(name, model, **METHODS[name])
    before = [p.detach().clone() for p in method.trainable_parameters()]
    x, y = torch.randn(4, 3, 24, 24), torch.randint(0, 5, (4,))
    history = bbh.Trainer(method, steps=1, progress=False, device="cpu").fit((x, y))
    assert history[0]["step"] == 1 and all(torch.isfinite(torch.tensor(v)) for v in history[0].values())
    after = method.trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    method.eval()
    with torch.no_grad():
        out = method.sample_outputs(x, 2)
    expected = {"map": 1, "ensemble": 2}.get(name, 2)
    assert out.shape == (expected, 4, 5) and torch.isfinite(out).all()
    if name in ("mc-dropout", "bbb", "mnf", "bbh"):
        assert not torch.allclose(out[0], out[1])


def test_bbh_generates_exactly_the_paper_tensors():
    method = bbh.create("bbh", ResNet32(norm="batch"), hidden=(8, 16))
    assert method.hypernet.total == 462_693 and len(method.hypernet.targets) == 64
    assert not any(".norm" in n for n in method.param_names)
    assert all(p.requires_grad for n, p in method.model.named_parameters() if ".norm" in n)


def test_mnf_replaces_every_weight_layer_of_the_resnet():
    method = bbh.create("mnf", ResNet32(norm="instance"))
    assert len(method.layer_names) == 32 and method.layer_names[0] == "stem" and method.layer_names[-1] == "fc"


# forward_samples falls back to a loop over samples when BatchNorm updates running statistics
def test_bbh_average_likelihood_with_running_batchnorm():
    method = bbh.create("bbh", ResNet32(norm="running"), hidden=(8, 16), likelihood_samples="average")
    x, y = torch.randn(4, 3, 24, 24), torch.randint(0, 5, (4,))
    bn = next(m for m in method.model.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    history = bbh.Trainer(method, steps=1, progress=False, device="cpu").fit((x, y))
    assert math.isfinite(history[-1]["nll"]) and math.isfinite(history[-1]["loss"])
    # the S = 5 samples ran one after another, each updating the running statistics once
    assert int(bn.num_batches_tracked) == method.draws_per_step
    assert not torch.equal(bn.running_mean, before)

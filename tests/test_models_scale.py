"""The networks of BbH at modern scale (issue 11): He et al.'s CIFAR ResNet-20 (``ResNet32(depth=20)``) and the
CIFAR ResNet-18: exact parameter counts, shapes, the registry names, the depth check, the default depth left
unchanged, ``torch.func.functional_call`` on them, and one MAP training step on a narrow ResNet-18."""

from __future__ import annotations

import math

import pytest
import torch
from test_resnet import spatial_sizes
from torch import nn
from torch.func import functional_call

import bbh
from bbh.models import ResNet18, ResNet32, build_model
from bbh.models.registry import MODEL_NAMES
from bbh.models.resnet18 import FanOutConv2d, ProjectionBlock


def numel(model: nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def norm_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())


# ------------------------------------------------------------------------------------------ ResNet-20 (depth)
def test_resnet20_parameter_count():
    # convs without bias: stem 432; stage1 3 x 2 x 2,304 = 13,824; stage2 4,608 + 9,216 + 4 x 9,216 = 50,688;
    # stage3 18,432 + 36,864 + 4 x 36,864 = 202,752  ->  267,696. Norms 2 x (16 + 6 x 16 + 6 x 32 + 6 x 64) = 1,376;
    # dense 64 x 10 + 10 = 650  ->  269,722 (the "0.27M" of He et al.'s Table 6).
    model = ResNet32(num_classes=10, variant="standard", depth=20)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.bias is None for c in convs)
    assert sum(c.weight.numel() for c in convs) == 267_696
    assert norm_params(model) == 1_376
    assert numel(model, "fc.") == 650
    assert numel(model) == 269_722
    assert [len(s) for s in (model.stage1, model.stage2, model.stage3)] == [3, 3, 3]


@pytest.mark.parametrize("depth, count", [(8, 75_290), (56, 853_018), (110, 1_727_962)])
def test_other_depths_follow_he_et_al(depth, count):
    model = ResNet32(num_classes=10, variant="standard", depth=depth)  # 0.85M and 1.7M in their Table 6
    assert numel(model) == count
    assert len([m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]) == depth


def test_resnet20_shapes_and_dropout_sites():
    model = ResNet32(num_classes=10, variant="standard", depth=20)
    shapes = spatial_sizes(model, torch.randn(2, 3, 32, 32), ("stem", "stage1", "stage2", "stage3"))
    assert shapes == {"stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16), "stage3": (64, 8, 8)}
    assert len(model.dropout_sites) == 19 and model.dropout_sites[-1] == "stage3.2.drop2"
    one = ResNet32(variant="standard", depth=20, dropout_placement="one-per-unit")
    assert len(one.dropout_sites) == 9 and all(type(one.get_submodule(s)) is nn.Identity for s in one.dropout_sites)
    paper = ResNet32(depth=20)  # the depth applies to the authors' pre-activation network as well
    assert numel(paper) == 269_957 and paper(torch.randn(2, 3, 24, 24)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"ResNet32\(variant='standard', depth=20\) expects images \[B, 3, 32, 32\]"):
        model(torch.randn(2, 3, 24, 24))


@pytest.mark.parametrize("depth", [21, 7, 2, 0, -4, 33, 100, 20.0, True, "20"])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match=rf"depth must be 6n \+ 2 with n >= 1 units per stage \(8, 14, 20, 32, "
                                         rf"44, 56, 110, \.\.\.\), got {depth!r}"):
        ResNet32(variant="standard", depth=depth)


@pytest.mark.parametrize("variant", ["paper", "standard"])
def test_default_depth_is_the_unchanged_resnet32(variant):
    torch.manual_seed(0)
    default = ResNet32(variant=variant)
    torch.manual_seed(0)
    explicit = ResNet32(variant=variant, depth=32)
    a, b = default.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert default.depth == 32 and [len(s) for s in (default.stage1, default.stage2, default.stage3)] == [5, 5, 5]
    assert len(default.dropout_sites) == 31


# ------------------------------------------------------------------------------------------ ResNet-18
def test_resnet18_parameter_count():
    # convs without bias: stem 1,728; stage1 4 x 36,864 = 147,456; stage2 73,728 + 3 x 147,456 + 8,192 (1x1)
    # = 524,288; stage3 294,912 + 3 x 589,824 + 32,768 = 2,097,152; stage4 1,179,648 + 3 x 2,359,296 + 131,072
    # = 8,388,608  ->  11,159,232. Norms 2 x (64 + 4 x 64 + 5 x 128 + 5 x 256 + 5 x 512) = 9,600; dense 5,130.
    model = ResNet18()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and all(c.bias is None for c in convs)
    assert sum(c.weight.numel() for c in convs) == 11_159_232
    assert norm_params(model) == 9_600
    assert numel(model, "fc.") == 5_130
    assert numel(model) == 11_173_962
    assert numel(ResNet18(num_classes=100)) == 11_173_962 + 90 * 513
    assert numel(ResNet18(width=16)) == 701_466


def test_resnet18_shapes_and_shortcuts():
    model = ResNet18(num_classes=10, width=16)
    shapes = spatial_sizes(model, torch.randn(2, 3, 32, 32), ("stem", "stage1", "stage2", "stage3", "stage4"))
    assert shapes == {"stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16), "stage3": (64, 8, 8),
                      "stage4": (128, 4, 4)}
    blocks = [b for s in (model.stage1, model.stage2, model.stage3, model.stage4) for b in s]
    assert len(blocks) == 8 and all(isinstance(b, ProjectionBlock) for b in blocks)
    projections = [type(b.shortcut) is nn.Sequential for b in blocks]
    assert projections == [False, False, True, False, True, False, True, False]
    conv, bn = model.stage2[0].shortcut
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)
    assert len(model.dropout_sites) == 8 and all(type(model.get_submodule(s)) is nn.Identity
                                                 for s in model.dropout_sites)
    with pytest.raises(ValueError, match=r"ResNet18 expects images \[B, 3, 32, 32\], got \(2, 3, 24, 24\)"):
        model(torch.randn(2, 3, 24, 24))
    for bad in ({"num_classes": 0}, {"width": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            ResNet18(**bad)


def test_resnet18_initialisation_is_torchvisions_and_survives_reinitialisation():
    torch.manual_seed(0)
    model = ResNet18(width=16)
    conv = model.stage4[1].conv1  # 128 -> 128, 3x3: fan_out 1,152
    assert isinstance(conv, FanOutConv2d)
    std = math.sqrt(2 / (128 * 9))
    assert 0.95 * std < float(conv.weight.detach().std()) < 1.05 * std
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    before = conv.weight.detach().clone()
    conv.reset_parameters()  # what a deep ensemble does to its members
    assert not torch.equal(conv.weight, before) and 0.95 * std < float(conv.weight.detach().std()) < 1.05 * std


# ------------------------------------------------------------------------------------------ registry
def test_build_model_builds_both_by_name():
    assert {"resnet18", "resnet20"} <= set(MODEL_NAMES)
    r20 = build_model({"name": "resnet20"}, num_classes=10)
    assert isinstance(r20, ResNet32) and (r20.variant, r20.depth) == ("standard", 20) and numel(r20) == 269_722
    paper20 = build_model({"name": "resnet20", "variant": "paper", "norm": "instance"}, num_classes=5)
    assert (paper20.variant, paper20.depth, paper20.norm) == ("paper", 20, "instance")
    with pytest.raises(ValueError, match="model 'resnet20' has depth 20"):
        build_model({"name": "resnet20", "depth": 56}, num_classes=10)
    assert build_model({"name": "resnet32", "variant": "standard", "depth": 56}, num_classes=10).depth == 56
    r18 = build_model({"name": "resnet18"}, num_classes=100)
    assert isinstance(r18, ResNet18) and r18.num_classes == 100 and numel(r18) == 11_220_132
    assert numel(build_model({"name": "resnet18", "width": 16}, num_classes=10)) == 701_466
    with pytest.raises(ValueError, match="unknown model 'resnet50'; expected one of .*'resnet20', 'resnet18'"):
        build_model({"name": "resnet50"}, num_classes=10)


# ------------------------------------------------------------------------------------------ functional use
@pytest.mark.parametrize("make", [lambda: ResNet18(width=16), lambda: ResNet32(10, variant="standard", depth=20)],
                         ids=["resnet18", "resnet20"])
def test_functional_call_with_the_models_own_parameters_is_the_model(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(3, 3, 32, 32)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # non-trivial running statistics
    model.eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        direct = model(x)
        assert torch.equal(functional_call(model, params, (x,)), direct)
        scaled = {k: 1.5 * v if k == "fc.weight" else v for k, v in params.items()}
        assert not torch.allclose(functional_call(model, scaled, (x,)), direct)
        assert torch.equal(model(x), direct)  # the functional call left the module's own parameters alone


# ------------------------------------------------------------------------------------------ a bbh method on it
def test_map_trains_a_narrow_resnet18_for_one_step():
    torch.manual_seed(0)
    method = bbh.create("map", ResNet18(num_classes=10, width=16))
    before = [p.detach().clone() for p in method.trainable_parameters()]
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    history = bbh.Trainer(method, steps=1, progress=False, device="cpu").fit((x, y))
    assert history[0]["step"] == 1 and all(math.isfinite(v) for v in history[0].values())
    assert any(not torch.equal(a, b) for a, b in zip(before, method.trainable_parameters()))
    method.eval()
    with torch.no_grad():
        out = method.sample_outputs(x, 2)
    assert out.shape == (1, 4, 10) and torch.isfinite(out).all()


def test_mc_dropout_finds_the_resnet18_sites():
    method = bbh.create("mc-dropout", ResNet18(width=8))
    assert method.sites == [f"stage{s}.{k}.drop_mid" for s in (1, 2, 3, 4) for k in (0, 1)]
    with torch.no_grad():
        out = method.sample_outputs(torch.randn(2, 3, 32, 32), 2)
    assert out.shape == (2, 2, 10) and not torch.allclose(out[0], out[1])

"""Issue 11 at the GPU budget: the WRN-28-10 (exact parameter count, shapes, registry names), the ``cifar10`` task
(all 10 classes, no outlier set) on tiny fake files in the official layout, BbH's rank1 layout on the WRN-28-10,
and ``bbh train`` + ``bbh evaluate`` of a tiny wide ResNet on fake CIFAR-10, whose evaluation skips OOD detection
and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_data import make_fake_cifar
from torch import nn

import bbh
from bbh.cli import main
from bbh.data import available_tasks, load_task
from bbh.data.tasks import OUTLIER_SETS
from bbh.models import WideResNet, build_model
from bbh.models.registry import MODEL_NAMES
from bbh.models.wide_resnet import WideBasicBlock


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ the network
@pytest.fixture(scope="module")
def wrn28_10() -> WideResNet:
    torch.manual_seed(0)
    return WideResNet(28, 10)  # 36.5 M parameters, built once


def test_wrn28_10_parameter_count(wrn28_10):
    # convs without bias: stem 432; stage1 16x160x9 + 160x160x9 + 16x160 (1x1) + 6 x 230,400 = 1,638,400;
    # stage2 460,800 + 921,600 + 51,200 + 6 x 921,600 = 6,963,200; stage3 1,843,200 + 3,686,400 + 204,800
    # + 6 x 3,686,400 = 27,852,800  ->  36,454,832. Norms 2 x ((16 + 160) + 3 x 320 + (160 + 320) + 3 x 640
    # + (320 + 640) + 3 x 1,280 + 640) = 17,952; dense 640 x 10 + 10 = 6,410  ->  36,479,194 (the paper's 36.5 M).
    model = wrn28_10
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 28 and all(c.bias is None for c in convs)  # 25 on the main path + 3 shortcuts
    assert sum(c.weight.numel() for c in convs) == 36_454_832
    assert sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()) == 17_952
    assert sum(p.numel() for p in model.fc.parameters()) == 6_410
    assert numel(model) == 36_479_194
    assert [len(s) for s in (model.stage1, model.stage2, model.stage3)] == [4, 4, 4]
    assert len(model.dropout_sites) == 12 and model.dropout_sites[-1] == "stage3.3.drop_mid"
    assert all(type(model.get_submodule(s)) is nn.Identity for s in model.dropout_sites)


def test_small_wrn_shapes_shortcuts_and_input_check():
    model = WideResNet(depth=10, widen_factor=1, num_classes=10)
    assert numel(model) == 77_850
    shapes: dict[str, tuple[int, ...]] = {}
    for name in ("stem", "stage1", "stage2", "stage3"):
        model.get_submodule(name).register_forward_hook(
            lambda mod, inp, out, n=name: shapes.__setitem__(n, tuple(out.shape[1:])))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert shapes == {"stem": (16, 32, 32), "stage1": (16, 32, 32), "stage2": (32, 16, 16), "stage3": (64, 8, 8)}
    blocks = [model.stage1[0], model.stage2[0], model.stage3[0]]
    assert all(isinstance(b, WideBasicBlock) for b in blocks)
    assert [b.shortcut is None for b in blocks] == [True, False, False]  # k = 1: stage1 keeps 16 channels
    assert model.stage2[0].shortcut.kernel_size == (1, 1) and model.stage2[0].shortcut.stride == (2, 2)
    assert WideResNet(10, 2).stage1[0].shortcut is not None  # 16 -> 32 channels
    with pytest.raises(ValueError, match=r"WideResNet expects images \[B, 3, 32, 32\], got \(2, 3, 24, 24\)"):
        model(torch.randn(2, 3, 24, 24))
    with pytest.raises(ValueError, match=r"WideResNet expects images"):
        model(torch.randn(3, 32, 32))
    for bad in (28.0, 27, 4, True):
        with pytest.raises(ValueError, match=r"depth must be 6n \+ 4"):
            WideResNet(depth=bad)
    for kwargs, match in (({"widen_factor": 0}, "widen_factor"), ({"num_classes": 0}, "num_classes"),
                          ({"dropout": 1.0}, "dropout")):
        with pytest.raises(ValueError, match=match):
            WideResNet(10, **kwargs)
    dropped = WideResNet(10, 1, dropout=0.3)
    assert isinstance(dropped.stage1[0].dropout, nn.Dropout) and dropped.stage1[0].dropout.p == 0.3


def test_registry_names():
    assert {"wrn28-10", "wide_resnet"} <= set(MODEL_NAMES)
    torch.manual_seed(0)
    small = build_model({"name": "wide_resnet", "depth": 10, "widen_factor": 1}, num_classes=10)
    assert isinstance(small, WideResNet) and (small.depth, small.widen_factor) == (10, 1) and numel(small) == 77_850
    assert build_model({"name": "wide_resnet", "depth": 16, "widen_factor": 8}, num_classes=10).widen_factor == 8
    with pytest.raises(ValueError, match="model 'wrn28-10' has depth 28 and widen_factor 10"):
        build_model({"name": "wrn28-10", "depth": 16}, num_classes=10)
    assert "WideResNet" in bbh.models.__all__


def test_wrn28_10_by_name_and_mc_dropout_sites(wrn28_10):
    torch.manual_seed(0)
    model = build_model({"name": "wrn28-10"}, num_classes=10)
    assert isinstance(model, WideResNet) and (model.depth, model.widen_factor) == (28, 10)
    assert numel(model) == numel(wrn28_10)
    method = bbh.create("mc-dropout", WideResNet(10, 1), rate=0.1)
    assert method.sites == ["stage1.0.drop_mid", "stage2.0.drop_mid", "stage3.0.drop_mid"]
    with torch.no_grad():
        out = method.sample_outputs(torch.randn(2, 3, 32, 32), 2)
    assert out.shape == (2, 2, 10) and not torch.allclose(out[0], out[1])


# ------------------------------------------------------------------------------------------ BbH at this scale
def test_bbh_on_wrn28_10_is_rank1_with_at_most_twice_its_parameters(wrn28_10):
    method = bbh.create("bbh", wrn28_10)  # layout "auto", as the cifar10-wrn28-10-bbh config
    main_params = numel(wrn28_10)
    hyper = sum(p.numel() for p in method.posterior.parameters())
    assert method.layout == bbh.options.Layout.RANK1
    assert hyper <= 2 * main_params
    assert method.size.parameters <= 2 * main_params  # base weights included: 55.3 M
    assert method.size.training_bytes < 1e9 and "rank1" in str(method.size)


# ------------------------------------------------------------------------------------------ the cifar10 task
@pytest.mark.parametrize("preprocessing, size", [("paper", 24), ("standard", 32)])
def test_cifar10_task_has_all_classes_and_no_outliers(tmp_path, preprocessing, size):
    fake = make_fake_cifar(tmp_path)
    assert "cifar10" in available_tasks() and OUTLIER_SETS["cifar10"] is None
    task = load_task("cifar10", tmp_path, download=False, preprocessing=preprocessing)  # outliers=True: none
    assert task.name == "cifar10" and task.num_classes == 10 and task.input_shape == (3, size, size)
    assert np.array_equal(task.train_x.numpy(), fake["train_x"]) and np.array_equal(task.train_y.numpy(),
                                                                                     fake["train_y"])
    assert np.array_equal(task.test_x.numpy(), fake["test_x"]) and np.array_equal(task.test_y.numpy(), fake["test_y"])
    assert set(task.train_y.tolist()) == set(range(10))
    assert task.outlier_x is None and task.outlier_y is None and task.val_x is None
    assert "the task has no outlier set" in task.summary()
    assert task.eval_transform(task.test_x[:3]).shape == (3, 3, size, size)
    assert task.pipeline == f"cifar-{preprocessing}"
    cifar5 = load_task("cifar5", tmp_path, download=False)  # unchanged: classes 0-4, outliers 5-9
    assert cifar5.num_classes == 5 and len(cifar5.outlier_x) == int((fake["test_y"] >= 5).sum())


# ------------------------------------------------------------------------------------------ bbh train + evaluate
def test_bbh_train_and_evaluate_a_tiny_wrn_on_fake_cifar10_without_outliers(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    make_fake_cifar(data, per_batch=4, n_test=20)  # 20 training images: one step of 20
    monkeypatch.chdir(tmp_path)
    tiny = ['model.name="wide_resnet"', "model.depth=10", "model.widen_factor=1",  # the shipped config, tiny WRN
            'method.layout="rank1"', "method.hidden=[16]"]  # "auto" gives rank1 on the WRN-28-10 (tested above)
    argv = ["train", "--config", "cifar10-wrn28-10-bbh", "--epochs", "1", "--batch-size", "20", "--samples", "2",
            "--data-dir", str(data), "--run-dir", "run", "--no-progress"]
    for assignment in tiny:
        argv += ["--set", assignment]
    assert main(argv) == 0
    assert "test accuracy" in capsys.readouterr().out
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and all(np.isfinite(v) for v in metrics[0].values() if isinstance(v, float))
    assert torch.load(run / "model.pt", weights_only=True)["num_classes"] == 10

    assert main(["evaluate", "run", "--data-dir", str(data), "--adv-images", "4", "--no-posterior-plots",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "OOD detection skipped: task 'cifar10' has no outlier set" in printed
    out = run / "eval"
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "cifar10" and results["num_classes"] == 10 and results["samples"] == 2
    assert "outliers" not in results and "ood" not in results
    assert results["ood_skipped"].startswith("OOD detection skipped: task 'cifar10' has no outlier set")
    assert 0 <= results["test"]["error_percent"] <= 100 and np.isfinite(results["test"]["nll"])
    assert len(results["adversarial"]["fgsm"]) == 9
    report = (out / "report.md").read_text()
    assert "OOD detection skipped: task 'cifar10' has no outlier set" in report and "| OOD score |" not in report
    assert sorted(p.name for p in out.iterdir()) == ["adversarial.png", "reliability.png", "report.md",
                                                     "results.json"]

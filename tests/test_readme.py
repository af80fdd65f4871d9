"""The README's Python examples run as written (in order, sharing one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import bbh

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 7, "README's python examples changed: update this test"
    monkeypatch.chdir(tmp_path)  # the checkpoint example writes runs/my-bbh
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    acc = float(namespace["probs"].mean(0).argmax(-1).eq(namespace["y"]).float().mean())
    assert acc > 0.8

    exec("import torch\nfrom torch.utils.data import DataLoader, TensorDataset\n"
         "loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)", namespace)
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # a plain torch loop
    assert namespace["terms"].outputs.shape == (64, 4)

    exec(compile(blocks[2], "README.md", "exec"), namespace)  # Trainer with checkpoints, then resume
    assert (tmp_path / "runs" / "my-bbh" / "checkpoint.pt").is_file()

    import bbh.posteriors.sizing as sizing  # "Large networks": as on a 16 GB machine, whatever this one has

    monkeypatch.setattr(sizing, "available_memory", lambda device="cpu": 16 * 2**30)
    large: dict = {}
    capsys.readouterr()
    exec("import bbh", large)
    exec(compile(blocks[3], "README.md", "exec"), large)
    printed = capsys.readouterr().out
    assert large["method"].layout.value == "rank1" and str(large["method"].size) in printed
    assert "5,741,747,220 parameters" in printed and "91.87 GB to train with Adam — more than" in printed

    regression: dict = {}  # the Regression section is self-contained: its own namespace
    exec(compile(blocks[4], "README.md", "exec"), regression)
    pred = regression["pred"]
    assert type(pred).__name__ == "RegressionPredictive" and pred.mean.shape == (9, 1)
    assert regression["method"].likelihood.sigma != 1.0  # σ was trained
    for value in (pred.mean, pred.aleatoric_var, pred.epistemic_var):
        assert torch.isfinite(value).all()
    assert (pred.epistemic_var > 0).all() and (pred.aleatoric_var > 0).all()
    assert torch.isfinite(regression["method"].predict(regression["x"], 10).log_density(regression["y"])).all()

    exec("x_test, y_test, x_ood = x[:64], y[:64], 5 + 3 * torch.randn(32, 2)", namespace)
    exec(compile(blocks[5], "README.md", "exec"), namespace)  # bbh.evaluate
    results = namespace["results"]
    assert results.num_classes == 4 and results.test.error_percent < 20

    from test_data import make_fake_mnist  # bbh.data.load on fake files in ./DATA, as the snippet names it

    make_fake_mnist(tmp_path / "DATA", n_test=6, n_outliers=5)
    data: dict = {"lenet_method": bbh.create("map", bbh.models.LeNet5())}
    exec("import bbh", data)
    exec(compile(blocks[6], "README.md", "exec"), data)
    assert data["results"].test.n == 6 and data["results"].ood["notmnist"].metrics.n == 5
